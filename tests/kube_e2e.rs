//! End to end through the cluster: a LoadBalancer Service that appears in
//! a (fake) API server becomes traffic through its VIP in the namespace
//! lab. `forwarder kube run` watches the fake API and writes the lab's
//! service file; the lab's daemon reloads it; a client reaches nginx on
//! the nodes through the VIP the Service's status shows. Needs root.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::Command,
    time::Duration,
};

use forwarder_tests::{
    client::{http_get, udp_ask},
    forwarder_bin,
    kube_api::{FakeApi, store::Resource, wait_for},
    lab::{CLIENT, FORWARDER_LAN_SIDE, Lab, node_addr},
    netns::Process,
    require_root,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

fn recorded(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/kube/cluster.json");
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    list["items"].as_array().unwrap().iter().find(|o| o["metadata"]["name"] == name).unwrap().clone()
}

/// The lab's node `i` as a Ready Kubernetes Node.
fn node(i: usize) -> Value {
    let mut node = recorded("node-a");
    node["metadata"]["name"] = json!(format!("lab-node{}", i + 1));
    node["metadata"].as_object_mut().unwrap().remove("uid");
    node["status"]["addresses"] = json!([
        { "type": "InternalIP", "address": node_addr(i).to_string() },
        { "type": "Hostname", "address": format!("lab-node{}", i + 1) },
    ]);
    node
}

/// A Cluster-policy LoadBalancer Service with the lab's NodePorts: HTTP on
/// 80 (30080) and UDP on 53 (30053), open to the lab client's network.
fn service() -> Value {
    let mut service = recorded("dns-external");
    service["metadata"]["name"] = json!("web");
    service["metadata"]["namespace"] = json!("default");
    service["metadata"].as_object_mut().unwrap().remove("uid");
    service["spec"]["ports"] = json!([
        { "name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080 },
        { "name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53, "nodePort": 30053 },
    ]);
    service["spec"]["loadBalancerSourceRanges"] = json!(["10.0.1.0/24"]);
    service["status"] = json!({ "loadBalancer": {} });
    service
}

#[test]
fn a_service_in_the_cluster_becomes_traffic_through_its_vip() {
    require_root();
    let mut lab = Lab::new("fwk", 2).expect("lab");
    lab.start_servers().expect("node servers");
    let path = lab.write_services("[kube]\npools = [\"10.0.100.8/29\"]\n").unwrap();
    let mut forwarder = lab.start_forwarder(&path, &[]).unwrap();

    let api = FakeApi::start(vec![node(0), node(1)]);
    let dir = tempfile::tempdir().unwrap();
    // The fake listens on this process's loopback: the controller runs
    // beside it; only the file it writes is shared with the lab's daemon.
    let mut command = Command::new(forwarder_bin());
    command
        .args(["kube", "run", "--services"])
        .arg(&path)
        .args(["--lease-namespace", "kube-system", "--identity", "lab", "--lease-duration", "3s"])
        .env("KUBECONFIG", api.kubeconfig(dir.path()))
        .env("RUST_LOG", "info");
    let controller = Process::spawn("forwarder kube run", command).expect("start forwarder kube run");

    api.put(service());
    wait_for("the VIP in the Service's status", WAIT, || {
        api.get(Resource::Services, "default", "web")
            .is_some_and(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"].is_string())
    });
    let status = api.get(Resource::Services, "default", "web").unwrap();
    let vip: Ipv4Addr =
        status["status"]["loadBalancer"]["ingress"][0]["ip"].as_str().unwrap().parse().unwrap();
    assert_eq!(vip, Ipv4Addr::new(10, 0, 100, 9), "the pool's first usable address");
    forwarder
        .wait_for("reloaded", 1, WAIT)
        .unwrap_or_else(|err| panic!("{err}\ncontroller:\n{}", controller.output()));

    let answers: Vec<_> =
        lab.client.enter(|| (0..20).map(|_| http_get(SocketAddrV4::new(vip, 80))).collect());
    let nodes: std::collections::BTreeSet<String> =
        answers.iter().map(|a| a.as_ref().expect("HTTP through the VIP").node.clone()).collect();
    assert_eq!(nodes.len(), 2, "both Ready nodes serve: {nodes:?}");
    for answer in answers.iter().flatten() {
        assert_eq!(*answer.client.ip(), FORWARDER_LAN_SIDE, "externalTrafficPolicy Cluster: snat");
    }
    let udp = lab.client.enter(|| udp_ask(SocketAddrV4::new(vip, 53))).expect("UDP through the VIP");
    assert_ne!(*udp.client.ip(), CLIENT);

    // The Service goes: its services leave the file and the VIP stops.
    api.delete(Resource::Services, "default", "web");
    forwarder.wait_for("reloaded", 2, WAIT).unwrap();
    assert!(lab.client.enter(|| http_get(SocketAddrV4::new(vip, 80))).is_err(), "no longer forwarded");
    lab.stop_server(0).unwrap();
    forwarder.stop().unwrap();
}
