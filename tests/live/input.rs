//! Bad input refused in one line, changing nothing.

use super::*;

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

/// Thousands of malformed requests on the control socket (mutated JSON of
/// real requests, random bytes, unterminated and oversized lines) and
/// well-formed ones that name nothing or break the rules: each is refused
/// or the connection closed, nothing changes, and the daemon keeps serving
/// the VIP and its CLI.
#[test]
fn garbage_on_the_control_socket_changes_nothing_and_the_daemon_keeps_serving() {
    use std::{io::BufRead as _, os::unix::net::UnixStream};

    use forwarder::control::{Persist, Request, Response, socket_path};
    use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

    let lab = lab_with_servers(2);
    let path = lab.write_services(&service_file("snat", &[0, 1], "")).unwrap();
    let forwarder = lab.start_forwarder(&path, &[]).unwrap();
    let (list_before, file_before) =
        (lab.cli_ok(&["service", "list", "--json"]), std::fs::read_to_string(&path).unwrap());
    let socket = socket_path(&lab.run_dir());
    let persist = Persist::RuntimeOnly;
    let seeds: Vec<String> = [
        Request::ServiceList,
        Request::ServiceAdd {
            name: "x".into(),
            vip: VIP,
            port: 81,
            protocol: forwarder::config::Protocol::Tcp,
            mode: forwarder::config::Mode::Snat,
            backends: vec![SocketAddrV4::new(node_addr(0), 30080)],
            persist,
        },
        Request::BackendSetWeight {
            service: "web".into(),
            addr: SocketAddrV4::new(node_addr(0), 30080),
            weight: 5,
            persist,
        },
        Request::Apply { path: path.clone(), text: file_before.clone(), persist },
    ]
    .iter()
    .map(|r| serde_json::to_string(r).unwrap())
    .collect();
    // Well-formed, and wrong: each must be refused.
    let refused = [
        r#"{"op":"service_add","name":"y","vip":"0.0.0.0","port":80,"protocol":"tcp","mode":"snat","backends":["10.0.2.11:30080"],"persist":"runtime_only"}"#,
        r#"{"op":"service_add","name":"y","vip":"10.0.100.11","port":0,"protocol":"tcp","mode":"snat","backends":["10.0.2.11:30080"],"persist":"runtime_only"}"#,
        r#"{"op":"service_add","name":"y","vip":"10.0.100.11","port":80,"protocol":"tcp","mode":"snat","backends":[],"persist":"runtime_only"}"#,
        r#"{"op":"backend_set_weight","service":"web","addr":"10.0.2.11:30080","weight":4000000000,"persist":"runtime_only"}"#,
        r#"{"op":"service_remove","name":"nosuch","persist":"runtime_only"}"#,
        r#"{"op":"apply","path":"/nonexistent/x.toml","text":"[[service]]\nname = 1","persist":"runtime_only"}"#,
    ];
    let ask = |line: &[u8]| -> Option<String> {
        let mut stream = UnixStream::connect(&socket).expect("the control socket accepts");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // A write may fail once the daemon refused an oversized line and closed.
        let _ = stream.write_all(line).and_then(|()| stream.shutdown(std::net::Shutdown::Write));
        let mut answer = String::new();
        std::io::BufReader::new(stream).read_line(&mut answer).ok()?;
        Some(answer)
    };
    for line in refused {
        let answer = ask(format!("{line}\n").as_bytes()).expect("an answer");
        let response: Response = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer}: {e}"));
        assert!(matches!(response, Response::Refused(_)), "{line}: refused, not {answer}");
    }
    // Past the daemon's 16 MiB line limit, with and without an end.
    for oversized in [vec![b'{'; (16 << 20) + 2], [vec![b' '; (16 << 20) + 2], vec![b'\n']].concat()] {
        if let Some(answer) = ask(&oversized).filter(|a| !a.is_empty()) {
            let response: Response =
                serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{answer}: {e}"));
            assert!(matches!(response, Response::Refused(_)), "oversized: refused, not {answer}");
        }
    }
    let mut rng = SmallRng::seed_from_u64(7);
    let (mut sent, mut answered) = (0, 0);
    while sent < 3000 {
        let mut line: Vec<u8> = match rng.random_range(0..10) {
            0 => (0..rng.random_range(0..300)).map(|_| rng.random()).collect(),
            _ => seeds[rng.random_range(0..seeds.len())].clone().into_bytes(),
        };
        for _ in 0..rng.random_range(1..6) {
            if line.is_empty() {
                break;
            }
            let at = rng.random_range(0..line.len());
            match rng.random_range(0..4) {
                0 => line[at] = rng.random(),
                1 => {
                    line.remove(at);
                }
                2 => line.insert(at, b"{}[]\":,0-9e\\"[rng.random_range(0..12)]),
                _ => line.truncate(at),
            }
        }
        // What still reads as a request might really change something.
        if serde_json::from_slice::<Request>(&line).is_ok() {
            continue;
        }
        if rng.random_ratio(9, 10) {
            line.push(b'\n');
        }
        sent += 1;
        let answer = ask(&line).unwrap_or_default();
        // A connection that sent nothing but an end is not a request.
        if line.is_empty() || line == b"\n" {
            answered += 1;
            continue;
        }
        let response: Response = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("an answer to {}: {answer:?}: {e}", String::from_utf8_lossy(&line)));
        assert!(matches!(response, Response::Refused(_)), "refused, not {answer}");
        answered += 1;
    }
    assert_eq!(answered, sent, "every request answered");
    assert_eq!(lab.cli_ok(&["service", "list", "--json"]), list_before, "nothing changed");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), file_before, "the file neither");
    assert!(lab.client.enter(|| http_get(WEB)).is_ok(), "the VIP still serves");
    lab.cli_ok(&["stats"]);
    forwarder.stop().unwrap();
}
