//! LoadBalancer Services and Nodes to the services of the file.
//!
//! * Only `spec.type: LoadBalancer` Services whose `spec.loadBalancerClass`
//!   is unset or the configured class, and that are not being deleted; the
//!   others are left to whoever serves them.
//! * Each gets a VIP (see [`super::allocate`]) and one service per port:
//!   `VIP:port/protocol` to every backend node's `NodeIP:nodePort` (see
//!   [`super::nodes`]), named by [`super::names`]. SCTP ports are skipped
//!   with a problem; a port without a `nodePort` is an error.
//! * `externalTrafficPolicy: Local` gives mode `preserve` with an HTTP check
//!   of `healthCheckNodePort` at `/healthz` (kube-proxy answers 200 only on
//!   nodes with a local endpoint); `Cluster` (the default) gives `snat`.
//! * `spec.loadBalancerSourceRanges` (else the legacy annotation
//!   `service.beta.kubernetes.io/load-balancer-source-ranges`) becomes
//!   `source_ranges`. A range that cannot be kept (IPv6, malformed) fails
//!   the Service closed: it is not forwarded rather than opened to all.
//!
//! A problem with one Service leaves it out of the file and is reported;
//! it never stops the others.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddrV4},
};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Service as KubeService, ServicePort};

use super::{
    allocate::{self, Claim, HandWritten},
    input::Cluster,
    names, nodes,
    problem::{Problem, ServiceKey, Subject},
};
use crate::config::{
    BackendSpec, DEFAULT_WEIGHT, HealthKind, HealthSpec, KubeSettings, Mode, Protocol, Service, health,
};

/// Annotation asking for a given VIP (preferred over `spec.loadBalancerIP`,
/// which Kubernetes deprecates).
pub const REQUESTED_IP: &str = "forwarder.dev/load-balancer-ip";
/// Annotation whose value is a sharing key: Services with the same key may
/// share a VIP when their ports differ (MetalLB's `allow-shared-ip`).
pub const SHARING_KEY: &str = "forwarder.dev/allow-shared-ip";
/// The legacy annotation of source ranges, read when the spec has none.
pub const SOURCE_RANGES_ANNOTATION: &str = "service.beta.kubernetes.io/load-balancer-source-ranges";

/// What the cluster asks of the service file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Translation {
    /// The generated services, sorted by name.
    pub services: Vec<Service>,
    /// The VIP of each Service that got one (its status to write), also
    /// when a problem keeps it from being forwarded.
    pub vips: BTreeMap<ServiceKey, Ipv4Addr>,
    /// Every Service this controller serves, forwarded or not.
    pub served: BTreeSet<ServiceKey>,
    pub problems: Vec<Problem>,
}

/// One Service's ports, ready for allocation.
struct Plan<'a> {
    key: ServiceKey,
    service: &'a KubeService,
    ports: Vec<(&'a ServicePort, u16, Protocol, u16)>,
}

/// Translates `cluster` under `settings`; `hand_written` are the services
/// of the file the controller does not own (their listeners are taken).
#[must_use]
pub fn translate(cluster: &Cluster, settings: &KubeSettings, hand_written: &[Service]) -> Translation {
    let mut out = Translation::default();
    let mut services: Vec<&KubeService> =
        cluster.services.iter().filter(|s| is_served(s, settings)).collect();
    services.sort_by_key(|s| (s.metadata.creation_timestamp.clone(), key_of(s)));
    let mut plans = Vec::new();
    for service in services {
        let key = key_of(service);
        out.served.insert(key.clone());
        let mut problem = |reason, message| {
            out.problems.push(Problem { subject: Subject::Service(key.clone()), reason, message });
        };
        if let Some(plan) = plan(service, &mut problem) {
            plans.push(plan);
        }
    }
    let taken: Vec<HandWritten> = hand_written
        .iter()
        .filter(|s| !names::is_generated(&s.name))
        .map(|s| HandWritten { name: s.name.clone(), vip: s.vip, listener: (s.port, s.protocol) })
        .collect();
    let claims: Vec<Claim> = plans.iter().map(claim).collect();
    let (vips, errors) = allocate::allocate(&settings.pools, &taken, &claims);
    let backends = nodes::backend_addresses(&cluster.nodes, &settings.address_type, &mut out.problems);
    let mut names = BTreeSet::new();
    for plan in &plans {
        let subject = Subject::Service(plan.key.clone());
        let mut problem =
            |reason, message| out.problems.push(Problem { subject: subject.clone(), reason, message });
        if let Some(message) = errors.get(&plan.key) {
            problem("AllocationFailed", message.clone());
            continue;
        }
        let Some(&vip) = vips.get(&plan.key) else { continue };
        // The address stays the Service's (its status) even while it
        // cannot be forwarded, so it is not handed to another meanwhile.
        out.vips.insert(plan.key.clone(), vip);
        if backends.is_empty() {
            problem("NoBackends", "no node is Ready and eligible: the Service is not forwarded".to_owned());
            continue;
        }
        let Some(entries) = entries(plan, vip, &backends, &mut problem) else { continue };
        if let Some(clash) = entries.iter().find(|e| names.contains(&e.name)) {
            problem(
                "NameClash",
                format!("generated name {:?} is already used by another Service", clash.name),
            );
            continue;
        }
        names.extend(entries.iter().map(|e| e.name.clone()));
        out.services.extend(entries);
    }
    out.services.sort_by(|a, b| a.name.cmp(&b.name));
    out.problems.sort_by(|a, b| a.subject.cmp(&b.subject));
    out
}

/// Whether this controller serves the Service.
#[must_use]
pub fn is_served(service: &KubeService, settings: &KubeSettings) -> bool {
    let Some(spec) = &service.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer")
        && spec.load_balancer_class.as_deref().is_none_or(|class| class == settings.class)
        && service.metadata.deletion_timestamp.is_none()
}

#[must_use]
pub fn key_of(service: &KubeService) -> ServiceKey {
    let metadata = &service.metadata;
    ServiceKey {
        namespace: metadata.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        name: metadata.name.clone().unwrap_or_default(),
    }
}

fn annotation<'a>(service: &'a KubeService, key: &str) -> Option<&'a str> {
    let value = service.metadata.annotations.as_ref()?.get(key)?.trim();
    (!value.is_empty()).then_some(value)
}

/// The ports that can be forwarded: (port, number, protocol, nodePort).
fn plan<'a>(service: &'a KubeService, problem: &mut impl FnMut(&'static str, String)) -> Option<Plan<'a>> {
    let key = key_of(service);
    let spec_ports = service.spec.as_ref().and_then(|spec| spec.ports.as_deref()).unwrap_or_default();
    let mut ports = Vec::new();
    for port in spec_ports {
        let label = names::port_label(port);
        let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            other => {
                problem(
                    "UnsupportedProtocol",
                    format!("port {label}: protocol {other} is not forwarded (TCP and UDP are)"),
                );
                continue;
            }
        };
        let number = u16::try_from(port.port).ok().filter(|p| *p > 0);
        let node_port = port.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0);
        match (number, node_port) {
            (Some(number), Some(node_port)) => ports.push((port, number, protocol, node_port)),
            (None, _) => problem("InvalidPort", format!("port {label}: {} is not a port number", port.port)),
            (_, None) => {
                problem(
                    "NoNodePort",
                    format!("port {label} has no nodePort (allocateLoadBalancerNodePorts: false?)"),
                );
                return None;
            }
        }
    }
    if ports.is_empty() {
        problem("NoPorts", "no TCP or UDP port to forward".to_owned());
        return None;
    }
    Some(Plan { key, service, ports })
}

fn claim(plan: &Plan<'_>) -> Claim {
    let Plan { key, service, ports } = plan;
    let spec = service.spec.as_ref();
    let requested = annotation(service, REQUESTED_IP)
        .map(str::to_owned)
        .or_else(|| spec.and_then(|s| s.load_balancer_ip.clone()).filter(|ip| !ip.is_empty()));
    let ingress =
        service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    Claim {
        key: key.clone(),
        requested,
        current: ingress.into_iter().flatten().filter_map(|i| i.ip.clone()).collect(),
        sharing: annotation(service, SHARING_KEY).map(str::to_owned),
        listeners: ports.iter().map(|(_, number, protocol, _)| (*number, *protocol)).collect(),
    }
}

/// The services of one Service at `vip`, or `None` after a problem.
fn entries(
    plan: &Plan<'_>,
    vip: Ipv4Addr,
    backends: &[Ipv4Addr],
    problem: &mut impl FnMut(&'static str, String),
) -> Option<Vec<Service>> {
    let Plan { key, service, ports } = plan;
    let spec = service.spec.as_ref()?;
    let source_ranges =
        source_ranges(service).map_err(|message| problem("InvalidSourceRanges", message)).ok()?;
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    let health_port = spec.health_check_node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0);
    if local && health_port.is_none() {
        problem(
            "NoHealthCheckNodePort",
            "externalTrafficPolicy Local without a healthCheckNodePort: every node gets traffic".to_owned(),
        );
    }
    let health = health_port.filter(|_| local).map(|port| HealthSpec {
        kind: HealthKind::Http { path: "/healthz".to_owned() },
        port: Some(port),
        interval: health::DEFAULT_INTERVAL,
        timeout: health::DEFAULT_TIMEOUT,
        rise: health::DEFAULT_RISE,
        fall: health::DEFAULT_FALL,
    });
    let services = ports
        .iter()
        .map(|(port, number, protocol, node_port)| Service {
            name: names::service_name(&key.namespace, &key.name, &names::port_label(port)),
            vip,
            port: *number,
            protocol: *protocol,
            mode: if local { Mode::Preserve } else { Mode::Snat },
            backends: backends
                .iter()
                .map(|addr| BackendSpec {
                    addr: SocketAddrV4::new(*addr, *node_port),
                    weight: DEFAULT_WEIGHT,
                })
                .collect(),
            health: health.clone(),
            source_ranges: source_ranges.clone(),
        })
        .collect();
    Some(services)
}

/// The Service's source ranges, host bits cleared as Kubernetes does.
fn source_ranges(service: &KubeService) -> Result<Vec<Ipv4Net>, String> {
    let from_spec =
        service.spec.as_ref().and_then(|s| s.load_balancer_source_ranges.clone()).unwrap_or_default();
    let texts: Vec<String> = if from_spec.is_empty() {
        let legacy = annotation(service, SOURCE_RANGES_ANNOTATION).unwrap_or_default();
        legacy.split(',').map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()).collect()
    } else {
        from_spec
    };
    let mut nets = Vec::new();
    for text in texts {
        let net: Ipv4Net = text.trim().parse().map_err(|_| {
            format!("source range {text:?} is not an IPv4 CIDR: the Service is not forwarded rather than opened to every source")
        })?;
        if !nets.contains(&net.trunc()) {
            nets.push(net.trunc());
        }
    }
    Ok(nets)
}
