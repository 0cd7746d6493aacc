//! The translation as a table of small cases, in Kubernetes JSON as the
//! API server (and `kubectl get -o json`) returns it.

use serde_json::{Value, json};

use super::{input::Cluster, translate::translate};
use crate::config::{KubeSettings, Service, ServiceFile};

mod pools;
mod rules;

/// A Ready node with an InternalIP (and an ExternalIP one further on).
fn node(name: &str, internal: &str) -> Value {
    let last = internal.rsplit('.').next().unwrap_or("0");
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": format!("00000000-0000-4000-8000-0000000000{last}"),
            "resourceVersion": "4711",
            "creationTimestamp": "2026-11-02T09:14:07Z",
            "labels": { "kubernetes.io/hostname": name, "kubernetes.io/os": "linux" }
        },
        "spec": { "podCIDR": format!("10.244.{last}.0/24") },
        "status": {
            "addresses": [
                { "address": internal, "type": "InternalIP" },
                { "address": format!("192.0.2.{last}"), "type": "ExternalIP" },
                { "address": name, "type": "Hostname" }
            ],
            "conditions": [
                { "type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
                  "lastHeartbeatTime": "2026-12-02T05:31:12Z", "lastTransitionTime": "2026-11-02T09:14:07Z" },
                { "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status",
                  "lastHeartbeatTime": "2026-12-02T05:31:12Z", "lastTransitionTime": "2026-11-02T09:15:41Z" }
            ],
            "nodeInfo": { "kubeletVersion": "v1.32.4", "kernelVersion": "6.12.57+deb13-amd64" }
        }
    })
}

/// A LoadBalancer Service (Cluster policy) with `ports` as
/// `(name, port, protocol, nodePort)`, created `minute` minutes after 8:00.
fn service(namespace: &str, name: &str, minute: u32, ports: &[(&str, i32, &str, i32)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port_name, port, protocol, node_port)| {
            let mut port =
                json!({ "port": port, "protocol": protocol, "nodePort": node_port, "targetPort": port });
            if !port_name.is_empty() {
                port["name"] = json!(port_name);
            }
            port
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("11111111-0000-4000-8000-{minute:012}"),
            "resourceVersion": "9001",
            "creationTimestamp": format!("2026-11-20T08:{minute:02}:00Z")
        },
        "spec": {
            "type": "LoadBalancer",
            "allocateLoadBalancerNodePorts": true,
            "clusterIP": format!("10.96.0.{}", minute + 10),
            "clusterIPs": [format!("10.96.0.{}", minute + 10)],
            "externalTrafficPolicy": "Cluster",
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": ports,
            "selector": { "app": name },
            "sessionAffinity": "None"
        },
        "status": { "loadBalancer": {} }
    })
}

/// `value` with the JSON merge patch `patch` applied (RFC 7386).
fn with(mut value: Value, patch: Value) -> Value {
    merge(&mut value, patch);
    value
}

fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(&key);
                } else {
                    merge(target.entry(key).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch,
    }
}

fn settings(pools: &[&str]) -> KubeSettings {
    KubeSettings { pools: pools.iter().map(|p| p.parse().unwrap()).collect(), ..KubeSettings::default() }
}

/// kubectl's `List` of `items`.
fn list(items: &[Value]) -> Cluster {
    let text =
        json!({ "apiVersion": "v1", "kind": "List", "metadata": { "resourceVersion": "" }, "items": items });
    Cluster::from_json(&text.to_string()).expect("valid objects")
}

/// One line per generated service, then one per problem, for the tables.
fn summary(items: &[Value], settings: &KubeSettings, hand_written: &[Service]) -> Vec<String> {
    let translation = translate(&list(items), settings, hand_written);
    let mut lines: Vec<String> = translation.services.iter().map(describe).collect();
    lines.extend(translation.problems.iter().map(|p| format!("! {}: {}", p.subject, p.reason)));
    lines
}

fn describe(service: &Service) -> String {
    let Service { name, vip, port, protocol, mode, backends, health, source_ranges } = service;
    let backends: Vec<String> = backends.iter().map(|b| b.addr.to_string()).collect();
    let mut line = format!("{name} {vip}:{port}/{protocol} {mode} -> {}", backends.join(","));
    if let Some(health) = health {
        line += &format!(" health {:?}:{:?}", health.kind, health.port.unwrap_or(0));
    }
    if !source_ranges.is_empty() {
        let ranges: Vec<String> = source_ranges.iter().map(ToString::to_string).collect();
        line += &format!(" from {}", ranges.join(","));
    }
    line
}

/// Runs named cases, reporting every failing one at once.
fn check(cases: Vec<(&str, Vec<Value>, KubeSettings, Vec<&str>)>) {
    let mut failed = Vec::new();
    for (name, items, settings, want) in cases {
        let got = summary(&items, &settings, &[]);
        if got != want {
            failed.push(format!("case {name:?}:\n  want {want:#?}\n  got  {got:#?}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// A hand-written file around the generated part, parsed.
fn hand_written(text: &str) -> Vec<Service> {
    ServiceFile::parse("hand.toml".as_ref(), text).expect("valid hand-written file").services
}
