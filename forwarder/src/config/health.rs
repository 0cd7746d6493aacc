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
//!
//! [`HealthTable`] is the table as written, the one schema the parser reads
//! and the editor writes, so a new field is added in one place.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Value;

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
const MIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET path` answers 2xx or 3xx.
    Http { path: String },
}

/// The `health` table as the file holds it.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthTable {
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rise: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fall: Option<i64>,
}

impl From<&HealthSpec> for HealthTable {
    fn from(spec: &HealthSpec) -> Self {
        let HealthSpec { kind, port, interval, timeout, rise, fall } = spec;
        let (kind, path) = match kind {
            HealthKind::Tcp => ("tcp", None),
            HealthKind::Http { path } => ("http", Some(path.clone())),
        };
        let duration = |d: &Duration| Some(humantime::format_duration(*d).to_string());
        Self {
            kind: kind.to_owned(),
            port: port.map(i64::from),
            path,
            interval: duration(interval),
            timeout: duration(timeout),
            rise: Some(i64::from(*rise)),
            fall: Some(i64::from(*fall)),
        }
    }
}

/// The `health` value to write for `spec`: an inline table.
#[must_use]
pub(super) fn render(spec: &HealthSpec) -> toml_edit::Value {
    HealthTable::from(spec)
        .serialize(toml_edit::ser::ValueSerializer::new())
        .expect("a health table is plain strings and integers")
}

/// Validates a `health` value (errors are placed by the caller).
pub(super) fn validate(raw: Value) -> Result<HealthSpec, String> {
    if !raw.is_table() {
        return Err("health must be a table, e.g. { kind = \"tcp\" }".to_owned());
    }
    let table: HealthTable = raw
        .try_into()
        .map_err(|err: toml::de::Error| format!("health: {}", err.message().trim().replace('\n', " ")))?;
    let HealthTable { kind, port, path, interval, timeout, rise, fall } = table;
    if let Some(path) = &path
        && (!path.starts_with('/') || path.contains(char::is_whitespace))
    {
        return Err(format!("health path must be an absolute URL path, not {path:?}"));
    }
    let kind = match (kind.as_str(), path) {
        ("tcp", None) => HealthKind::Tcp,
        ("tcp", Some(_)) => return Err("health path only applies to kind = \"http\"".to_owned()),
        ("http", path) => HealthKind::Http { path: path.unwrap_or_else(|| "/healthz".to_owned()) },
        (other, _) => return Err(format!("unknown health kind {other:?}: use \"tcp\" or \"http\"")),
    };
    let port = match port {
        None => None,
        Some(p) if (1..=65535).contains(&p) => Some(p as u16),
        Some(other) => return Err(format!("health port must be between 1 and 65535, not {other}")),
    };
    let duration = |key: &str, value: Option<String>, default: Duration| match value {
        None => Ok(default),
        Some(text) => humantime::parse_duration(&text)
            .map_err(|err| format!("health {key} {text:?}: {err} (e.g. \"2s\", \"500ms\")")),
    };
    let interval = duration("interval", interval, DEFAULT_INTERVAL)?;
    // An unset timeout never exceeds a short interval.
    let timeout = duration("timeout", timeout, DEFAULT_TIMEOUT.min(interval))?;
    let count = |key: &str, value: Option<i64>, default: u32| match value {
        None => Ok(default),
        Some(n) if (1..=100).contains(&n) => Ok(n as u32),
        Some(other) => Err(format!("health {key} must be between 1 and 100, not {other}")),
    };
    let rise = count("rise", rise, DEFAULT_RISE)?;
    let fall = count("fall", fall, DEFAULT_FALL)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HealthSpec, String> {
        let value: toml::Table = toml::from_str(&format!("health = {text}")).unwrap();
        validate(value["health"].clone())
    }

    #[test]
    fn rendering_round_trips() {
        for text in [
            r#"{ kind = "tcp" }"#,
            r#"{ kind = "http", port = 32000, path = "/ready", interval = "500ms", rise = 1, fall = 5 }"#,
        ] {
            let spec = parse(text).unwrap();
            assert_eq!(parse(&render(&spec).to_string()), Ok(spec), "{text}");
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (r#"{ kind = "tcp", every = "2s" }"#, "unknown field `every`"),
            (r#"{ port = 1 }"#, "missing field `kind`"),
            (r#"{ kind = "tcp", rise = "2" }"#, "health: invalid type: string \"2\", expected i64"),
            (r#"{ kind = "udp" }"#, "unknown health kind \"udp\""),
            (r#"{ kind = "tcp", path = "/x" }"#, "path only applies to kind = \"http\""),
            (r#"{ kind = "http", path = "x y" }"#, "absolute URL path"),
            (r#"{ kind = "tcp", interval = "10ms" }"#, "below the minimum of 100ms"),
            (r#"{ kind = "tcp", interval = "1s", timeout = "2s" }"#, "must not exceed the interval"),
            ("\"tcp\"", "health must be a table"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err:?} should contain {want:?}");
        }
    }
}
