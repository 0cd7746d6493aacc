//! `status.loadBalancer.ingress` of the Services: what it should be, and
//! the patch of the status subresource that makes it so.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service as KubeService;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::{
    config::KubeSettings,
    kube::{ServiceKey, translate::Translation, translate::key_of},
};

/// A Service whose status must change to `ips` (empty: pending).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    pub key: ServiceKey,
    pub ips: Vec<Ipv4Addr>,
}

/// The status changes that bring `services` in line with `translation`.
///
/// A served Service shows its VIP, or nothing while it has none. A Service
/// this controller stopped serving (its type changed) loses the addresses
/// of our pools it still shows; Services of other classes are never
/// touched.
#[must_use]
pub fn changes(
    services: &[KubeService],
    translation: &Translation,
    settings: &KubeSettings,
) -> Vec<StatusChange> {
    let mut changes = Vec::new();
    for service in services {
        let key = key_of(service);
        let current = ingress_ips(service);
        let desired: Vec<Ipv4Addr> = if translation.served.contains(&key) {
            translation.vips.get(&key).copied().into_iter().collect()
        } else {
            let class = service.spec.as_ref().and_then(|s| s.load_balancer_class.as_deref());
            let ours = class.is_none_or(|c| c == settings.class);
            let from_our_pools = current
                .iter()
                .filter_map(|ip| ip.parse::<Ipv4Addr>().ok())
                .any(|ip| settings.pools.iter().any(|pool| pool.contains(&ip)));
            if !(ours && from_our_pools) {
                continue;
            }
            Vec::new()
        };
        let desired_text: Vec<String> = desired.iter().map(ToString::to_string).collect();
        if current != desired_text {
            changes.push(StatusChange { key, ips: desired });
        }
    }
    changes.sort_by(|a, b| a.key.cmp(&b.key));
    changes
}

/// The addresses (or host names) the Service's status shows.
fn ingress_ips(service: &KubeService) -> Vec<String> {
    let ingress =
        service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    ingress.into_iter().flatten().filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone())).collect()
}

/// Patches the Service's status subresource (a JSON merge patch, which
/// replaces the ingress list as a whole).
pub async fn write(client: &Client, change: &StatusChange) -> Result<(), kube::Error> {
    let StatusChange { key, ips } = change;
    let api: Api<KubeService> = Api::namespaced(client.clone(), &key.namespace);
    let ingress: Vec<_> = ips.iter().map(|ip| json!({ "ip": ip.to_string(), "ipMode": "VIP" })).collect();
    let patch = if ingress.is_empty() {
        json!({ "status": { "loadBalancer": { "ingress": null } } })
    } else {
        json!({ "status": { "loadBalancer": { "ingress": ingress } } })
    };
    api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::kube::translate::translate;

    fn service(name: &str, patch: serde_json::Value) -> KubeService {
        let mut value = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": { "name": name, "namespace": "default", "uid": format!("uid-{name}"),
                          "creationTimestamp": "2026-11-20T08:00:00Z" },
            "spec": { "type": "LoadBalancer", "externalTrafficPolicy": "Cluster",
                      "ports": [{ "port": 80, "protocol": "TCP", "nodePort": 30080, "targetPort": 80 }] },
            "status": { "loadBalancer": {} }
        });
        for (key, part) in patch.as_object().unwrap() {
            for (field, v) in part.as_object().unwrap() {
                value[key][field] = v.clone();
            }
        }
        serde_json::from_value(value).unwrap()
    }

    fn ingress(ip: &str) -> serde_json::Value {
        json!({ "status": { "loadBalancer": { "ingress": [{ "ip": ip, "ipMode": "VIP" }] } } })
    }

    #[test]
    fn statuses_follow_the_translation() {
        let settings =
            KubeSettings { pools: vec!["203.0.113.0/29".parse().unwrap()], ..KubeSettings::default() };
        let services = vec![
            // Pending: gets its VIP.
            service("new", json!({})),
            // Already right: untouched.
            service("kept", ingress("203.0.113.5")),
            // No longer a LoadBalancer, still showing our address: cleared.
            service(
                "was-lb",
                json!({ "spec": { "type": "ClusterIP" }, "status": ingress("203.0.113.6")["status"] }),
            ),
            // Another implementation's: never touched.
            service(
                "theirs",
                json!({ "spec": { "loadBalancerClass": "metallb.io/metallb" }, "status": ingress("10.9.9.9")["status"] }),
            ),
            // Asks for an address outside the pools: pending.
            service(
                "refused",
                json!({ "spec": { "loadBalancerIP": "192.0.2.1" }, "status": ingress("203.0.113.7")["status"] }),
            ),
        ];
        let cluster = crate::kube::input::Cluster { services: services.clone(), nodes: vec![] };
        let translation = translate(&cluster, &settings, &[]);
        let key = |name: &str| ServiceKey { namespace: "default".to_owned(), name: name.to_owned() };
        assert_eq!(
            changes(&services, &translation, &settings),
            [
                StatusChange { key: key("new"), ips: vec!["203.0.113.1".parse().unwrap()] },
                StatusChange { key: key("refused"), ips: vec![] },
                StatusChange { key: key("was-lb"), ips: vec![] },
            ]
        );
    }
}
