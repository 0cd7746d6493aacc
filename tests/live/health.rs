//! Health checks taking a dead node out of rotation and bringing it back.

use super::*;

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

/// A thousand services on the same two nodes, checked alike: one probe
/// per node serves them all, so a node dying is one transition and one
/// change, and every service is off it within the check's detection time
/// plus about a second (the figure is printed; the bound asserted is loose).
#[test]
fn a_dead_node_leaves_a_thousand_checked_services_at_once() {
    const SERVICES: u16 = 1000;
    let mut lab = lab_with_servers(2);
    let backends = format!("[\"{}:30080\", \"{}:30080\"]", node_addr(0), node_addr(1));
    let health = "health = { kind = \"tcp\", interval = \"500ms\", timeout = \"200ms\", rise = 1, fall = 1 }";
    let file: String = (0..SERVICES)
        .map(|i| {
            format!(
                "[[service]]\nname = \"s{i}\"\nvip = \"{VIP}\"\nport = {}\nprotocol = \"tcp\"\nbackends = {backends}\n{health}\n\n",
                10_000 + i
            )
        })
        .collect();
    let path = lab.write_services(&file).unwrap();
    let mut forwarder = lab.start_forwarder(&path, &[]).unwrap();
    let off_node2 = |lab: &Lab| {
        list(lab)
            .iter()
            .filter(|s| !s.backends.iter().any(|b| b.addr.ip() == &node_addr(1) && b.in_rotation))
            .count()
    };
    assert_eq!(off_node2(&lab), 0, "all start in rotation");

    lab.stop_server(1).unwrap();
    let stopped = Instant::now();
    while off_node2(&lab) < usize::from(SERVICES) {
        assert!(stopped.elapsed() < Duration::from_secs(10), "{} services off node2", off_node2(&lab));
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = stopped.elapsed();
    eprintln!("health: {SERVICES} services off a dead node {took:?} after it died (interval 500 ms, fall 1)");
    forwarder.wait_for("backend unhealthy: out of rotation", 1, Duration::from_secs(1)).unwrap();
    assert_eq!(
        forwarder.output().matches("backend unhealthy").count(),
        1,
        "one probe per node, not per service"
    );
    let last = SocketAddrV4::new(VIP, 10_000 + SERVICES - 1);
    for _ in 0..5 {
        assert_eq!(lab.client.enter(|| http_get(last)).unwrap().node, "node1", "only node1 serves");
    }
    forwarder.stop().unwrap();
}
