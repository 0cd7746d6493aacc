//! The `health` table of a service: how its backends are checked.
//!
//! ```toml
//! health = { kind = "tcp" }                                # connect to the NodePort
//! health = { kind = "http", port = 32000, path = "/healthz", interval = "2s", timeout = "1s", rise = 2, fall = 3 }
//! ```
//!
//! `port` defaults to the backend's port; an HTTP check passes on a 2xx or
//! 3xx status (kube-proxy's healthCheckNodePort answers 200 only on nodes
//! with a local endpoint, 503 elsewhere).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Value;

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
const MIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub kind: HealthKind,
    /// Port checked instead of the backend's own.
    pub port: Option<u16>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take an up backend out.
    pub fall: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET path` answers 2xx or 3xx.
    Http { path: String },
}

/// Validates a `health` table (errors are placed by the caller).
pub(super) fn validate(raw: Value) -> Result<HealthSpec, String> {
    let Value::Table(mut table) = raw else {
        return Err("health must be a table, e.g. { kind = \"tcp\" }".to_owned());
    };
    let mut take = |key: &str| table.remove(key);
    let kind = match take("kind") {
        Some(Value::String(kind)) => kind,
        Some(_) => return Err("health kind must be \"tcp\" or \"http\"".to_owned()),
        None => return Err("health needs kind = \"tcp\" or \"http\"".to_owned()),
    };
    let path = match take("path") {
        None => None,
        Some(Value::String(path)) if path.starts_with('/') && !path.contains(char::is_whitespace) => {
            Some(path)
        }
        Some(other) => return Err(format!("health path must be an absolute URL path, not {other}")),
    };
    let kind = match (kind.as_str(), path) {
        ("tcp", None) => HealthKind::Tcp,
        ("tcp", Some(_)) => return Err("health path only applies to kind = \"http\"".to_owned()),
        ("http", path) => HealthKind::Http { path: path.unwrap_or_else(|| "/healthz".to_owned()) },
        (other, _) => return Err(format!("unknown health kind {other:?}: use \"tcp\" or \"http\"")),
    };
    let port = match take("port") {
        None => None,
        Some(Value::Integer(p)) if (1..=65535).contains(&p) => Some(p as u16),
        Some(other) => return Err(format!("health port must be between 1 and 65535, not {other}")),
    };
    let duration = |key: &str, value: Option<Value>, default: Duration| match value {
        None => Ok(default),
        Some(Value::String(text)) => humantime::parse_duration(&text)
            .map_err(|err| format!("health {key} {text:?}: {err} (e.g. \"2s\", \"500ms\")")),
        Some(other) => Err(format!("health {key} must be a duration such as \"2s\", not {other}")),
    };
    let interval = duration("interval", take("interval"), DEFAULT_INTERVAL)?;
    // An unset timeout never exceeds a short interval.
    let timeout = duration("timeout", take("timeout"), DEFAULT_TIMEOUT.min(interval))?;
    let count = |key: &str, value: Option<Value>, default: u32| match value {
        None => Ok(default),
        Some(Value::Integer(n)) if (1..=100).contains(&n) => Ok(n as u32),
        Some(other) => Err(format!("health {key} must be between 1 and 100, not {other}")),
    };
    let rise = count("rise", take("rise"), DEFAULT_RISE)?;
    let fall = count("fall", take("fall"), DEFAULT_FALL)?;
    if let Some(key) = table.keys().next() {
        return Err(format!(
            "unknown health field {key:?}: expected kind, port, path, interval, timeout, rise, fall"
        ));
    }
    if interval < MIN_INTERVAL {
        return Err(format!(
            "health interval {} is below the minimum of 100ms",
            humantime::format_duration(interval)
        ));
    }
    if timeout > interval {
        return Err("health timeout must not exceed the interval".to_owned());
    }
    Ok(HealthSpec { kind, port, interval, timeout, rise, fall })
}
