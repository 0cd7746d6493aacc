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
