//! What the daemon reports: stats, flows, metrics; VIP announcement.

use std::os::unix::process::CommandExt as _;

use super::*;

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

/// A local user holding 2,000 idle connections to the metrics port (more
/// than the daemon's 1,024 file descriptors, systemd's default soft limit)
/// takes neither the CLI nor the health checks down; once they go, metrics
/// answer again.
#[test]
fn idle_connections_to_the_servers_take_nothing_down() {
    let lab = lab_with_servers(2);
    let health = "health = { kind = \"tcp\", interval = \"200ms\", timeout = \"200ms\", rise = 1, fall = 2 }";
    let path = lab.write_services(&service_file("snat", &[0, 1], health)).unwrap();
    let mut cmd = lab.forwarder_command(&path, &[]);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    };
    let mut forwarder = forwarder_tests::netns::Process::spawn("forwarder", cmd).unwrap();
    forwarder.wait_for("forwarding;", 1, Duration::from_secs(30)).unwrap();
    raise_fd_limit(4096);
    let idle: Vec<TcpStream> =
        lab.forwarder.enter(|| (0..2000).filter_map(|_| TcpStream::connect("127.0.0.1:9405").ok()).collect());
    assert!(idle.len() >= 1900, "opened {} connections", idle.len());
    std::thread::sleep(Duration::from_millis(1500)); // several health intervals
    let stats: Stats = serde_json::from_str(&lab.cli_ok(&["stats", "--json"])).unwrap();
    assert!(
        stats.services[0].backends.iter().all(|b| b.health == Health::Up),
        "health checks still run: {:?}",
        stats.services[0].backends
    );
    assert_eq!(list(&lab).len(), 2, "service list answers");
    assert!(lab.client.enter(|| http_get(WEB)).is_ok(), "the datapath forwards");
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(15);
    let metrics = loop {
        let got = lab.forwarder.enter(|| {
            let mut stream = TcpStream::connect("127.0.0.1:9405").ok()?;
            stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
            let mut text = String::new();
            stream.read_to_string(&mut text).ok()?;
            Some(text).filter(|t| t.contains("forwarder_connections"))
        });
        if let Some(text) = got {
            break text;
        }
        assert!(Instant::now() < deadline, "metrics never answered again");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(metrics.starts_with("HTTP/1.0 200"), "{metrics}");
    forwarder.stop().unwrap();
}

/// Lets this test process hold `n` descriptors.
fn raise_fd_limit(n: u64) {
    let limit = libc::rlimit { rlim_cur: n, rlim_max: n };
    // SAFETY: a valid rlimit for this process.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) }, 0, "setrlimit");
}
