//! `forwarder kube run` against a fake API server (real HTTP on 127.0.0.1,
//! real list/watch, status subresource, Leases, Events), and the fake
//! proven with the real `kubectl`. Needs no root and no cluster.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use forwarder::config::ServiceFile;
use forwarder_tests::{
    forwarder_bin,
    kube_api::{FakeApi, store::Resource, wait_for},
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// A child process killed (and reaped) when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn recorded_cluster() -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/kube/cluster.json");
    let list: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    list["items"].as_array().unwrap().clone()
}

/// A fourth node, Ready, at 198.18.2.14 (a copy of node-a).
fn node_d() -> Value {
    let mut node = recorded_cluster().into_iter().find(|o| o["metadata"]["name"] == "node-a").unwrap();
    node["metadata"]["name"] = json!("node-d");
    node["status"]["addresses"][0]["address"] = json!("198.18.2.14");
    node
}

const HAND_WRITTEN: &str = "# kept by hand\n[[service]]\nname = \"legacy\"\nvip = \"198.51.100.10\"\nport = 443\n\
                            protocol = \"tcp\"\nbackends = [\"198.18.2.50:31443\"]\n\n[kube]\npools = [\"203.0.113.0/29\"]\n";

fn controller(api: &FakeApi, dir: &Path, identity: &str) -> Running {
    let kubeconfig = api.kubeconfig(dir);
    let log = std::fs::File::create(dir.join(format!("{identity}.log"))).unwrap();
    let child = Command::new(forwarder_bin())
        .args(["kube", "run", "--services"])
        .arg(dir.join("services.toml"))
        .args(["--lease-namespace", "kube-system", "--identity", identity, "--lease-duration", "3s"])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start forwarder kube run");
    Running(child)
}

fn file(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("services.toml")).unwrap_or_default()
}

fn ingress_ip(api: &FakeApi, namespace: &str, name: &str) -> Option<String> {
    let service = api.get(Resource::Services, namespace, name)?;
    service["status"]["loadBalancer"]["ingress"][0]["ip"].as_str().map(str::to_owned)
}

fn events_with(api: &FakeApi, reason: &str, name: &str) -> usize {
    api.list(Resource::Events)
        .iter()
        .filter(|e| e["reason"] == reason && e["regarding"]["name"] == name)
        .count()
}

#[test]
fn the_controller_follows_the_cluster() {
    let api = FakeApi::start(recorded_cluster());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("services.toml"), HAND_WRITTEN).unwrap();
    let _controller = controller(&api, dir.path(), "ctl-a");
    let log = || std::fs::read_to_string(dir.path().join("ctl-a.log")).unwrap_or_default();

    wait_for("the generated services", WAIT, || {
        file(dir.path()).contains("kube.kube-system.dns-external.dns-tcp")
    });
    let text = file(dir.path());
    let parsed = ServiceFile::parse(Path::new("services.toml"), &text).expect("a valid service file");
    assert!(text.starts_with("# kept by hand\n[[service]]\nname = \"legacy\""), "{text}");
    assert_eq!(parsed.services.len(), 5, "legacy + 2 ingress ports + 2 DNS ports:\n{text}");
    let ingress = &parsed.services[1];
    assert_eq!(ingress.name, "kube.ingress-nginx.ingress-nginx-controller.http");

    // The VIP goes to the status subresource, with an Event.
    let vip = ingress.vip.to_string();
    wait_for("the status", WAIT, || {
        ingress_ip(&api, "ingress-nginx", "ingress-nginx-controller").as_deref() == Some(vip.as_str())
    });
    wait_for("the IPAllocated event", WAIT, || {
        events_with(&api, "IPAllocated", "ingress-nginx-controller") == 1
    });
    let lease = api.get(Resource::Leases, "kube-system", "forwarder-lb-controller").expect("a Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "ctl-a");

    // A node joins: it becomes a backend within seconds.
    api.put(node_d());
    wait_for("node-d as a backend", WAIT, || file(dir.path()).contains("198.18.2.14:31380"));

    // The API server drops every watch and forgets its history: the
    // controller resumes, gets 410 Gone, lists again and sees what changed.
    api.cut_watches_and_compact();
    let mut game = recorded_cluster().into_iter().find(|o| o["metadata"]["name"] == "dns-external").unwrap();
    game["metadata"]["name"] = json!("game");
    game["metadata"]["namespace"] = json!("arcade");
    game["metadata"].as_object_mut().unwrap().remove("uid");
    game["spec"]["ports"] =
        json!([{ "name": "game", "nodePort": 30777, "port": 7777, "protocol": "UDP", "targetPort": 7777 }]);
    api.put(game);
    wait_for("the Service added while the watches were down", WAIT, || {
        file(dir.path()).contains("kube.arcade.game.game")
    });

    // A Service that goes is released from the file.
    api.delete(Resource::Services, "kube-system", "dns-external");
    wait_for("dns-external removed", WAIT, || !file(dir.path()).contains("dns-external"));

    // A problem becomes a Warning Event on the Service, once.
    let mut bad = recorded_cluster().into_iter().find(|o| o["metadata"]["name"] == "storefront").unwrap();
    bad["spec"].as_object_mut().unwrap().remove("loadBalancerClass");
    bad["metadata"]["annotations"] = json!({ "forwarder.dev/load-balancer-ip": "192.0.2.99" });
    api.put(bad);
    wait_for("the AllocationFailed event", WAIT, || events_with(&api, "AllocationFailed", "storefront") == 1);
    assert!(!file(dir.path()).contains("storefront"));
    let final_text = file(dir.path());
    ServiceFile::parse(Path::new("services.toml"), &final_text).expect("still valid");
    assert!(log().contains("leading"), "{}", log());
    assert!(!log().contains("reconcile failed"), "{}", log());
    // The nodes' watch at least resumed from a compacted version (the
    // Services' one may have seen the new Service before the cut); after
    // the 410 it lists again (once its backoff has passed).
    assert!(api.gone() >= 1, "a 410 Gone: {:?}", api.requests());
    wait_for("a list again after 410 Gone", WAIT, || {
        api.requests().iter().filter(|r| r.starts_with("GET /api/v1/") && !r.contains("watch=")).count() >= 3
    });
}

#[test]
fn only_the_lease_holder_writes() {
    // Long ago, whatever the clock says.
    let long_ago = "2020-01-01T00:00:00.000000Z";
    let held = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": { "name": "forwarder-lb-controller", "namespace": "kube-system" },
        "spec": { "holderIdentity": "someone-else", "leaseDurationSeconds": 3600,
                  "acquireTime": long_ago, "renewTime": utc_now(), "leaseTransitions": 4 }
    });
    let api = FakeApi::start([recorded_cluster(), vec![held.clone()]].concat());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("services.toml"), HAND_WRITTEN).unwrap();
    let _controller = controller(&api, dir.path(), "ctl-b");
    // It watches, but while the Lease is someone else's it writes nothing.
    wait_for("the controller's watches", WAIT, || {
        api.requests().iter().any(|r| r.contains("/nodes?") && r.contains("watch=true"))
    });
    wait_for("a look at the Lease", WAIT, || {
        api.requests().iter().any(|r| r.contains("/leases/forwarder-lb-controller"))
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(file(dir.path()), HAND_WRITTEN);
    assert!(!api.requests().iter().any(|r| r.starts_with("PATCH")), "{:?}", api.requests());
    // The holder stops renewing: once the lease expires it is taken over.
    let mut expired = api.get(Resource::Leases, "kube-system", "forwarder-lb-controller").unwrap();
    expired["spec"]["leaseDurationSeconds"] = json!(1);
    expired["spec"]["renewTime"] = json!(long_ago);
    api.put(expired);
    wait_for("the takeover", WAIT, || file(dir.path()).contains("kube.ingress-nginx"));
    let lease = api.get(Resource::Leases, "kube-system", "forwarder-lb-controller").unwrap();
    assert_eq!(
        (&lease["spec"]["holderIdentity"], &lease["spec"]["leaseTransitions"]),
        (&json!("ctl-b"), &json!(5))
    );
}

/// The current time as the API server writes a MicroTime.
fn utc_now() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%S.000000Z"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn kubectl(kubeconfig: &Path) -> Command {
    let mut command = Command::new("kubectl");
    command.arg("--kubeconfig").arg(kubeconfig).arg("--request-timeout=10s");
    command
}

/// The fake is the real protocol: kubectl lists and watches it.
#[test]
fn kubectl_lists_and_watches_the_fake() {
    let api = FakeApi::start(recorded_cluster());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig: PathBuf = api.kubeconfig(dir.path());
    let out = kubectl(&kubeconfig)
        .args(["get", "services,nodes", "-A", "-o", "json"])
        .output()
        .expect("run kubectl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON from kubectl");
    let kinds: Vec<&str> =
        list["items"].as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "Service").count(), 4, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "Node").count(), 3, "{kinds:?}");
    // What kubectl printed is what `forwarder kube render` reads.
    let json_path = dir.path().join("cluster.json");
    std::fs::write(&json_path, &out.stdout).unwrap();
    let render = Command::new(forwarder_bin())
        .args(["kube", "render", "--pool", "203.0.113.0/29", "--from"])
        .arg(&json_path)
        .output()
        .unwrap();
    assert!(render.status.success(), "{}", String::from_utf8_lossy(&render.stderr));
    let recorded = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/kube/cluster.services.toml"),
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&render.stdout), recorded);

    let mut watch = kubectl(&kubeconfig)
        .args(["get", "services", "-A", "--watch", "--output-watch-events", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl --watch");
    let mut stdout = watch.stdout.take().unwrap();
    let _watch = Running(watch);
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        })
    };
    wait_for("the initial objects", WAIT, || seen.lock().unwrap().contains("ingress-nginx-controller"));
    wait_for("kubectl's watch request", WAIT, || api.requests().iter().any(|r| r.contains("watch=true")));
    let mut changed = api.get(Resource::Services, "default", "kubernetes").unwrap();
    changed["metadata"]["labels"]["seen-by"] = json!("kubectl-watch");
    api.put(changed);
    wait_for("the MODIFIED event", WAIT, || {
        let text = seen.lock().unwrap();
        text.contains("\"MODIFIED\"") && text.contains("kubectl-watch")
    });
    drop(_watch);
    reader.join().unwrap();
}

/// A hand-edited file that is invalid is never written over; once fixed,
/// the controller carries on.
#[test]
fn an_invalid_service_file_is_left_alone() {
    let api = FakeApi::start(recorded_cluster());
    let dir = tempfile::tempdir().unwrap();
    let broken = HAND_WRITTEN.replace("port = 443", "port = 0");
    std::fs::write(dir.path().join("services.toml"), &broken).unwrap();
    let _controller = controller(&api, dir.path(), "ctl-c");
    let log = || std::fs::read_to_string(dir.path().join("ctl-c.log")).unwrap_or_default();
    wait_for("the refusal in the log", WAIT, || log().contains("port must be between 1 and 65535, not 0"));
    assert!(log().contains("services.toml:5:8: port must be between 1 and 65535, not 0"), "{}", log());
    assert_eq!(file(dir.path()), broken);
    assert!(!api.requests().iter().any(|r| r.starts_with("PATCH")), "no status before a valid file");
    std::fs::write(dir.path().join("services.toml"), HAND_WRITTEN).unwrap();
    wait_for("the generated services", WAIT, || file(dir.path()).contains("kube.ingress-nginx"));
    assert!(file(dir.path()).starts_with("# kept by hand\n"));
}

/// Two controllers on one Lease: one leads and writes, the other only
/// watches; when the leader dies (SIGKILL, no release) the other takes
/// over once the Lease expires.
#[test]
fn two_controllers_never_both_lead() {
    let api = FakeApi::start(recorded_cluster());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("services.toml"), HAND_WRITTEN).unwrap();
    let mut a = Some(controller(&api, dir.path(), "ctl-a"));
    let b = controller(&api, dir.path(), "ctl-b");
    let log = |id: &str| std::fs::read_to_string(dir.path().join(format!("{id}.log"))).unwrap_or_default();
    wait_for("the generated services", WAIT, || file(dir.path()).contains("kube.ingress-nginx"));
    let holder = || {
        let lease = api.get(Resource::Leases, "kube-system", "forwarder-lb-controller").unwrap();
        lease["spec"]["holderIdentity"].as_str().unwrap_or("").to_owned()
    };
    let leader = holder();
    let follower = if leader == "ctl-a" { "ctl-b" } else { "ctl-a" };
    // Several renewals later, still one leader, and the other never wrote.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(holder(), leader);
    assert!(log(&leader).contains("leading"), "{}", log(&leader));
    assert!(!log(follower).contains("leading") && !log(follower).contains("written"), "{}", log(follower));
    // The leader dies without releasing the Lease.
    if leader == "ctl-a" {
        drop(a.take());
    } else {
        drop(b);
    }
    api.put(node_d());
    wait_for("the follower's takeover", WAIT, || file(dir.path()).contains("198.18.2.14:31380"));
    assert_eq!(holder(), follower);
    assert!(log(follower).contains("leading"), "{}", log(follower));
    drop(a);
}
