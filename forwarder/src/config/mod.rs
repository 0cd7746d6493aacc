//! The service file: parsing and validation.
//!
//! Longer than most files because the schema (the raw and the validated
//! types) and the rule for each field sit together, in the file's order;
//! the `health` and `[kube]` tables have their own files.
//!
//! Everything is checked before anything is applied; an error names the
//! file, the line and column, and the problem, on one line:
//!
//! ```
//! let err = forwarder::config::ServiceFile::parse(
//!     "services.toml".as_ref(),
//!     "[[service]]\nname = \"web\"\nvip = \"203.0.113.10\"\nport = 0\n\
//!      protocol = \"tcp\"\nbackends = [\"198.18.2.11:30080\"]\n",
//! )
//! .unwrap_err();
//! assert_eq!(err.to_string(), "services.toml:4:8: port must be between 1 and 65535, not 0");
//! ```

use std::{
    collections::HashSet,
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    ops::Range,
    path::{Path, PathBuf},
};

use forwarder_common::snat::MAX_SNAT_ADDRS;
use serde::{Deserialize, Serialize};
use toml::{Spanned, Value};

pub mod edit;
pub mod health;
pub mod kube;
pub use health::{HealthKind, HealthSpec};
pub use kube::KubeSettings;

/// Backend weights go from 0 (draining) to this.
pub const MAX_WEIGHT: u32 = 1000;
/// Weight of a backend listed without one.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Backends per service, bounded by the largest Maglev table.
pub const MAX_BACKENDS_PER_SERVICE: usize = 1000;

/// A validated service file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceFile {
    /// Source addresses for snat services, if the file sets any: new
    /// connections are spread over them (`snat_ip = "A"` or `["A", "B"]`).
    #[serde(default, deserialize_with = "one_or_many", skip_serializing_if = "Vec::is_empty")]
    pub snat_ip: Vec<Ipv4Addr>,
    pub services: Vec<Service>,
    /// The `[kube]` table, for `forwarder kube` (the daemon ignores it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube: Option<KubeSettings>,
}

/// One VIP:port:protocol and where its traffic goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub backends: Vec<BackendSpec>,
    /// Active health checks of the backends, if configured.
    pub health: Option<HealthSpec>,
    /// Client sources allowed to reach the VIP (`source_ranges`); empty:
    /// every source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<ipnet::Ipv4Net>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => forwarder_common::maps::PROTO_TCP,
            Protocol::Udp => forwarder_common::maps::PROTO_UDP,
        }
    }

    /// The protocol of IP protocol number `number`, if it is one of these.
    #[must_use]
    pub const fn from_number(number: u8) -> Option<Self> {
        match number {
            forwarder_common::maps::PROTO_TCP => Some(Protocol::Tcp),
            forwarder_common::maps::PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Snat,
    Preserve,
}

impl Mode {
    /// The mode as the datapath's service entries hold it.
    #[must_use]
    pub const fn nat_mode(self) -> forwarder_common::maps::NatMode {
        match self {
            Mode::Snat => forwarder_common::maps::NatMode::Snat,
            Mode::Preserve => forwarder_common::maps::NatMode::Preserve,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Snat => "snat",
            Mode::Preserve => "preserve",
        })
    }
}

/// A backend: a node's NodeIP:NodePort and its share of new flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub addr: SocketAddrV4,
    /// 0 drains the backend: no new flows, existing ones stay.
    pub weight: u32,
}

/// A problem in a service file, at a place in it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is part of the message (not a `source`) so the
    /// one-line error names it once.
    #[error("{}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{}:{line}:{column}: {message}", path.display())]
    Invalid { path: PathBuf, line: usize, column: usize, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    snat_ip: Option<Spanned<RawSnatIp>>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
    kube: Option<kube::RawKube>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    vip: Spanned<String>,
    port: Spanned<i64>,
    protocol: Spanned<String>,
    mode: Option<Spanned<String>>,
    backends: Spanned<Vec<Spanned<Value>>>,
    health: Option<Spanned<Value>>,
    source_ranges: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A validation failure before it is placed in a file.
pub(crate) struct Problem {
    span: Range<usize>,
    message: String,
}

pub(crate) fn problem<T>(span: Range<usize>, message: impl Into<String>) -> Result<T, Problem> {
    Err(Problem { span, message: message.into() })
}

impl ServiceFile {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        Self::parse(path, &text)
    }

    /// Validates `text`, naming `path` in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let at = |span: Range<usize>, message: String| {
            let (line, column) = line_column(text, span.start);
            ConfigError::Invalid { path: path.to_owned(), line, column, message }
        };
        let raw: RawFile = toml::from_str(text).map_err(|err| {
            let message = err.message().trim().replace('\n', " ");
            at(err.span().unwrap_or(0..0), message)
        })?;
        validate(raw).map_err(|Problem { span, message }| at(span, message))
    }
}

fn validate(raw: RawFile) -> Result<ServiceFile, Problem> {
    let RawFile { snat_ip, service, kube } = raw;
    let kube = kube.map(kube::validate).transpose()?;
    let snat_ip = snat_ip.map(validate_snat_ip).transpose()?.unwrap_or_default();
    let mut names = HashSet::new();
    let mut listeners = HashSet::new();
    let mut services = Vec::with_capacity(service.len());
    for raw in service {
        let span = raw.span();
        let service = validate_service(raw.into_inner())?;
        if !names.insert(service.name.clone()) {
            return problem(span, format!("duplicate service name {:?}", service.name));
        }
        if !listeners.insert((service.vip, service.port, service.protocol)) {
            let Service { vip, port, protocol, .. } = &service;
            return problem(span, format!("duplicate VIP:port:protocol {vip}:{port}/{protocol}"));
        }
        services.push(service);
    }
    Ok(ServiceFile { snat_ip, services, kube })
}

fn validate_service(raw: RawService) -> Result<Service, Problem> {
    let RawService { name, vip, port, protocol, mode, backends, health, source_ranges } = raw;
    let name = validate_name(&name)?;
    let vip = unicast(&vip, "vip")?;
    let port = validate_port(&port)?;
    let protocol = match protocol.get_ref().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => {
            return problem(protocol.span(), format!("unknown protocol {other:?}: use \"tcp\" or \"udp\""));
        }
    };
    let mode = match mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("snat", _)) => Mode::Snat,
        Some(("preserve", _)) => Mode::Preserve,
        Some((other, span)) => {
            return problem(span, format!("unknown mode {other:?}: use \"snat\" or \"preserve\""));
        }
    };
    let backends_span = backends.span();
    let raw_backends = backends.into_inner();
    if raw_backends.is_empty() {
        return problem(backends_span, format!("service {name:?} has no backends"));
    }
    if raw_backends.len() > MAX_BACKENDS_PER_SERVICE {
        return problem(
            backends_span,
            format!(
                "service {name:?} has {} backends; at most {MAX_BACKENDS_PER_SERVICE}",
                raw_backends.len()
            ),
        );
    }
    let mut seen = HashSet::new();
    let mut backends = Vec::with_capacity(raw_backends.len());
    for raw in raw_backends {
        let span = raw.span();
        let backend = validate_backend(raw)?;
        if !seen.insert(backend.addr) {
            return problem(span, format!("duplicate backend {} in service {name:?}", backend.addr));
        }
        backends.push(backend);
    }
    let health = health
        .map(|raw| {
            let span = raw.span();
            health::validate(raw.into_inner()).or_else(|message| problem(span, message))
        })
        .transpose()?;
    let source_ranges = match source_ranges {
        None => Vec::new(),
        Some(list) if list.get_ref().is_empty() => {
            return problem(list.span(), "source_ranges is empty: omit it to allow every source");
        }
        Some(list) => kube::cidrs(list.into_inner(), "source range", kube::Overlap::Allowed)?,
    };
    Ok(Service { name, vip, port, protocol, mode, backends, health, source_ranges })
}

/// Service names appear on command lines and in metrics labels.
fn validate_name(name: &Spanned<String>) -> Result<String, Problem> {
    let text = name.get_ref();
    let ok = !text.is_empty()
        && text.len() <= 63
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        return problem(
            name.span(),
            format!("invalid service name {text:?}: use 1 to 63 letters, digits, '-', '_' or '.'"),
        );
    }
    Ok(text.clone())
}

fn validate_port(port: &Spanned<i64>) -> Result<u16, Problem> {
    match u16::try_from(*port.get_ref()) {
        Ok(0) | Err(_) => {
            problem(port.span(), format!("port must be between 1 and 65535, not {}", port.get_ref()))
        }
        Ok(p) => Ok(p),
    }
}

/// `snat_ip` as written: one address, or a list whose entries keep their
/// place in the file (a `Value` array would not), so that an error names
/// the entry.
enum RawSnatIp {
    One(String),
    List(Vec<Spanned<Value>>),
}

impl<'de> Deserialize<'de> for RawSnatIp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawSnatIp;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<RawSnatIp, E> {
                Ok(RawSnatIp::One(text.to_owned()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawSnatIp, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(RawSnatIp::List(items))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `snat_ip`: one address, or a list of up to `MAX_SNAT_ADDRS` distinct ones.
fn validate_snat_ip(raw: Spanned<RawSnatIp>) -> Result<Vec<Ipv4Addr>, Problem> {
    let span = raw.span();
    let items = match raw.into_inner() {
        RawSnatIp::One(text) => vec![Spanned::new(span.clone(), text)],
        RawSnatIp::List(items) if items.is_empty() => {
            return problem(span, "snat_ip is an empty list: leave it out to use each node's own address");
        }
        RawSnatIp::List(items) => {
            check_snat_count(items.len()).or_else(|message| problem(span.clone(), message))?;
            let mut texts = Vec::with_capacity(items.len());
            for item in items {
                let item_span = item.span();
                match item.into_inner() {
                    Value::String(text) => texts.push(Spanned::new(item_span, text)),
                    other => {
                        return problem(
                            item_span,
                            format!("snat_ip entries are strings, not {}", other.type_str()),
                        );
                    }
                }
            }
            texts
        }
    };
    // (Each entry's own rules first, so that an error names its line; the
    // list has at most `MAX_SNAT_ADDRS`, so the repeat search is short.)
    let addrs = items.iter().map(|item| unicast(item, "snat_ip")).collect::<Result<Vec<_>, _>>()?;
    if let Some(index) = first_repeat(&addrs) {
        return problem(items[index].span(), format!("snat_ip names {} twice", addrs[index]));
    }
    Ok(addrs)
}

/// The rules of a SNAT address list (`snat_ip`, `--snat-ip`): unicast,
/// distinct, at most `MAX_SNAT_ADDRS`.
pub fn check_snat_ips(addrs: &[Ipv4Addr]) -> Result<(), String> {
    check_snat_count(addrs.len())?;
    for addr in addrs {
        check_unicast(*addr, "snat_ip")?;
    }
    match first_repeat(addrs) {
        Some(index) => Err(format!("snat_ip names {} twice", addrs[index])),
        None => Ok(()),
    }
}

/// The rule on a SNAT address list's length.
fn check_snat_count(count: usize) -> Result<(), String> {
    if count > MAX_SNAT_ADDRS {
        return Err(format!("snat_ip has {count} addresses; at most {MAX_SNAT_ADDRS}"));
    }
    Ok(())
}

/// The index of the first address that `addrs` names a second time.
fn first_repeat(addrs: &[Ipv4Addr]) -> Option<usize> {
    (0..addrs.len()).find(|&index| addrs[..index].contains(&addrs[index]))
}

/// Serde: `null`, one address or a list (files and requests written
/// before pools had one address or none).
fn one_or_many<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<Ipv4Addr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Ipv4Addr),
        Many(Vec<Ipv4Addr>),
    }
    Ok(match Option::<OneOrMany>::deserialize(deserializer)? {
        None => Vec::new(),
        Some(OneOrMany::One(addr)) => vec![addr],
        Some(OneOrMany::Many(addrs)) => addrs,
    })
}

/// A unicast IPv4 address (what a VIP, backend or SNAT address must be).
fn unicast(text: &Spanned<String>, what: &str) -> Result<Ipv4Addr, Problem> {
    let addr: Ipv4Addr = match text.get_ref().parse() {
        Ok(addr) => addr,
        Err(_) => return problem(text.span(), format!("{what} {:?} is not an IPv4 address", text.get_ref())),
    };
    check_unicast(addr, what).or_else(|message| problem(text.span(), message))
}

fn check_unicast(addr: Ipv4Addr, what: &str) -> Result<Ipv4Addr, String> {
    if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || addr.is_loopback() {
        return Err(format!("{what} {addr} is not a unicast address"));
    }
    Ok(addr)
}

fn validate_backend(raw: Spanned<Value>) -> Result<BackendSpec, Problem> {
    let span = raw.span();
    let (addr, weight) = match raw.into_inner() {
        Value::String(addr) => (addr, None),
        Value::Table(mut table) => {
            let addr = match table.remove("addr") {
                Some(Value::String(addr)) => addr,
                Some(_) => return problem(span, "backend addr must be a string \"IP:PORT\""),
                None => return problem(span, "backend table needs addr = \"IP:PORT\""),
            };
            let weight = match table.remove("weight") {
                None => None,
                Some(Value::Integer(w)) => Some(w),
                Some(_) => return problem(span, "backend weight must be an integer"),
            };
            if let Some(key) = table.keys().next() {
                return problem(span, format!("unknown backend field {key:?}: expected addr, weight"));
            }
            (addr, weight)
        }
        _ => return problem(span, "a backend is \"IP:PORT\" or { addr = \"IP:PORT\", weight = N }"),
    };
    let addr = parse_backend_addr(&addr).or_else(|message| problem(span.clone(), message))?;
    let weight = match weight {
        None => DEFAULT_WEIGHT,
        Some(w) => check_weight(w).or_else(|message| problem(span, message))?,
    };
    Ok(BackendSpec { addr, weight })
}

/// Parses a backend's `IP:PORT` the way the service file and the CLI do.
pub fn parse_backend_addr(text: &str) -> Result<SocketAddrV4, String> {
    let addr: SocketAddrV4 = text.parse().map_err(|_| format!("backend {text:?} is not IPv4:PORT"))?;
    check_unicast(*addr.ip(), "backend")?;
    if addr.port() == 0 {
        return Err(format!("backend {text:?} has port 0"));
    }
    Ok(addr)
}

/// Checks a weight the way the service file and the CLI do.
pub fn check_weight(weight: i64) -> Result<u32, String> {
    u32::try_from(weight)
        .ok()
        .filter(|w| *w <= MAX_WEIGHT)
        .ok_or_else(|| format!("weight {weight} is out of range 0..={MAX_WEIGHT}"))
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests;
