//! CLI changes and reloads while a client keeps connecting.

use super::*;

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

/// A service file written in place more slowly than the watcher's
/// debounce: the part written so far is a valid file with fewer services,
/// and is never applied; the whole file is, once its writer closes it.
#[test]
fn a_file_written_in_place_slowly_is_applied_only_whole() {
    let lab = lab_with_servers(3);
    let path = lab.write_services(&service_file("snat", &[0, 1], "")).unwrap();
    let mut forwarder = lab.start_forwarder(&path, &[]).unwrap();
    let whole = service_file("snat", &[0, 1, 2], "");
    let split = whole.find("[[service]]\nname = \"dns\"").expect("dns follows web");
    assert!(
        ServiceFile::parse(&path, &whole[..split]).is_ok_and(|f| f.services.len() == 1),
        "a valid prefix"
    );
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&whole.as_bytes()[..split]).unwrap();
    file.sync_data().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let listed = lab.cli_ok(&["service", "list"]);
    assert!(listed.contains("dns"), "the prefix was not applied:\n{listed}");
    assert!(!forwarder.output().contains("reloaded"), "{}", forwarder.output());
    file.write_all(&whole.as_bytes()[split..]).unwrap();
    drop(file);
    forwarder.wait_for("reloaded", 1, Duration::from_secs(10)).unwrap();
    let listed = lab.cli_ok(&["service", "list"]);
    assert!(listed.contains("dns") && listed.contains(&node_addr(2).to_string()), "{listed}");
    assert_eq!(forwarder.output().matches("reloaded").count(), 1, "one reload, of the whole file");
    forwarder.stop().unwrap();
}
