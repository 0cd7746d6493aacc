//! VIPs: pools, requests, sharing, stability, hand-written services.

use serde_json::{Value, json};

use super::{check, hand_written, node, service, settings, summary, with};

fn web(name: &str, minute: u32, port: i32) -> Value {
    service("default", name, minute, &[("", port, "TCP", 30000 + port)])
}

fn annotated(value: Value, annotations: Value) -> Value {
    with(value, json!({ "metadata": { "annotations": annotations } }))
}

fn vips(items: &[Value], pools: &[&str]) -> Vec<String> {
    let items = [vec![node("a", "198.18.2.11")], items.to_vec()].concat();
    summary(&items, &settings(pools), &[])
        .iter()
        .map(|line| line.split(" -> ").next().unwrap_or(line).to_owned())
        .collect()
}

#[test]
fn addresses_come_from_the_pools_in_order() {
    let three = [web("a", 1, 80), web("b", 2, 80), web("c", 3, 80)];
    assert_eq!(
        vips(&three, &["203.0.113.0/30", "198.51.100.7/32"]),
        [
            "kube.default.a.80 203.0.113.1:80/tcp snat",
            "kube.default.b.80 203.0.113.2:80/tcp snat",
            "kube.default.c.80 198.51.100.7:80/tcp snat",
        ],
        "network and broadcast skipped below /31, a /32 is its address"
    );
    assert_eq!(
        vips(&three, &["203.0.113.0/31"]),
        [
            "kube.default.a.80 203.0.113.0:80/tcp snat",
            "kube.default.b.80 203.0.113.1:80/tcp snat",
            "! Service default/c: AllocationFailed"
        ],
        "a /31 has two addresses; the youngest Service is the one left without"
    );
    // The oldest Service wins whatever the order of the list.
    let reversed: Vec<Value> = three.iter().rev().cloned().collect();
    assert_eq!(vips(&reversed, &["203.0.113.0/31"]), vips(&three, &["203.0.113.0/31"]));
}

#[test]
fn requested_and_current_addresses() {
    let pools = ["203.0.113.0/28"];
    let ingress =
        |ip: &str| json!({ "status": { "loadBalancer": { "ingress": [{ "ip": ip, "ipMode": "VIP" }] } } });
    let ask = |value: Value, ip: &str| annotated(value, json!({ "forwarder.dev/load-balancer-ip": ip }));
    let cases = [
        (
            "the annotation and spec.loadBalancerIP ask for an address",
            vec![
                ask(web("a", 1, 80), "203.0.113.9"),
                with(web("b", 2, 80), json!({ "spec": { "loadBalancerIP": "203.0.113.7" } })),
            ],
            vec!["kube.default.a.80 203.0.113.9:80/tcp snat", "kube.default.b.80 203.0.113.7:80/tcp snat"],
        ),
        (
            "an address outside the pools is an error for that Service only",
            vec![ask(web("a", 1, 80), "192.0.2.1"), web("b", 2, 80), ask(web("c", 3, 80), "203.0.113.15")],
            vec![
                "kube.default.b.80 203.0.113.1:80/tcp snat",
                "! Service default/a: AllocationFailed",
                "! Service default/c: AllocationFailed",
            ],
        ),
        (
            "a request beats an older Service's current address",
            vec![with(web("a", 1, 80), ingress("203.0.113.5")), ask(web("b", 2, 80), "203.0.113.5")],
            vec!["kube.default.a.80 203.0.113.1:80/tcp snat", "kube.default.b.80 203.0.113.5:80/tcp snat"],
        ),
        (
            "a Service keeps its current address; one outside the pools is replaced",
            vec![
                with(web("a", 1, 80), ingress("203.0.113.12")),
                web("b", 2, 80),
                with(web("c", 3, 80), ingress("192.0.2.50")),
            ],
            vec![
                "kube.default.a.80 203.0.113.12:80/tcp snat",
                "kube.default.b.80 203.0.113.1:80/tcp snat",
                "kube.default.c.80 203.0.113.2:80/tcp snat",
            ],
        ),
        (
            "two Services with one key share a VIP on different ports",
            vec![
                annotated(web("a", 1, 80), json!({ "forwarder.dev/allow-shared-ip": "front" })),
                annotated(web("b", 2, 443), json!({ "forwarder.dev/allow-shared-ip": "front" })),
                annotated(web("c", 3, 80), json!({ "forwarder.dev/allow-shared-ip": "front" })),
                annotated(web("d", 4, 8080), json!({ "forwarder.dev/allow-shared-ip": "back" })),
            ],
            vec![
                "kube.default.a.80 203.0.113.1:80/tcp snat",
                "kube.default.b.443 203.0.113.1:443/tcp snat",
                "kube.default.c.80 203.0.113.2:80/tcp snat",
                "kube.default.d.8080 203.0.113.3:8080/tcp snat",
            ],
        ),
        (
            "asking for a VIP in use needs the same sharing key and other ports",
            vec![
                ask(
                    annotated(web("a", 1, 80), json!({ "forwarder.dev/allow-shared-ip": "k" })),
                    "203.0.113.4",
                ),
                ask(
                    annotated(web("b", 2, 443), json!({ "forwarder.dev/allow-shared-ip": "k" })),
                    "203.0.113.4",
                ),
                ask(
                    annotated(web("c", 3, 80), json!({ "forwarder.dev/allow-shared-ip": "k" })),
                    "203.0.113.4",
                ),
                ask(web("d", 4, 8443), "203.0.113.4"),
            ],
            vec![
                "kube.default.a.80 203.0.113.4:80/tcp snat",
                "kube.default.b.443 203.0.113.4:443/tcp snat",
                "! Service default/c: AllocationFailed",
                "! Service default/d: AllocationFailed",
            ],
        ),
    ];
    let nodes = vec![node("a", "198.18.2.11")];
    let mut table = Vec::new();
    for (name, items, want) in cases {
        let full: Vec<String> = want.iter().map(|w| full_line(w)).collect();
        table.push((name, [nodes.clone(), items].concat(), settings(&pools), full));
    }
    let table: Vec<_> = table
        .iter()
        .map(|(n, i, s, w)| (*n, i.clone(), s.clone(), w.iter().map(String::as_str).collect()))
        .collect();
    check(table);
}

/// A short expectation with its backend (node a, NodePort 30000 + port).
fn full_line(short: &str) -> String {
    if short.starts_with('!') {
        return short.to_owned();
    }
    let port: u16 =
        short.rsplit(':').next().and_then(|p| p.split('/').next()).and_then(|p| p.parse().ok()).unwrap();
    format!("{short} -> 198.18.2.11:{}", 30000 + u32::from(port))
}

#[test]
fn hand_written_services_are_avoided_and_conflicts_reported() {
    let file = hand_written(
        "[[service]]\nname = \"legacy\"\nvip = \"203.0.113.1\"\nport = 80\nprotocol = \"tcp\"\nbackends = [\"198.18.2.50:30999\"]\n\n\
         [[service]]\nname = \"kube.default.gone.80\"\nvip = \"203.0.113.2\"\nport = 80\nprotocol = \"tcp\"\nbackends = [\"198.18.2.50:30998\"]\n",
    );
    let items = vec![
        node("a", "198.18.2.11"),
        annotated(web("a", 1, 80), json!({ "forwarder.dev/load-balancer-ip": "203.0.113.1" })),
        annotated(web("b", 2, 443), json!({ "forwarder.dev/load-balancer-ip": "203.0.113.1" })),
        web("c", 3, 80),
    ];
    let translation = super::translate(&super::list(&items), &settings(&["203.0.113.0/29"]), &file);
    let lines: Vec<String> = translation.services.iter().map(super::describe).collect();
    assert_eq!(
        lines,
        [
            "kube.default.b.443 203.0.113.1:443/tcp snat -> 198.18.2.11:30443",
            // .1 is the hand-written service's; .2 was a stale generated one, free again.
            "kube.default.c.80 203.0.113.2:80/tcp snat -> 198.18.2.11:30080",
        ]
    );
    let [problem] = translation.problems.as_slice() else { panic!("{:?}", translation.problems) };
    assert_eq!(
        problem.to_string(),
        "Service default/a: AllocationFailed: requested address 203.0.113.1: \
         203.0.113.1:80/tcp is already used by the hand-written service \"legacy\""
    );
}
