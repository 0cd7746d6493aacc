//! Live operations against a running daemon in the namespace lab: CLI
//! changes under load, reloads, health checks, restarts, bad input,
//! statistics and metrics, VIP announcement, `forwarder down`. Needs root.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use forwarder::{
    config::{BackendSpec, ServiceFile},
    report::{Flow, Health, ServiceView, Stats},
};
use forwarder_tests::{
    client::{HttpConnection, Load, http_get},
    lab::{CLIENT, CLIENT_IFACE, FORWARDER_LAN_SIDE, LAN_IFACE, Lab, VIP, node_addr, service_file},
    require_root,
};

const WEB: SocketAddrV4 = SocketAddrV4::new(VIP, 80);
const PAUSE: Duration = Duration::from_millis(5);

fn lab_with_servers(nodes: usize) -> Lab {
    require_root();
    let mut lab = Lab::new("fwl", nodes).expect("lab");
    lab.start_servers().expect("node servers");
    lab
}

fn node_http(i: usize) -> String {
    format!("{}:30080", node_addr(i))
}

fn list(lab: &Lab) -> Vec<ServiceView> {
    serde_json::from_str(&lab.cli_ok(&["service", "list", "--json"])).expect("service list JSON")
}

fn open_connections(lab: &Lab, n: usize) -> Vec<HttpConnection> {
    lab.client.enter(|| (0..n).map(|_| HttpConnection::open(WEB).unwrap()).collect())
}

fn nodes_of(connections: &mut [HttpConnection]) -> Vec<String> {
    connections.iter_mut().map(|c| c.get().expect("request on an open connection").node).collect()
}

/// Backends added, drained and removed with the CLI while a client keeps
/// opening connections: new connections follow each change at once, open
/// ones keep their node, no request fails, and the file records it all.
#[test]
fn cli_changes_apply_under_load_without_breaking_connections() {
    let lab = lab_with_servers(3);
    let path = lab.write_services(&service_file("snat", &[0, 1], "")).unwrap();
    let forwarder = lab.start_forwarder(&path, &[]).unwrap();
    let mut kept = open_connections(&lab, 12);
    let before = nodes_of(&mut kept);
    assert!(before.contains(&"node1".to_owned()), "{before:?}");
    let load = Load::start(&lab.client, WEB, PAUSE);

    let added = Instant::now();
    let out = lab.cli_ok(&["backend", "add", "web", &node_http(2)]);
    assert_eq!(out, "web: backend 10.0.2.13:30080 added with weight 1 (saved to the service file)\n");
    load.wait_for_node("node3", added, Duration::from_secs(5)).unwrap();

    for verb in ["drain", "remove"] {
        lab.cli_ok(&["backend", verb, "web", &node_http(0)]);
        let since = Instant::now();
        std::thread::sleep(Duration::from_millis(800));
        let nodes = load.report().nodes_since(since);
        assert!(!nodes.contains("node1"), "after {verb}, new connections avoid node1: {nodes:?}");
        assert_eq!(nodes_of(&mut kept), before, "after {verb}, open connections keep their node");
    }

    let report = load.stop();
    assert!(report.failures.is_empty(), "failed requests: {:?}", report.failures);
    assert!(report.answers.len() > 100, "only {} requests", report.answers.len());

    let file = ServiceFile::load(&path).unwrap();
    let spec = |i| BackendSpec { addr: node_http(i).parse().unwrap(), weight: 1 };
    assert_eq!(file.services[0].backends, [spec(1), spec(2)], "written back to the file");
    let web = &list(&lab)[0];
    assert_eq!(
        web.backends.iter().map(|b| b.addr.to_string()).collect::<Vec<_>>(),
        [node_http(1), node_http(2)]
    );

    // Services come and go the same way.
    lab.cli_ok(&[
        "service",
        "add",
        "alt",
        "--vip",
        "10.0.100.10",
        "--port",
        "8080",
        "--protocol",
        "tcp",
        "--backend",
        &node_http(1),
    ]);
    let alt = SocketAddrV4::new(VIP, 8080);
    assert_eq!(lab.client.enter(|| http_get(alt)).unwrap().node, "node2");
    lab.cli_ok(&["service", "remove", "alt"]);
    assert!(lab.client.enter(|| http_get(alt)).is_err(), "removed service no longer forwarded");
    assert!(ServiceFile::load(&path).unwrap().services.iter().all(|s| s.name != "alt"));
    forwarder.stop().unwrap();
}

/// Fifty reloads (SIGHUP, or the file watcher) that change the backend set,
/// while a client keeps requesting: not one request fails.
#[test]
fn fifty_reloads_under_load_fail_no_request() {
    let lab = lab_with_servers(3);
    let two = service_file("snat", &[0, 1], "");
    let three = service_file("snat", &[0, 1, 2], "");
    let path = lab.write_services(&two).unwrap();
    let mut forwarder = lab.start_forwarder(&path, &[]).unwrap();
    let load = Load::start(&lab.client, WEB, PAUSE);
    for i in 1..=50 {
        lab.write_services(if i % 2 == 1 { &three } else { &two }).unwrap();
        if i % 2 == 1 {
            forwarder.signal(libc::SIGHUP);
        } // even: the watcher notices the file changed
        forwarder.wait_for("reloaded", i, Duration::from_secs(10)).unwrap();
        std::thread::sleep(Duration::from_millis(40));
    }
    let report = load.stop();
    eprintln!("50 reloads, {} requests, {} failed", report.answers.len(), report.failures.len());
    assert!(report.failures.is_empty(), "failed requests: {:?}", report.failures);
    assert!(report.answers.len() > 200);
    assert!(report.nodes_since(Instant::now() - Duration::from_secs(3600)).contains("node3"));
    forwarder.stop().unwrap();
}

/// A dead node leaves rotation within interval x fall (+ one timeout) and
/// requests keep succeeding on the others; revived, it comes back within
/// interval x rise.
#[test]
fn health_checks_take_a_dead_node_out_and_bring_it_back() {
    let mut lab = lab_with_servers(2);
    let health = "health = { kind = \"http\", path = \"/\", interval = \"200ms\", timeout = \"200ms\", rise = 2, fall = 3 }";
    let path = lab.write_services(&service_file("snat", &[0, 1], health)).unwrap();
    let mut forwarder = lab.start_forwarder(&path, &[]).unwrap();
    let health_of = |lab: &Lab, i: usize| list(lab)[0].backends[i].health;
    let wait_health = |lab: &Lab, i: usize, want: Health| {
        let start = Instant::now();
        while health_of(lab, i) != want {
            assert!(start.elapsed() < Duration::from_secs(10), "node{} never {want:?}", i + 1);
            std::thread::sleep(Duration::from_millis(20));
        }
        start.elapsed()
    };
    assert_eq!(health_of(&lab, 0), Health::Up);
    let load = Load::start(&lab.client, WEB, PAUSE);

    lab.stop_server(0).unwrap();
    let down_after = wait_health(&lab, 0, Health::Down);
    let detected = Instant::now();
    // interval x fall + timeout = 800 ms; allow a second for scheduling.
    assert!(down_after < Duration::from_millis(1800), "detection took {down_after:?}");
    forwarder.wait_for("backend unhealthy: out of rotation", 1, Duration::from_secs(1)).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let report = load.report();
    assert!(
        report.failures.iter().all(|(at, _)| *at < detected),
        "no failure after detection: {:?}",
        report.failures
    );
    assert_eq!(report.nodes_since(detected), ["node2".to_owned()].into(), "only node2 serves");

    lab.restart_server(0).unwrap();
    let up_after = wait_health(&lab, 0, Health::Up);
    assert!(up_after < Duration::from_millis(1400), "recovery took {up_after:?}");
    load.wait_for_node("node1", Instant::now(), Duration::from_secs(5)).unwrap();
    let report = load.stop();
    eprintln!(
        "health: down detected after {down_after:?}, up after {up_after:?}; {} requests, {} failed before detection",
        report.answers.len(),
        report.failures.len()
    );
    let stats: Stats = serde_json::from_str(&lab.cli_ok(&["stats", "--json"])).unwrap();
    assert!(stats.services[0].backends.iter().all(|b| b.health == Health::Up));
    forwarder.stop().unwrap();
}

/// The XDP program on an interface, from `ip -d link`.
fn xdp_prog_id(lab: &Lab, iface: &str) -> Option<String> {
    let text = lab.forwarder.ip(&format!("-d link show {iface}")).unwrap();
    let at = text.find("prog/xdp id ")?;
    Some(text[at + 12..].split_whitespace().next()?.to_owned())
}

/// Open connections keep exchanging data across a SIGKILL of the daemon
/// and a restart, and across a hand-over (SIGUSR2) and a restart; each
/// restart swaps a new program in (an upgrade) without a gap: a client
/// requesting all along sees no failure.
#[test]
fn connections_survive_kill_and_handover_restarts() {
    let lab = lab_with_servers(2);
    let path = lab.write_services(&service_file("snat", &[0, 1], "")).unwrap();
    let mut forwarder = lab.start_forwarder(&path, &[]).unwrap();
    let mut kept = open_connections(&lab, 8);
    let before = nodes_of(&mut kept);
    let load = Load::start(&lab.client, WEB, PAUSE);

    for signal in [libc::SIGKILL, libc::SIGUSR2] {
        let program = xdp_prog_id(&lab, LAN_IFACE).expect("attached");
        forwarder.signal(signal);
        let status = forwarder.wait(Duration::from_secs(10)).unwrap();
        assert_eq!(status.success(), signal == libc::SIGUSR2, "{status}");
        // No daemon: the datapath forwards on.
        assert_eq!(xdp_prog_id(&lab, LAN_IFACE).as_ref(), Some(&program));
        assert_eq!(nodes_of(&mut kept), before, "open connections work with no daemon");
        let fresh: Vec<_> = lab.client.enter(|| (0..10).map(|_| http_get(WEB)).collect());
        assert!(fresh.iter().all(Result::is_ok), "new connections work with no daemon: {fresh:?}");

        forwarder = lab.start_forwarder(&path, &[]).unwrap();
        assert!(forwarder.output().contains("adopted=true"), "{}", forwarder.output());
        let upgraded = xdp_prog_id(&lab, LAN_IFACE).expect("still attached");
        assert_ne!(upgraded, program, "the new daemon's program runs");
        assert_eq!(nodes_of(&mut kept), before, "open connections keep their node after the restart");
    }
    let report = load.stop();
    eprintln!("restarts: {} requests, {} failed", report.answers.len(), report.failures.len());
    assert!(report.failures.is_empty(), "failed requests: {:?}", report.failures);
    forwarder.stop().unwrap();
}

/// `forwarder down` after a crash removes everything left behind.
#[test]
fn down_removes_what_a_killed_daemon_left() {
    let lab = lab_with_servers(2);
    let path = lab.write_services(&service_file("snat", &[0, 1], "")).unwrap();
    let forwarder = lab.start_forwarder(&path, &["--announce", CLIENT_IFACE]).unwrap();
    let managed = || lab.forwarder.ip("-d neigh show").unwrap().matches("managed").count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while managed() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    forwarder.signal(libc::SIGKILL);
    forwarder.wait(Duration::from_secs(10)).unwrap();
    let (code, _, stderr) = lab.cli(&["down", "--pin-dir", lab.pin_dir().to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    for iface in [CLIENT_IFACE, LAN_IFACE] {
        assert_eq!(xdp_prog_id(&lab, iface), None, "{iface} detached");
    }
    assert_eq!(managed(), 0);
    assert!(!lab.forwarder.ip(&format!("addr show {CLIENT_IFACE}")).unwrap().contains("10.0.100.10/32"));
    let forwarding =
        lab.forwarder.exec("cat", &format!("/proc/sys/net/ipv4/conf/{LAN_IFACE}/forwarding")).unwrap();
    assert_eq!(forwarding.trim(), "0");
    assert_eq!(std::fs::read_dir(lab.pin_dir()).map(Iterator::count).unwrap_or(0), 0, "no pins left");
    assert!(lab.client.enter(|| http_get(WEB)).is_err(), "nothing forwards any more");
}

/// Bad input on the CLI gets a one-line error and changes nothing; with no
/// daemon every verb says so in one line.
#[test]
fn bad_input_is_refused_with_one_line_and_changes_nothing() {
    let lab = lab_with_servers(2);
    let path = lab.write_services(&service_file("snat", &[0, 1], "")).unwrap();
    let forwarder = lab.start_forwarder(&path, &[]).unwrap();
    lab.cli_ok(&[
        "service",
        "add",
        "solo",
        "--vip",
        "10.0.100.11",
        "--port",
        "80",
        "--protocol",
        "tcp",
        "--backend",
        &node_http(0),
    ]);
    let list_before = lab.cli_ok(&["service", "list", "--json"]);
    let file_before = std::fs::read_to_string(&path).unwrap();
    let bad_file = lab.dir.path().join("bad.toml");
    std::fs::write(&bad_file, file_before.replacen("port = 80", "port = 0", 1)).unwrap();
    let bad = bad_file.to_str().unwrap();

    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["backend", "add", "nosuch", "10.0.2.13:30080"], 1, "no service named \"nosuch\""),
        (
            vec!["backend", "remove", "web", "10.0.2.99:30080"],
            1,
            "service \"web\" has no backend 10.0.2.99:30080",
        ),
        (vec!["backend", "drain", "web", "10.0.2.99:30080"], 1, "has no backend"),
        (vec!["backend", "add", "web", "10.0.2.11:30080"], 1, "already has backend 10.0.2.11:30080"),
        (vec!["backend", "remove", "solo", "10.0.2.11:30080"], 1, "is the last backend of \"solo\""),
        (vec!["backend", "add", "web", "10.0.2.300:30080"], 2, "is not IPv4:PORT"),
        (vec!["backend", "add", "web", "10.0.2.13:0"], 2, "has port 0"),
        (vec!["backend", "add", "web", "224.0.0.1:30080"], 2, "not a unicast address"),
        (
            vec!["backend", "add", "web", "10.0.2.13:30080", "--weight", "1001"],
            2,
            "weight 1001 is out of range",
        ),
        (vec!["backend", "set-weight", "web", "10.0.2.11:30080", "heavy"], 2, "is not a number"),
        (
            vec![
                "service",
                "add",
                "web",
                "--vip",
                "10.0.100.10",
                "--port",
                "81",
                "--protocol",
                "tcp",
                "--backend",
                "10.0.2.11:30080",
            ],
            1,
            "a service named \"web\" already exists",
        ),
        (
            vec![
                "service",
                "add",
                "api",
                "--vip",
                "10.0.100.10",
                "--port",
                "80",
                "--protocol",
                "tcp",
                "--backend",
                "10.0.2.11:30080",
            ],
            1,
            "duplicate VIP:port:protocol 10.0.100.10:80/tcp",
        ),
        (
            vec![
                "service",
                "add",
                "bad name",
                "--vip",
                "10.0.100.10",
                "--port",
                "82",
                "--protocol",
                "tcp",
                "--backend",
                "10.0.2.11:30080",
            ],
            1,
            "invalid service name",
        ),
        (
            vec![
                "service",
                "add",
                "api",
                "--vip",
                "10.0.100.10",
                "--port",
                "0",
                "--protocol",
                "tcp",
                "--backend",
                "10.0.2.11:30080",
            ],
            2,
            "--port",
        ),
        (
            vec![
                "service",
                "add",
                "api",
                "--vip",
                "10.0.100.10",
                "--port",
                "82",
                "--protocol",
                "sctp",
                "--backend",
                "10.0.2.11:30080",
            ],
            2,
            "sctp",
        ),
        (
            vec![
                "service",
                "add",
                "web2",
                "--vip",
                "10.0.100.10",
                "--port",
                "8080",
                "--protocol",
                "tcp",
                "--backend",
                "10.0.2.11:30080:1",
            ],
            2,
            "is not IPv4:PORT",
        ),
        (vec!["service", "remove", "nosuch"], 1, "no service named \"nosuch\""),
        (vec!["flows", "--service", "nosuch"], 1, "no service named \"nosuch\""),
        (vec!["apply", bad], 1, "bad.toml:4:8: port must be between 1 and 65535, not 0"),
    ];
    for (args, code, message) in &cases {
        let (got, stdout, stderr) = lab.cli(args);
        assert_eq!(got, *code, "{args:?}: exit code; stderr: {stderr}");
        assert_eq!(stdout, "", "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr:?}");
        assert!(stderr.contains(message), "{args:?}: {stderr:?} should contain {message:?}");
    }
    assert_eq!(lab.cli_ok(&["service", "list", "--json"]), list_before, "nothing changed");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), file_before, "the file did not change");

    forwarder.stop().unwrap();
    for args in [
        vec!["service", "list"],
        vec!["stats"],
        vec!["flows"],
        vec!["backend", "drain", "web", "10.0.2.11:30080"],
        vec!["apply", path.to_str().unwrap()],
    ] {
        let (code, _, stderr) = lab.cli(&args);
        assert_eq!(code, 1, "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains("no forwarder daemon is running"), "{args:?}: {stderr}");
    }
}

/// `stats`, `flows` and the metrics endpoint report what went through.
#[test]
fn stats_flows_and_metrics_report_the_traffic() {
    let lab = lab_with_servers(2);
    let path = lab.write_services(&service_file("snat", &[0, 1], "")).unwrap();
    let forwarder = lab.start_forwarder(&path, &[]).unwrap();
    let mut kept = open_connections(&lab, 4);
    nodes_of(&mut kept);
    let one_shot: Vec<_> = lab.client.enter(|| (0..20).map(|_| http_get(WEB).unwrap()).collect());
    assert_eq!(one_shot.len(), 20);

    // Connection counts come from the sweep, every 5 s.
    let deadline = Instant::now() + Duration::from_secs(12);
    let stats = loop {
        let stats: Stats = serde_json::from_str(&lab.cli_ok(&["stats", "--json"])).unwrap();
        if stats.services[0].active_flows >= 4 || Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let web = &stats.services[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.totals.new_flows, 24, "4 kept + 20 one-shot connections");
    assert!(web.totals.packets_in >= 24 * 4 && web.totals.packets_out >= 24 * 3, "{:?}", web.totals);
    assert!(web.active_flows >= 4, "the kept connections are live: {}", web.active_flows);
    let backend_new: u64 = web.backends.iter().map(|b| b.totals.new_flows).sum();
    assert_eq!(backend_new, web.totals.new_flows, "backends add up to the service");
    assert!(stats.reasons.iter().any(|r| r.reason == "redirect" && r.packets > 0));

    let flows: Vec<Flow> =
        serde_json::from_str(&lab.cli_ok(&["flows", "--service", "web", "--json"])).unwrap();
    let live: Vec<&Flow> = flows.iter().filter(|f| f.state == "established").collect();
    assert!(live.len() >= 4, "{flows:#?}");
    for flow in &live {
        assert_eq!((*flow.client.ip(), *flow.vip.ip(), *flow.source.ip()), (CLIENT, VIP, FORWARDER_LAN_SIDE));
        assert!([node_http(0), node_http(1)].contains(&flow.backend.to_string()), "{flow:?}");
    }
    let table = lab.cli_ok(&["stats"]);
    assert!(table.contains("web 10.0.100.10:80/tcp snat"), "{table}");
    assert!(lab.cli_ok(&["flows"]).contains("established"));

    let metrics = lab.forwarder.enter(|| {
        let mut stream = TcpStream::connect("127.0.0.1:9405").unwrap();
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    });
    for needle in [
        "forwarder_service_new_connections_total{service=\"web\"} 24",
        "forwarder_datapath_packets_total{reason=\"redirect\"}",
        "forwarder_backend_in_rotation{service=\"web\",backend=\"10.0.2.11:30080\"} 1",
        "forwarder_connections ",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle:?}:\n{metrics}");
    }
    drop(kept);
    forwarder.stop().unwrap();
}

/// `--announce` puts the VIPs on an interface: a client on the same link
/// that merely ARPs for the VIP reaches the service, and a port of the VIP
/// that is no service reaches the host. Withdrawn on stop.
#[test]
fn announced_vips_answer_arp_and_are_withdrawn_on_stop() {
    let lab = lab_with_servers(2);
    let path = lab.write_services(&service_file("snat", &[0, 1], "")).unwrap();
    let forwarder = lab.start_forwarder(&path, &["--announce", CLIENT_IFACE]).unwrap();
    let announced =
        || lab.forwarder.ip(&format!("addr show {CLIENT_IFACE}")).unwrap().contains("10.0.100.10/32");
    assert!(announced());
    // No gateway for the VIP any more: the client must ARP for it.
    lab.client.ip("route del default").unwrap();
    lab.client.ip("route add 10.0.100.10/32 dev eth0").unwrap();
    let answers: Vec<_> = lab.client.enter(|| (0..10).map(|_| http_get(WEB)).collect());
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let neighbours = lab.client.ip("neigh show 10.0.100.10").unwrap();
    assert!(neighbours.contains("lladdr"), "the forwarder answered ARP for the VIP: {neighbours}");
    let host = lab.forwarder.enter(|| TcpListener::bind((VIP, 2222)).unwrap());
    lab.client
        .enter(|| TcpStream::connect_timeout(&SocketAddrV4::new(VIP, 2222).into(), Duration::from_secs(5)))
        .unwrap();
    assert!(host.accept().is_ok(), "another port of the VIP reaches the host");
    forwarder.stop().unwrap();
    assert!(!announced(), "withdrawn on stop");
}
