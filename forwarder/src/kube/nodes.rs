//! Which nodes receive a LoadBalancer Service's traffic, and at which
//! address.
//!
//! A node is a backend when its `Ready` condition is `True`, it is not
//! being deleted (`metadata.deletionTimestamp` unset), and it does not
//! carry the label `node.kubernetes.io/exclude-from-external-load-balancers`
//! (whatever its value, as the Kubernetes service controller reads it). Its
//! address is the first IPv4 `status.addresses` entry of the configured
//! type; a node with none is reported and left out.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;

use super::problem::{Problem, Subject};

/// The label that keeps a node out of every external load balancer.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The addresses of the nodes that take traffic, sorted, each once.
pub fn backend_addresses(nodes: &[Node], address_type: &str, problems: &mut Vec<Problem>) -> Vec<Ipv4Addr> {
    let mut addrs: Vec<Ipv4Addr> = nodes
        .iter()
        .filter(|node| takes_traffic(node))
        .filter_map(|node| match address_of(node, address_type) {
            Ok(addr) => Some(addr),
            Err(message) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                problems.push(Problem { subject: Subject::Node { name }, reason: "NoNodeAddress", message });
                None
            }
        })
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

/// Ready, not being deleted, not excluded.
fn takes_traffic(node: &Node) -> bool {
    let metadata = &node.metadata;
    let excluded = metadata.labels.as_ref().is_some_and(|labels| labels.contains_key(EXCLUDE_LABEL));
    let ready = node
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    ready && metadata.deletion_timestamp.is_none() && !excluded
}

fn address_of(node: &Node, address_type: &str) -> Result<Ipv4Addr, String> {
    let addresses = node.status.as_ref().and_then(|status| status.addresses.as_deref()).unwrap_or_default();
    let of_type: Vec<&str> =
        addresses.iter().filter(|a| a.type_ == address_type).map(|a| a.address.as_str()).collect();
    if let Some(addr) = of_type.iter().find_map(|a| a.parse::<Ipv4Addr>().ok()) {
        return Ok(addr);
    }
    Err(match of_type.as_slice() {
        [] => format!("the node has no {address_type} address; it gets no traffic"),
        others => format!("the node's {address_type} addresses {others:?} are not IPv4; it gets no traffic"),
    })
}
