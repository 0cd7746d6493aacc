//! End to end: real TCP (HTTP) and UDP from a client namespace through the
//! forwarder's datapath (XDP or TC, as the lab's flavour says) to nginx on
//! node namespaces. Needs root.

use std::{collections::BTreeMap, net::SocketAddrV4, time::Duration};

use forwarder_tests::{
    client::{Answer, HttpConnection, http_get, udp_ask},
    echo::{EchoServer, body, echo},
    lab::{CLIENT, FORWARDER_CLIENT_SIDE, FORWARDER_LAN_SIDE, LAN_IFACE, Lab, VIP, service_file},
    require_root,
};

const WEB: SocketAddrV4 = SocketAddrV4::new(VIP, 80);
const DNS: SocketAddrV4 = SocketAddrV4::new(VIP, 53);

fn services(mode: &str, nodes: &[usize]) -> String {
    service_file(mode, nodes, "")
}

/// How many answers each node gave.
fn per_node(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for answer in answers {
        *counts.entry(answer.node.clone()).or_default() += 1;
    }
    counts
}

fn lab_with_servers(nodes: usize) -> Lab {
    require_root();
    let mut lab = Lab::new("fwe", nodes).expect("lab");
    lab.start_servers().expect("node servers");
    lab
}

/// In snat mode every node gets traffic and sees the forwarder, not the
/// client, over both TCP and UDP.
#[test]
fn snat_spreads_tcp_and_udp_over_nodes_which_see_the_forwarder() {
    let lab = lab_with_servers(2);
    let path = lab.write_services(&services("snat", &[0, 1])).unwrap();
    let forwarder = lab.start_forwarder(&path, &[]).unwrap();

    let http: Vec<Answer> = lab.client.enter(|| (0..40).map(|_| http_get(WEB).unwrap()).collect());
    let udp: Vec<Answer> = lab.client.enter(|| (0..40).map(|_| udp_ask(DNS).unwrap()).collect());
    for answer in http.iter().chain(&udp) {
        assert_eq!(*answer.client.ip(), FORWARDER_LAN_SIDE, "snat: the node sees the forwarder: {answer:?}");
    }
    for (what, answers) in [("http", &http), ("udp", &udp)] {
        let counts = per_node(answers);
        assert_eq!(counts.len(), 2, "{what}: every node gets traffic: {counts:?}");
    }
    // SNAT ports come from the forwarder's range, one per connection to a
    // node: the node's address is part of the reply tuple, so two nodes may
    // see the same port (about one run in 40 with 40 hashed ports).
    let mut ports: Vec<(&str, u16)> = http.iter().map(|a| (a.node.as_str(), a.client.port())).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), http.len(), "one SNAT port per connection to a node: {ports:?}");
    assert!(ports.iter().all(|(_, p)| (1024..=32767).contains(p)), "{ports:?}");
    // Traffic for the host itself passes untouched: a TCP service on the
    // forwarder's own address still answers the client.
    let listener =
        lab.forwarder.enter(|| std::net::TcpListener::bind((FORWARDER_CLIENT_SIDE, 2222)).unwrap());
    let host = SocketAddrV4::new(FORWARDER_CLIENT_SIDE, 2222);
    let conn =
        lab.client.enter(|| std::net::TcpStream::connect_timeout(&host.into(), Duration::from_secs(5)));
    conn.expect("connect to a service of the forwarder host");
    let (_, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(CLIENT), "the host sees the client, untranslated");
    forwarder.stop().unwrap();
}

/// `--snat-ip` given twice: connections leave from both addresses (both
/// on the forwarder's node-side interface), nodes answer each, and
/// `stats` shows the port use per address.
#[test]
fn a_snat_pool_spreads_connections_over_its_addresses() {
    let lab = lab_with_servers(2);
    let second = std::net::Ipv4Addr::new(10, 0, 2, 100);
    lab.forwarder.ip(&format!("addr add {second}/24 dev {LAN_IFACE}")).unwrap();
    let path = lab.write_services(&services("snat", &[0, 1])).unwrap();
    let (first, second_arg) = (FORWARDER_LAN_SIDE.to_string(), second.to_string());
    let forwarder = lab.start_forwarder(&path, &["--snat-ip", &first, "--snat-ip", &second_arg]).unwrap();

    // Keep-alive connections, open until the counts are read.
    let (_open, http): (Vec<HttpConnection>, Vec<Answer>) = lab.client.enter(|| {
        (0..40)
            .map(|_| {
                let mut conn = HttpConnection::open(WEB).unwrap();
                let answer = conn.get().unwrap();
                (conn, answer)
            })
            .unzip()
    });
    let udp: Vec<Answer> = lab.client.enter(|| (0..40).map(|_| udp_ask(DNS).unwrap()).collect());
    for (what, answers) in [("http", &http), ("udp", &udp)] {
        let mut sources: Vec<_> = answers.iter().map(|a| *a.client.ip()).collect();
        sources.sort_unstable();
        sources.dedup();
        assert_eq!(sources, [FORWARDER_LAN_SIDE, second], "{what}: the nodes see both SNAT addresses");
    }
    // The sweep (every 5 s) counts the tracked connections per address.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let stats = loop {
        let stats: serde_json::Value = serde_json::from_str(&lab.cli_ok(&["stats", "--json"])).unwrap();
        let rows = stats["snat"].as_array().cloned().unwrap_or_default();
        if rows.len() == 4 || std::time::Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    for address in [FORWARDER_LAN_SIDE, second] {
        for protocol in ["tcp", "udp"] {
            let row = stats
                .iter()
                .find(|r| r["address"] == address.to_string() && r["protocol"] == protocol)
                .unwrap_or_else(|| panic!("no {address} {protocol} row in {stats:?}"));
            assert!(row["connections"].as_u64().unwrap() > 0, "{row}");
            assert_eq!(row["ports_per_node"], 31_744, "{row}");
        }
    }
    forwarder.stop().unwrap();
}

/// 200 kB each way over one connection through the VIP, in both modes. In
/// the default lab the client's and the nodes' veths keep TX checksum
/// offload and TSO on, so the datapath sees partial checksums and packets
/// far larger than the MTU (one per TSO burst): what XDP cannot translate
/// and TC must; the tuned lab sends complete checksums, one segment each.
#[test]
fn large_transfers_cross_the_vip_both_ways_in_both_modes() {
    const ECHO_PORT: u16 = 30090;
    let lab = lab_with_servers(2);
    let backends: Vec<String> = lab.nodes.iter().map(|n| format!("\"{}:{ECHO_PORT}\"", n.addr)).collect();
    let sent = body(200_000);
    for mode in ["snat", "preserve"] {
        let echo_service = format!(
            "\n[[service]]\nname = \"echo\"\nvip = \"{VIP}\"\nport = 7\nprotocol = \"tcp\"\nmode = \"{mode}\"\nbackends = [{}]\n",
            backends.join(", ")
        );
        let path = lab.write_services(&(services(mode, &[0, 1]) + &echo_service)).unwrap();
        let forwarder = lab.start_forwarder(&path, &[]).unwrap();
        for round in 0..3 {
            let servers: Vec<EchoServer> = lab
                .nodes
                .iter()
                .map(|n| EchoServer::start(&n.ns, SocketAddrV4::new(n.addr, ECHO_PORT)).unwrap())
                .collect();
            let back = lab.client.enter(|| echo(SocketAddrV4::new(VIP, 7), &sent));
            let back = back.unwrap_or_else(|err| panic!("{mode}, round {round}: {err:#}"));
            assert!(
                back == sent,
                "{mode}, round {round}: {} bytes came back, not the {} sent",
                back.len(),
                sent.len()
            );
            let echoed: Vec<u64> = servers.into_iter().map(|s| s.finish().unwrap()).collect();
            assert_eq!(
                echoed.iter().sum::<u64>(),
                sent.len() as u64,
                "{mode}: one node echoed it all: {echoed:?}"
            );
        }
        forwarder.stop().unwrap();
    }
}

/// In preserve mode the nodes see the real client address, and their
/// replies (routed through the forwarder) are translated back.
#[test]
fn preserve_mode_nodes_see_the_client() {
    let lab = lab_with_servers(2);
    let path = lab.write_services(&services("preserve", &[0, 1])).unwrap();
    let forwarder = lab.start_forwarder(&path, &[]).unwrap();

    let http: Vec<Answer> = lab.client.enter(|| (0..40).map(|_| http_get(WEB).unwrap()).collect());
    let udp: Vec<Answer> = lab.client.enter(|| (0..40).map(|_| udp_ask(DNS).unwrap()).collect());
    for answer in http.iter().chain(&udp) {
        assert_eq!(*answer.client.ip(), CLIENT, "preserve: the node sees the client: {answer:?}");
    }
    assert_eq!(per_node(&http).len(), 2, "{:?}", per_node(&http));
    assert_eq!(per_node(&udp).len(), 2, "{:?}", per_node(&udp));
    forwarder.stop().unwrap();
}

/// Open connections keep their node when the backend set changes (here by
/// a reload on SIGHUP); new connections follow the new set.
#[test]
fn open_connections_keep_their_node_when_backends_change() {
    for mode in ["snat", "preserve"] {
        let lab = lab_with_servers(3);
        let path = lab.write_services(&services(mode, &[0, 1])).unwrap();
        let mut forwarder = lab.start_forwarder(&path, &[]).unwrap();

        let mut connections: Vec<HttpConnection> =
            lab.client.enter(|| (0..16).map(|_| HttpConnection::open(WEB).unwrap()).collect());
        let before: Vec<String> = connections.iter_mut().map(|c| c.get().unwrap().node).collect();
        assert!(before.iter().any(|n| n == "node1"), "{mode}: some connection on node1: {before:?}");

        // node1 leaves, node3 joins.
        lab.write_services(&services(mode, &[1, 2])).unwrap();
        forwarder.signal(libc::SIGHUP);
        forwarder.wait_for("reloaded", 1, Duration::from_secs(10)).unwrap();

        let after: Vec<String> = connections.iter_mut().map(|c| c.get().unwrap().node).collect();
        assert_eq!(before, after, "{mode}: every open connection kept its node");
        let fresh: Vec<Answer> = lab.client.enter(|| (0..30).map(|_| http_get(WEB).unwrap()).collect());
        let counts = per_node(&fresh);
        assert!(!counts.contains_key("node1"), "{mode}: new connections avoid the removed node: {counts:?}");
        assert_eq!(counts.len(), 2, "{mode}: new connections use node2 and node3: {counts:?}");
        drop(connections);
        forwarder.stop().unwrap();
    }
}

/// With empty neighbour tables everywhere and no pre-resolution, the very
/// first datagram of a flow still arrives (XDP hands it to the TC fallback,
/// which lets the kernel resolve the MAC), and its answer comes back.
#[test]
fn first_packet_gets_through_with_empty_neighbour_tables() {
    for mode in ["snat", "preserve"] {
        let lab = lab_with_servers(2);
        let path = lab.write_services(&services(mode, &[0, 1])).unwrap();
        let forwarder = lab.start_forwarder(&path, &["--no-neighbour-prefetch"]).unwrap();
        for ns in [&lab.client, &lab.forwarder, &lab.nodes[0].ns, &lab.nodes[1].ns] {
            ns.ip("neigh flush all").unwrap();
        }
        // One datagram each, no retry: each goes to a node whose MAC the
        // forwarder does not know yet (the first one to either node). 24
        // random source ports all hash to one node once in 8 million runs
        // (8 did so once in about 128, and failed a CI run).
        let answers: Vec<Answer> = lab.client.enter(|| (0..24).map(|_| udp_ask(DNS).unwrap()).collect());
        assert_eq!(per_node(&answers).len(), 2, "{mode}: {answers:?}");
        assert!(
            forwarder.output().contains("unresolved: redirect_neigh"),
            "{mode}: the TC fallback handled the first packets:\n{}",
            forwarder.output()
        );
        forwarder.stop().unwrap();
    }
}

/// The daemon keeps the nodes' MACs resolved ahead of traffic with managed
/// neighbour entries, and removes them, its programs and its sysctl change
/// when it stops.
#[test]
fn prefetches_neighbours_and_cleans_up_on_stop() {
    let lab = lab_with_servers(2);
    let path = lab.write_services(&services("snat", &[0, 1])).unwrap();
    let forwarder_ns = &lab.forwarder;
    let forwarding = |ns: &forwarder_tests::netns::Netns| {
        ns.exec("cat", &format!("/proc/sys/net/ipv4/conf/{LAN_IFACE}/forwarding")).unwrap().trim().to_owned()
    };
    assert_eq!(forwarding(forwarder_ns), "0");
    let forwarder = lab.start_forwarder(&path, &[]).unwrap();
    assert_eq!(forwarding(forwarder_ns), "1", "enabled for bpf_fib_lookup");
    let managed =
        || forwarder_ns.ip("-d neigh show").unwrap().lines().filter(|l| l.contains("managed")).count();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while managed() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(managed(), 2, "one managed entry per node:\n{}", forwarder_ns.ip("-d neigh show").unwrap());
    assert_eq!(lab.attached(LAN_IFACE).map(|(hook, _)| hook), Some(lab.flavour.hook()));

    let status = forwarder.stop().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    assert!(!lab.forwards_on(LAN_IFACE), "detached");
    assert_eq!(managed(), 0, "managed entries removed");
    assert_eq!(forwarding(forwarder_ns), "0", "sysctl restored");
}

/// A reload with an invalid file is rejected and changes nothing.
#[test]
fn invalid_reload_changes_nothing() {
    let lab = lab_with_servers(2);
    let path = lab.write_services(&services("snat", &[0, 1])).unwrap();
    let mut forwarder = lab.start_forwarder(&path, &[]).unwrap();
    lab.write_services(&services("snat", &[0, 1]).replacen("port = 80", "port = 0", 1)).unwrap();
    forwarder.signal(libc::SIGHUP);
    forwarder.wait_for("reload rejected", 1, Duration::from_secs(10)).unwrap();
    assert!(
        forwarder.output().contains("services.toml:4:8: port must be between 1 and 65535"),
        "{}",
        forwarder.output()
    );
    let answers: Vec<Answer> = lab.client.enter(|| (0..20).map(|_| http_get(WEB).unwrap()).collect());
    assert_eq!(per_node(&answers).len(), 2, "still forwarding to both nodes");
    forwarder.stop().unwrap();
}

/// In the usual topology (the router sends the VIP to the forwarder, the
/// forwarder's default route is that router; here the client plays the
/// router) a datagram to a VIP port no service has is answered by the
/// forwarder's kernel (the VIP's unreachable route) instead of bouncing
/// between the two until its TTL runs out. The route goes on stop.
#[test]
fn unserved_vip_traffic_is_answered_not_routed_back() {
    let lab = lab_with_servers(1);
    let path = lab.write_services(&services("snat", &[0])).unwrap();
    lab.client.exec("sysctl", "-qw net.ipv4.ip_forward=1").unwrap();
    lab.forwarder.ip(&format!("route add default via {CLIENT}")).unwrap();
    let forwarder = lab.start_forwarder(&path, &[]).unwrap();
    let unreachable = || lab.forwarder.ip("route show type unreachable").unwrap();
    assert!(unreachable().contains(&VIP.to_string()), "{}", unreachable());

    // IPv4 packets the client took in (`Ip: InReceives`): the link's own
    // counter also counts ARP and the IPv6 chatter of a new link (router
    // solicitations, MLD), which made this flaky.
    let received = || -> u64 {
        let snmp = lab.client.exec("cat", "/proc/net/snmp").unwrap();
        let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
        let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
        let at = names.split_whitespace().position(|n| n == "InReceives").unwrap();
        values.split_whitespace().nth(at).unwrap().parse().unwrap()
    };
    let before = received();
    lab.client.enter(|| {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.set_ttl(255).unwrap();
        socket.send_to(b"nobody serves this", SocketAddrV4::new(VIP, 9)).unwrap();
    });
    std::thread::sleep(Duration::from_millis(300));
    let crossings = received() - before;
    // One ICMP unreachable comes back (a loop would bring ~127 copies).
    assert!(crossings <= 2, "{crossings} IPv4 packets came back over the router link");
    assert!(lab.client.enter(|| http_get(WEB)).is_ok(), "the service still answers");

    forwarder.stop().unwrap();
    assert!(!unreachable().contains(&VIP.to_string()), "route removed on stop: {}", unreachable());
}

/// The forwarder forwards only what it translates: a client cannot use it
/// as a router to a node's own address (dropped before the kernel routes
/// it, counted as drop_not_translated) while the VIP serves; with
/// `--route-other` the kernel routes it as any router would.
#[test]
fn clients_cannot_route_through_the_forwarder_unless_allowed() {
    let lab = lab_with_servers(1);
    let path = lab.write_services(&services("snat", &[0])).unwrap();
    let direct = SocketAddrV4::new(forwarder_tests::lab::node_addr(0), 30080);
    let forwarder = lab.start_forwarder(&path, &[]).unwrap();
    assert!(lab.client.enter(|| http_get(direct)).is_err(), "no route through the forwarder");
    assert_eq!(lab.client.enter(|| http_get(WEB)).unwrap().node, "node1", "the VIP serves");
    let stats: forwarder::report::Stats = serde_json::from_str(&lab.cli_ok(&["stats", "--json"])).unwrap();
    let dropped = stats.reasons.iter().find(|r| r.reason == "drop_not_translated").map_or(0, |r| r.packets);
    assert!(dropped > 0, "counted: {:?}", stats.reasons);
    forwarder.stop().unwrap();

    let forwarder = lab.start_forwarder(&path, &["--route-other"]).unwrap();
    assert_eq!(lab.client.enter(|| http_get(direct)).unwrap().node, "node1", "routed when allowed");
    forwarder.stop().unwrap();
}

/// 200 kB uploads (and their echo) through the VIP, in both modes, when
/// the path to the nodes has a smaller MTU than the client's link: at the
/// forwarder's own egress (its node-side link at 1280: the datapath answers
/// with ICMP fragmentation needed), and at a router behind a node (a
/// backend one hop further, behind a 1200 link: the router's fragmentation
/// needed, addressed to the SNAT address or the client, is translated back
/// to the client). The servers advertise an MSS of 1460 whatever their
/// link (`advmss`), so the client sends full-size segments: without either
/// answer TCP would retransmit them into a black hole.
#[test]
fn uploads_cross_a_smaller_mtu_on_the_way_to_the_nodes() {
    use forwarder_tests::netns::{Netns, run, unique_name};
    const ECHO_PORT: u16 = 30090;
    const BEHIND: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 77, 2);
    require_root();
    let lab = Lab::new("fwm", 1).expect("lab");
    let node = &lab.nodes[0];
    // Node 1 is also a router, to a backend behind a 1200-byte link.
    let behind = Netns::create(unique_name("fwm", "b")).unwrap();
    run(std::process::Command::new("ip").args([
        "link",
        "add",
        "inner",
        "netns",
        node.ns.name(),
        "mtu",
        "1200",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        behind.name(),
        "mtu",
        "1200",
    ]))
    .unwrap();
    node.ns.ip("addr add 10.0.77.1/24 dev inner").unwrap();
    node.ns.ip("link set inner up").unwrap();
    node.ns.exec("sysctl", "-qw net.ipv4.ip_forward=1").unwrap();
    behind.ip(&format!("addr add {BEHIND}/24 dev eth0")).unwrap();
    behind.ip("link set eth0 up").unwrap();
    behind.ip("route add default via 10.0.77.1 advmss 1460").unwrap();
    lab.forwarder.ip(&format!("route add 10.0.77.0/24 via {}", node.addr)).unwrap();

    let sent = body(200_000);
    let cases = [
        (
            "the forwarder's egress at 1280",
            &node.ns,
            SocketAddrV4::new(node.addr, ECHO_PORT),
            1280,
            "frag_needed_sent",
        ),
        (
            "a router behind the node at 1200",
            &behind,
            SocketAddrV4::new(BEHIND, ECHO_PORT),
            1500,
            "icmp_translated",
        ),
    ];
    for (where_, server_ns, backend, mtu, reason) in cases {
        lab.forwarder.ip(&format!("link set {LAN_IFACE} mtu {mtu}")).unwrap();
        // The node sends at most `mtu` (the route's), but advertises 1460.
        node.ns
            .ip(&format!(
                "route replace 10.0.2.0/24 dev eth0 proto kernel scope link src {} mtu {mtu} advmss 1460",
                node.addr
            ))
            .unwrap();
        node.ns.ip(&format!("route replace default via {FORWARDER_LAN_SIDE} mtu {mtu} advmss 1460")).unwrap();
        for mode in ["snat", "preserve"] {
            let text = format!(
                "snat_ip = \"{FORWARDER_LAN_SIDE}\"\n\n[[service]]\nname = \"echo\"\nvip = \"{VIP}\"\nport = 7\nprotocol = \"tcp\"\nmode = \"{mode}\"\nbackends = [\"{backend}\"]\n"
            );
            let path = lab.write_services(&text).unwrap();
            let forwarder = lab.start_forwarder(&path, &[]).unwrap();
            // Counters outlive restarts (pinned).
            let before = reason_count(&lab, reason);
            // The client starts from its own link's MTU each time.
            lab.client.ip("route flush cache").unwrap();
            let server = EchoServer::start(server_ns, backend).unwrap();
            let back = lab.client.enter(|| echo(SocketAddrV4::new(VIP, 7), &sent));
            let back = back.unwrap_or_else(|err| panic!("{mode}, {where_}: {err:#}"));
            assert!(
                back == sent,
                "{mode}, {where_}: {} bytes came back, not the {} sent",
                back.len(),
                sent.len()
            );
            assert_eq!(server.finish().unwrap(), sent.len() as u64, "{mode}, {where_}: echoed");
            let counted = reason_count(&lab, reason) - before;
            assert!(counted > 0, "{mode}, {where_}: {reason} counted");
            forwarder.stop().unwrap();
        }
    }
}

/// UDP datagrams of 3,000 and 9,000 bytes to a VIP port, in both modes:
/// fragmented by the client (MTU 1500), every fragment reaches the node
/// the first one went to and is reassembled there, and the node's answer,
/// as large and as fragmented, comes back whole.
#[test]
fn fragmented_udp_datagrams_arrive_whole_and_get_their_reply_in_both_modes() {
    use std::net::UdpSocket;
    const PORT: u16 = 30054;
    let lab = lab_with_servers(2);
    for mode in ["snat", "preserve"] {
        let service = format!(
            "\n[[service]]\nname = \"big\"\nvip = \"{VIP}\"\nport = 5353\nprotocol = \"udp\"\nmode = \"{mode}\"\nbackends = [{}]\n",
            lab.nodes.iter().map(|n| format!("\"{}:{PORT}\"", n.addr)).collect::<Vec<_>>().join(", ")
        );
        let path = lab.write_services(&(services(mode, &[0, 1]) + &service)).unwrap();
        let forwarder = lab.start_forwarder(&path, &[]).unwrap();
        // Counters outlive restarts (pinned).
        let before = reason_count(&lab, "fragment_translated");
        // An echo on every node, answering each datagram with itself.
        let servers: Vec<UdpSocket> = lab
            .nodes
            .iter()
            .map(|n| n.ns.enter(|| UdpSocket::bind(SocketAddrV4::new(n.addr, PORT))).unwrap())
            .collect();
        let echoes: Vec<_> = servers
            .into_iter()
            .map(|socket| {
                std::thread::spawn(move || {
                    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut buf = vec![0u8; 65536];
                    let mut sizes = Vec::new();
                    while let Ok((len, from)) = socket.recv_from(&mut buf) {
                        if len == 1 {
                            break; // the test's "done"
                        }
                        socket.send_to(&buf[..len], from).unwrap();
                        sizes.push(len);
                    }
                    sizes
                })
            })
            .collect();
        let client = lab.client.enter(|| UdpSocket::bind("0.0.0.0:0")).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for len in [3000, 9000] {
            let sent = body(len);
            client.send_to(&sent, SocketAddrV4::new(VIP, 5353)).unwrap();
            let mut back = vec![0u8; 65536];
            let (got, from) =
                client.recv_from(&mut back).unwrap_or_else(|e| panic!("{mode}, {len} bytes: {e}"));
            assert_eq!(from, std::net::SocketAddr::V4(SocketAddrV4::new(VIP, 5353)), "{mode}: from the VIP");
            assert!(back[..got] == sent[..], "{mode}: {got} bytes came back, not the {len} sent");
        }
        // "Done", from each node itself (the forwarder routes nothing else).
        for node in &lab.nodes {
            let _ = node.ns.enter(|| {
                UdpSocket::bind("0.0.0.0:0").unwrap().send_to(&[0], SocketAddrV4::new(node.addr, PORT))
            });
        }
        let sizes: Vec<Vec<usize>> = echoes.into_iter().map(|e| e.join().unwrap()).collect();
        assert_eq!(
            sizes.concat().iter().sum::<usize>(),
            12_000,
            "{mode}: each reassembled whole once: {sizes:?}"
        );
        // With the UDP header, 3,008 bytes are 3 fragments of at most 1,480
        // and 9,008 are 7, each way; the first ones are translated as packets.
        let translated = reason_count(&lab, "fragment_translated") - before;
        assert_eq!(translated, 2 * (2 + 6), "{mode}: later fragments translated");
        forwarder.stop().unwrap();
    }
}

/// The daemon's count of packets under `reason`.
fn reason_count(lab: &Lab, reason: &str) -> u64 {
    let stats: forwarder::report::Stats = serde_json::from_str(&lab.cli_ok(&["stats", "--json"])).unwrap();
    stats.reasons.iter().find(|r| r.reason == reason).map_or(0, |r| r.packets)
}

/// Raises this process's open-file limit to at least `want` (within the
/// hard limit): the flood test holds a thousand connections.
fn allow_open_files(want: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain data in and out.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_cur.max(want.min(limit.rlim_max));
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

/// What a SYN flood test saw.
#[derive(Debug, Default)]
struct FloodReport {
    rounds: usize,
    requests: usize,
    new_connections: usize,
    failures: Vec<String>,
}

/// A spoofed-source SYN flood (hping3 as fast as it sends, for 10 s and
/// at least two rounds of requests) at the VIP while 1,000 established
/// keep-alive connections exchange requests, with a connection table the flood overflows many times over
/// (`--max-connections 2000`; the default half-open table, 65,536, too):
/// no established connection breaks or changes node, and a new connection
/// opened every round succeeds, in both modes.
#[test]
fn a_syn_flood_breaks_no_established_connection_and_new_ones_still_open() {
    const CONNECTIONS: usize = 1000;
    allow_open_files(4 * CONNECTIONS as u64);
    for mode in ["snat", "preserve"] {
        let lab = lab_with_servers(2);
        let path = lab.write_services(&services(mode, &[0, 1])).unwrap();
        let limits = ["--max-connections", "2000"];
        let forwarder = lab.start_forwarder(&path, &limits).unwrap();
        let established_before = reason_count(&lab, "flow_established");
        let mut report = FloodReport::default();
        let flood = lab.client.enter(|| {
            // Under the flood the links drop packets (the flood and the
            // connections share them), so TCP retransmits with backoff: a
            // request may take seconds. Slow is not broken; a reset, a
            // closed connection or another node is.
            let patience = Duration::from_secs(60);
            let mut conns: Vec<(HttpConnection, String)> = (0..CONNECTIONS)
                .map(|_| {
                    let mut conn = HttpConnection::open_within(WEB, patience).expect("open a connection");
                    let node = conn.get().expect("first request").node;
                    (conn, node)
                })
                .collect();
            let mut cmd = lab.client.command("hping3");
            cmd.args(["--flood", "--rand-source", "--syn", "-p", "80"]).arg(VIP.to_string());
            let flood = forwarder_tests::netns::Process::spawn("hping3", cmd).expect("hping3");
            let start = std::time::Instant::now();
            // At least two rounds whatever the machine's speed: under the
            // flood a round of 1,000 requests took more than 10 s in a CI run.
            while start.elapsed() < Duration::from_secs(10) || report.rounds < 2 {
                for (i, (conn, node)) in conns.iter_mut().enumerate() {
                    match conn.get() {
                        Ok(answer) if answer.node == *node => report.requests += 1,
                        Ok(answer) => {
                            report.failures.push(format!("connection {i} moved to {}", answer.node))
                        }
                        Err(err) => report.failures.push(format!(
                            "connection {i} at {:.1} s: {err:#}",
                            start.elapsed().as_secs_f64()
                        )),
                    }
                }
                match HttpConnection::open_within(WEB, patience).and_then(|mut conn| conn.get()) {
                    Ok(_) => report.new_connections += 1,
                    Err(err) => report.failures.push(format!("a new connection: {err:#}")),
                }
                report.rounds += 1;
            }
            flood.signal(libc::SIGINT);
            std::thread::sleep(Duration::from_millis(500)); // its statistics
            // "N packets transmitted, M packets received, ..."
            let output = flood.output();
            let line = output.lines().find(|line| line.contains("packets transmitted"));
            let sent = line.and_then(|line| line.split_whitespace().next()?.parse::<u64>().ok());
            drop(flood);
            drop(conns);
            sent
        });
        let stats: forwarder::report::Stats =
            serde_json::from_str(&lab.cli_ok(&["stats", "--json"])).unwrap();
        let web = stats.services.iter().find(|s| s.name == "web").expect("web stats");
        let established = reason_count(&lab, "flow_established") - established_before;
        eprintln!(
            "{mode}: {} rounds, {} requests on {CONNECTIONS} established connections, {} new connections \
             during a flood of {flood:?} SYNs; web's new connections {}, established {established}, \
             half-open displaced {}, {} connections tracked ({} half-open)",
            report.rounds,
            report.requests,
            report.new_connections,
            web.totals.new_flows,
            reason_count(&lab, "half_open_displaced"),
            stats.connections,
            stats.half_open,
        );
        if !report.failures.is_empty() {
            let logs: Vec<String> = (1..=2)
                .map(|i| {
                    std::fs::read_to_string(lab.dir.path().join(format!("node{i}/error.log")))
                        .unwrap_or_default()
                })
                .collect();
            panic!(
                "{mode}: {} failures, the first {:?}, the last {:?}\nstats:\n{}\nnode logs:\n{}",
                report.failures.len(),
                &report.failures[..report.failures.len().min(3)],
                report.failures.last(),
                lab.cli_ok(&["stats"]),
                logs.join("\n")
                    + &lab.nodes[0].ns.exec("ss", "-s").unwrap_or_default()
                    + &lab.nodes[0].ns.exec("nstat", "-az").unwrap_or_default()
            );
        }
        assert!(report.rounds >= 2, "{mode}: the connections exchanged data throughout ({report:?})");
        assert!(
            web.totals.new_flows > 20 * CONNECTIONS as u64,
            "{mode}: the flood reached the datapath: {} new connections",
            web.totals.new_flows
        );
        forwarder.stop().unwrap();
    }
}
