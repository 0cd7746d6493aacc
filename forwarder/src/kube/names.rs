//! Names of the services generated for a Kubernetes Service, and which
//! services of the file the controller owns.
//!
//! A Service `NAMESPACE/NAME` yields one service per port, named
//! `kube.NAMESPACE.NAME.PORT` where `PORT` is the port's name, or its
//! number when it has none (Kubernetes requires names as soon as a Service
//! has two ports, and they are unique, so the names never collide). None of
//! the parts can contain a dot (namespaces and Service names are DNS
//! labels, port names IANA service names), so the name is unambiguous.
//!
//! A name longer than the service file's 63 characters keeps its first 54
//! characters, then `-` and the first 8 hex digits of the SHA-256 of the
//! whole name: `kube.a-very-long-namespace.a-very-long-serv-1f2e3d4c`.
//!
//! **Ownership**: the controller owns every service whose name starts with
//! [`PREFIX`] and rewrites them at will; any other service is hand-written
//! and is never changed or removed. Do not name hand-written services
//! `kube.*`.

use k8s_openapi::api::core::v1::ServicePort;

/// Names of generated services start with this; nothing else does.
pub const PREFIX: &str = "kube.";
/// The service file's limit on a name.
const MAX_LEN: usize = 63;
/// Hex digits of the hash kept in a truncated name.
const HASH_DIGITS: usize = 8;

/// Whether the controller owns the service called `name`.
#[must_use]
pub fn is_generated(name: &str) -> bool {
    name.starts_with(PREFIX)
}

/// The part of the name that tells the Service's ports apart.
#[must_use]
pub fn port_label(port: &ServicePort) -> String {
    match port.name.as_deref() {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => port.port.to_string(),
    }
}

/// The generated service's name for one port of `namespace/name`.
#[must_use]
pub fn service_name(namespace: &str, name: &str, port_label: &str) -> String {
    let full = format!("{PREFIX}{namespace}.{name}.{port_label}");
    // Kubernetes names are ASCII; anything else is made safe rather than
    // producing a name the service file refuses.
    let full: String = full
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .collect();
    if full.len() <= MAX_LEN {
        return full;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, full.as_bytes());
    let hash: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let keep = MAX_LEN - 1 - HASH_DIGITS;
    format!("{}-{}", &full[..keep], &hash[..HASH_DIGITS])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_rule() {
        assert_eq!(service_name("default", "web", "http"), "kube.default.web.http");
        assert_eq!(service_name("default", "dns", "53"), "kube.default.dns.53");
        let port = ServicePort { port: 443, ..ServicePort::default() };
        assert_eq!(port_label(&port), "443");
        let named = ServicePort { name: Some("https".to_owned()), ..port };
        assert_eq!(port_label(&named), "https");
        assert!(is_generated("kube.default.web.http"));
        assert!(!is_generated("kubelet"));
    }

    #[test]
    fn long_names_are_truncated_with_a_hash() {
        let namespace = "team-payments-production-eu-west";
        let long = service_name(namespace, "checkout-frontend-public", "https");
        assert_eq!(long.len(), 63);
        assert!(long.starts_with("kube.team-payments-production-eu-west.checkout-fronten-"), "{long}");
        let hash = &long[55..];
        assert!(hash.len() == 8 && hash.chars().all(|c| c.is_ascii_hexdigit()), "{long}");
        // Deterministic, and distinct for names sharing the kept prefix.
        assert_eq!(long, service_name(namespace, "checkout-frontend-public", "https"));
        assert_ne!(long, service_name(namespace, "checkout-frontend-public", "http"));
    }
}
