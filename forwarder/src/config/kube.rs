//! The optional `[kube]` table: how `forwarder kube` fills this file from
//! a Kubernetes cluster, and the CIDR rules shared with `source_ranges`.
//!
//! ```toml
//! [kube]
//! pools = ["203.0.113.0/28", "198.51.100.7/32"]   # VIPs handed to LoadBalancer Services
//! class = "forwarder.dev/lb"                       # spec.loadBalancerClass served (unset ones too)
//! address_type = "InternalIP"                      # which node address is the backend
//! ```
//!
//! The daemon ignores this table; only the controller and
//! `forwarder kube render` read it.

use std::ops::Range;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::{Problem, problem};

/// The `spec.loadBalancerClass` served when the file names none.
pub const DEFAULT_CLASS: &str = "forwarder.dev/lb";
/// The node address used when the file names no type.
pub const DEFAULT_ADDRESS_TYPE: &str = "InternalIP";
/// Node address types Kubernetes defines (`NodeAddress.type`).
pub const ADDRESS_TYPES: [&str; 5] = ["InternalIP", "ExternalIP", "Hostname", "InternalDNS", "ExternalDNS"];

/// What the Kubernetes controller needs from the service file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeSettings {
    /// Where VIPs come from, in order of preference.
    pub pools: Vec<Ipv4Net>,
    /// The `spec.loadBalancerClass` this controller serves.
    pub class: String,
    /// The `NodeAddress.type` whose address becomes the backend.
    pub address_type: String,
}

impl Default for KubeSettings {
    fn default() -> Self {
        Self {
            pools: Vec::new(),
            class: DEFAULT_CLASS.to_owned(),
            address_type: DEFAULT_ADDRESS_TYPE.to_owned(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKube {
    pools: Option<Spanned<Vec<Spanned<String>>>>,
    class: Option<Spanned<String>>,
    address_type: Option<Spanned<String>>,
}

pub(super) fn validate(raw: RawKube) -> Result<KubeSettings, Problem> {
    let RawKube { pools, class, address_type } = raw;
    let defaults = KubeSettings::default();
    let pools = match pools {
        None => defaults.pools,
        Some(pools) => {
            let (span, pools) = (pools.span(), pools.into_inner());
            if pools.is_empty() {
                return problem(span, "kube pools is empty: list at least one CIDR, or omit it");
            }
            // Overlapping pools would offer one address twice.
            cidrs(pools, "pool", Overlap::Refused)?
        }
    };
    let class = match class {
        None => defaults.class,
        Some(class) => check_class(class.get_ref()).or_else(|message| problem(class.span(), message))?,
    };
    let address_type = match address_type {
        None => defaults.address_type,
        Some(kind) if ADDRESS_TYPES.contains(&kind.get_ref().as_str()) => kind.into_inner(),
        Some(kind) => {
            let message =
                format!("unknown kube address_type {:?}: use one of {ADDRESS_TYPES:?}", kind.get_ref());
            return problem(kind.span(), message);
        }
    };
    Ok(KubeSettings { pools, class, address_type })
}

/// A load balancer class is a label-style key, `prefix/name`.
pub fn check_class(text: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= 253
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if !ok {
        return Err(format!("invalid kube class {text:?}: use a label-style key such as {DEFAULT_CLASS:?}"));
    }
    Ok(text.to_owned())
}

/// Whether CIDRs of one list may overlap.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Overlap {
    Allowed,
    Refused,
}

/// Validates a list of CIDRs (`what` names them in errors); duplicates are
/// refused in any case.
pub(super) fn cidrs(
    list: Vec<Spanned<String>>,
    what: &str,
    overlap: Overlap,
) -> Result<Vec<Ipv4Net>, Problem> {
    let mut nets: Vec<Ipv4Net> = Vec::with_capacity(list.len());
    for text in list {
        let span: Range<usize> = text.span();
        let net = parse_cidr(text.get_ref(), what).or_else(|message| problem(span.clone(), message))?;
        if nets.contains(&net) {
            return problem(span, format!("duplicate {what} {net}"));
        }
        let overlapping = nets.iter().find(|other| other.contains(&net) || net.contains(*other));
        if let (Overlap::Refused, Some(other)) = (overlap, overlapping) {
            return problem(span, format!("{what} {net} overlaps {what} {other}"));
        }
        nets.push(net);
    }
    Ok(nets)
}

/// An IPv4 CIDR with no host bits set (`10.0.0.1/8` is refused: it is
/// more often a typo than a wish for `10.0.0.0/8`).
pub fn parse_cidr(text: &str, what: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net =
        text.parse().map_err(|_| format!("{what} {text:?} is not an IPv4 CIDR such as 203.0.113.0/24"))?;
    if net.trunc() != net {
        return Err(format!("{what} {text:?} has host bits set: did you mean {}?", net.trunc()));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::ServiceFile;

    const SERVICE: &str = "[[service]]\nname = \"web\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\n\
                           backends = [\"198.18.2.11:30080\"]\n";

    fn parse(text: &str) -> Result<ServiceFile, String> {
        ServiceFile::parse(Path::new("k.toml"), text).map_err(|err| err.to_string())
    }

    #[test]
    fn the_table_parses_with_defaults() {
        let file =
            parse(&format!("{SERVICE}[kube]\npools = [\"203.0.113.0/28\", \"198.51.100.7/32\"]\n")).unwrap();
        let kube = file.kube.unwrap();
        assert_eq!(kube.pools, ["203.0.113.0/28".parse().unwrap(), "198.51.100.7/32".parse().unwrap()]);
        assert_eq!((kube.class.as_str(), kube.address_type.as_str()), ("forwarder.dev/lb", "InternalIP"));
        assert_eq!(parse(SERVICE).unwrap().kube, None);
        assert_eq!(parse("[kube]\n").unwrap().kube.unwrap().pools, []);
    }

    #[test]
    fn source_ranges_parse() {
        let text =
            SERVICE.replace("port = 80", "port = 80\nsource_ranges = [\"192.0.2.0/24\", \"192.0.2.7/32\"]");
        let ranges = &parse(&text).unwrap().services[0].source_ranges;
        assert_eq!(ranges, &["192.0.2.0/24".parse().unwrap(), "192.0.2.7/32".parse().unwrap()]);
        assert_eq!(parse(SERVICE).unwrap().services[0].source_ranges, []);
    }

    #[test]
    fn mistakes_are_placed() {
        let ranges = |list: &str| SERVICE.replace("port = 80", &format!("port = 80\nsource_ranges = {list}"));
        let kube = |body: &str| format!("{SERVICE}[kube]\n{body}\n");
        let cases = [
            (
                kube("pools = [\"203.0.113.0/33\"]"),
                "k.toml:8:10: pool \"203.0.113.0/33\" is not an IPv4 CIDR such as 203.0.113.0/24",
            ),
            (
                kube("pools = [\"203.0.113.1/24\"]"),
                "k.toml:8:10: pool \"203.0.113.1/24\" has host bits set: did you mean 203.0.113.0/24?",
            ),
            (
                kube("pools = [\"10.0.0.0/8\", \"10.1.0.0/16\"]"),
                "k.toml:8:24: pool 10.1.0.0/16 overlaps pool 10.0.0.0/8",
            ),
            (kube("pools = [\"10.0.0.0/8\", \"10.0.0.0/8\"]"), "k.toml:8:24: duplicate pool 10.0.0.0/8"),
            (kube("pools = []"), "k.toml:8:9: kube pools is empty: list at least one CIDR, or omit it"),
            (
                kube("class = \"a b\""),
                "k.toml:8:9: invalid kube class \"a b\": use a label-style key such as \"forwarder.dev/lb\"",
            ),
            (
                kube("address_type = \"Internal\""),
                "k.toml:8:16: unknown kube address_type \"Internal\": use one of [\"InternalIP\", \"ExternalIP\", \"Hostname\", \"InternalDNS\", \"ExternalDNS\"]",
            ),
            (
                kube("pool = []"),
                "k.toml:8:1: unknown field `pool`, expected one of `pools`, `class`, `address_type`",
            ),
            (ranges("[]"), "k.toml:5:17: source_ranges is empty: omit it to allow every source"),
            (
                ranges("[\"192.0.2.0/24\", \"nope\"]"),
                "k.toml:5:34: source range \"nope\" is not an IPv4 CIDR such as 203.0.113.0/24",
            ),
            (
                ranges("[\"192.0.2.0/24\", \"192.0.2.0/24\"]"),
                "k.toml:5:34: duplicate source range 192.0.2.0/24",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse(&text).unwrap_err(), want, "{text}");
        }
    }
}
