//! Which Services and nodes are served, and how ports become services.

use serde_json::json;

use super::{check, node, service, settings, with};

const POOL: &str = "203.0.113.0/28";

#[test]
fn services_are_chosen_by_type_and_class() {
    let web = || service("default", "web", 1, &[("http", 80, "TCP", 30080)]);
    let nodes = || vec![node("a", "198.18.2.11")];
    let items = |extra: Vec<serde_json::Value>| [nodes(), extra].concat();
    let ours = "kube.default.web.http 203.0.113.1:80/tcp snat -> 198.18.2.11:30080";
    check(vec![
        ("no class is ours", items(vec![web()]), settings(&[POOL]), vec![ours]),
        (
            "our class",
            items(vec![with(web(), json!({ "spec": { "loadBalancerClass": "forwarder.dev/lb" } }))]),
            settings(&[POOL]),
            vec![ours],
        ),
        (
            "another class is left alone",
            items(vec![with(web(), json!({ "spec": { "loadBalancerClass": "metallb.io/metallb" } }))]),
            settings(&[POOL]),
            vec![],
        ),
        (
            "a configured class",
            items(vec![
                with(web(), json!({ "spec": { "loadBalancerClass": "example.com/edge" } })),
                with(
                    service("default", "other", 2, &[("", 81, "TCP", 30081)]),
                    json!({ "spec": { "loadBalancerClass": "forwarder.dev/lb" } }),
                ),
            ]),
            crate::config::KubeSettings { class: "example.com/edge".to_owned(), ..settings(&[POOL]) },
            vec![ours],
        ),
        (
            "NodePort and ClusterIP Services are not load balancers",
            items(vec![
                with(web(), json!({ "spec": { "type": "NodePort" } })),
                with(
                    service("default", "db", 2, &[("", 5432, "TCP", 0)]),
                    json!({ "spec": { "type": "ClusterIP" } }),
                ),
            ]),
            settings(&[POOL]),
            vec![],
        ),
        (
            "a Service being deleted is released",
            items(vec![with(
                web(),
                json!({ "metadata": { "deletionTimestamp": "2026-12-02T05:40:00Z", "finalizers": ["service.kubernetes.io/load-balancer-cleanup"] } }),
            )]),
            settings(&[POOL]),
            vec![],
        ),
    ]);
}

#[test]
fn only_ready_eligible_nodes_are_backends() {
    let web = || service("default", "web", 1, &[("", 80, "TCP", 30080)]);
    let not_ready = with(
        node("b", "198.18.2.12"),
        json!({ "status": { "conditions": [{ "type": "Ready", "status": "Unknown", "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.", "lastHeartbeatTime": "2026-12-02T04:58:30Z",
            "lastTransitionTime": "2026-12-02T05:02:11Z" }] } }),
    );
    let ready_false = with(
        node("e", "198.18.2.15"),
        json!({ "status": { "conditions": [{ "type": "Ready", "status": "False", "reason": "KubeletNotReady",
            "lastHeartbeatTime": "2026-12-02T05:30:00Z", "lastTransitionTime": "2026-12-02T05:29:00Z" }] } }),
    );
    let excluded = with(
        node("c", "198.18.2.13"),
        json!({ "metadata": { "labels": { "node.kubernetes.io/exclude-from-external-load-balancers": "" } } }),
    );
    let deleting = with(
        node("d", "198.18.2.14"),
        json!({ "metadata": { "deletionTimestamp": "2026-12-02T05:40:00Z" } }),
    );
    let no_address = with(
        node("f", "198.18.2.16"),
        json!({ "status": { "addresses": [{ "address": "f", "type": "Hostname" }] } }),
    );
    let all = vec![
        web(),
        node("a", "198.18.2.11"),
        not_ready,
        ready_false,
        excluded,
        deleting,
        no_address,
        node("g", "198.18.2.17"),
    ];
    check(vec![
        (
            "NotReady, Unknown, excluded, deleting and address-less nodes are left out",
            all.clone(),
            settings(&[POOL]),
            vec![
                "kube.default.web.80 203.0.113.1:80/tcp snat -> 198.18.2.11:30080,198.18.2.17:30080",
                "! Node f: NoNodeAddress",
            ],
        ),
        (
            "the configured address type",
            vec![web(), node("a", "198.18.2.11"), node("g", "198.18.2.17")],
            crate::config::KubeSettings { address_type: "ExternalIP".to_owned(), ..settings(&[POOL]) },
            vec!["kube.default.web.80 203.0.113.1:80/tcp snat -> 192.0.2.11:30080,192.0.2.17:30080"],
        ),
        (
            "a Hostname address is not an IPv4 address",
            vec![web(), node("a", "198.18.2.11")],
            crate::config::KubeSettings { address_type: "Hostname".to_owned(), ..settings(&[POOL]) },
            vec!["! Service default/web: NoBackends", "! Node a: NoNodeAddress"],
        ),
        ("no node at all", vec![web()], settings(&[POOL]), vec!["! Service default/web: NoBackends"]),
    ]);
}

#[test]
fn policy_ports_and_source_ranges_shape_each_service() {
    let nodes = || vec![node("a", "198.18.2.11"), node("b", "198.18.2.12")];
    let local = with(
        service("ingress", "nginx", 1, &[("http", 80, "TCP", 31380), ("https", 443, "TCP", 31443)]),
        json!({ "spec": { "externalTrafficPolicy": "Local", "healthCheckNodePort": 32315 } }),
    );
    let dns = service("kube-system", "dns", 2, &[("dns", 53, "UDP", 30053), ("dns-tcp", 53, "TCP", 30054)]);
    let sctp = service("telco", "sig", 3, &[("sig", 3868, "SCTP", 30868), ("diameter", 3869, "TCP", 30869)]);
    let items = |extra: Vec<serde_json::Value>| [nodes(), extra].concat();
    check(vec![
        (
            "Local is preserve with a health check, Cluster is snat",
            items(vec![local.clone(), dns.clone()]),
            settings(&[POOL]),
            vec![
                "kube.ingress.nginx.http 203.0.113.1:80/tcp preserve -> 198.18.2.11:31380,198.18.2.12:31380 health Http { path: \"/healthz\" }:32315",
                "kube.ingress.nginx.https 203.0.113.1:443/tcp preserve -> 198.18.2.11:31443,198.18.2.12:31443 health Http { path: \"/healthz\" }:32315",
                "kube.kube-system.dns.dns 203.0.113.2:53/udp snat -> 198.18.2.11:30053,198.18.2.12:30053",
                "kube.kube-system.dns.dns-tcp 203.0.113.2:53/tcp snat -> 198.18.2.11:30054,198.18.2.12:30054",
            ],
        ),
        (
            "Local without a healthCheckNodePort is preserve without a check, and said",
            items(vec![with(local, json!({ "spec": { "healthCheckNodePort": null } }))]),
            settings(&[POOL]),
            vec![
                "kube.ingress.nginx.http 203.0.113.1:80/tcp preserve -> 198.18.2.11:31380,198.18.2.12:31380",
                "kube.ingress.nginx.https 203.0.113.1:443/tcp preserve -> 198.18.2.11:31443,198.18.2.12:31443",
                "! Service ingress/nginx: NoHealthCheckNodePort",
            ],
        ),
        (
            "SCTP ports are skipped, the others forwarded",
            items(vec![sctp]),
            settings(&[POOL]),
            vec![
                "kube.telco.sig.diameter 203.0.113.1:3869/tcp snat -> 198.18.2.11:30869,198.18.2.12:30869",
                "! Service telco/sig: UnsupportedProtocol",
            ],
        ),
        (
            "a port without a nodePort fails the Service",
            items(vec![with(
                service("default", "raw", 4, &[("", 80, "TCP", 0)]),
                json!({ "spec": { "allocateLoadBalancerNodePorts": false } }),
            )]),
            settings(&[POOL]),
            vec!["! Service default/raw: NoNodePort"],
        ),
        (
            "source ranges, host bits cleared, from the spec or the legacy annotation",
            items(vec![
                with(
                    dns.clone(),
                    json!({ "spec": { "loadBalancerSourceRanges": ["198.18.0.0/16", "192.0.2.9/24"] } }),
                ),
                with(
                    service("default", "web", 3, &[("", 80, "TCP", 30080)]),
                    json!({ "metadata": { "annotations": { "service.beta.kubernetes.io/load-balancer-source-ranges": "10.0.0.0/8, 172.16.0.0/12" } } }),
                ),
            ]),
            settings(&[POOL]),
            vec![
                "kube.default.web.80 203.0.113.2:80/tcp snat -> 198.18.2.11:30080,198.18.2.12:30080 from 10.0.0.0/8,172.16.0.0/12",
                "kube.kube-system.dns.dns 203.0.113.1:53/udp snat -> 198.18.2.11:30053,198.18.2.12:30053 from 198.18.0.0/16,192.0.2.0/24",
                "kube.kube-system.dns.dns-tcp 203.0.113.1:53/tcp snat -> 198.18.2.11:30054,198.18.2.12:30054 from 198.18.0.0/16,192.0.2.0/24",
            ],
        ),
        (
            "an IPv6 source range fails closed",
            items(vec![with(dns, json!({ "spec": { "loadBalancerSourceRanges": ["2001:db8::/32"] } }))]),
            settings(&[POOL]),
            vec!["! Service kube-system/dns: InvalidSourceRanges"],
        ),
        (
            "long names are truncated with a hash",
            items(vec![service(
                "team-payments-production-eu-west",
                "checkout-frontend-public",
                5,
                &[("https", 443, "TCP", 30443)],
            )]),
            settings(&[POOL]),
            vec![
                format!(
                    "{} 203.0.113.1:443/tcp snat -> 198.18.2.11:30443,198.18.2.12:30443",
                    crate::kube::names::service_name(
                        "team-payments-production-eu-west",
                        "checkout-frontend-public",
                        "https"
                    )
                )
                .as_str(),
            ],
        ),
    ]);
}
