use super::*;

const GOOD: &str = r#"
snat_ip = "198.18.2.1"

[[service]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
mode = "snat"
backends = ["198.18.2.11:30080", "198.18.2.12:30080"]

[[service]]
name = "dns"
vip = "203.0.113.10"
port = 53
protocol = "udp"
mode = "preserve"
backends = [{ addr = "198.18.2.11:30053", weight = 2 }, { addr = "198.18.2.12:30053" }]
"#;

fn parse(text: &str) -> Result<ServiceFile, ConfigError> {
    ServiceFile::parse(Path::new("svc.toml"), text)
}

#[test]
fn parses_the_documented_format() {
    let file = parse(GOOD).unwrap();
    assert_eq!(file.snat_ip, [Ipv4Addr::new(198, 18, 2, 1)]);
    let [web, dns] = file.services.as_slice() else { panic!("two services") };
    assert_eq!(web.name, "web");
    assert_eq!(
        (web.vip, web.port, web.protocol, web.mode),
        (Ipv4Addr::new(203, 0, 113, 10), 80, Protocol::Tcp, Mode::Snat)
    );
    assert_eq!(web.backends[1], BackendSpec { addr: "198.18.2.12:30080".parse().unwrap(), weight: 1 });
    assert_eq!((dns.protocol, dns.mode), (Protocol::Udp, Mode::Preserve));
    assert_eq!(dns.backends.iter().map(|b| b.weight).collect::<Vec<_>>(), [2, 1]);
}

#[test]
fn health_checks_parse_with_defaults() {
    let text = GOOD.replace(
        "mode = \"preserve\"",
        "mode = \"preserve\"\nhealth = { kind = \"http\", port = 32000, interval = \"500ms\", rise = 1 }",
    );
    let file = parse(&text).unwrap();
    assert_eq!(file.services[0].health, None);
    let health = file.services[1].health.clone().unwrap();
    assert_eq!(health.kind, HealthKind::Http { path: "/healthz".to_owned() });
    assert_eq!(health.port, Some(32000));
    assert_eq!(health.interval, std::time::Duration::from_millis(500));
    assert_eq!(health.timeout, std::time::Duration::from_millis(500).min(health::DEFAULT_TIMEOUT));
    assert_eq!((health.rise, health.fall), (1, health::DEFAULT_FALL));
}

#[test]
fn mode_defaults_to_snat_and_snat_ip_is_optional() {
    let text = "[[service]]\nname = \"a\"\nvip = \"10.0.0.1\"\nport = 1\nprotocol = \"udp\"\nbackends = [\"10.0.1.1:2\"]\n";
    let file = parse(text).unwrap();
    assert!(file.snat_ip.is_empty());
    assert_eq!(file.services[0].mode, Mode::Snat);
}

#[test]
fn snat_ip_takes_one_address_or_a_pool_and_round_trips() {
    let text = GOOD.replacen(r#"snat_ip = "198.18.2.1""#, r#"snat_ip = ["198.18.2.1", "198.18.2.2"]"#, 1);
    let file = parse(&text).unwrap();
    assert_eq!(file.snat_ip, [Ipv4Addr::new(198, 18, 2, 1), Ipv4Addr::new(198, 18, 2, 2)]);
    // Rendered back as it was written, and read back the same.
    let rendered = edit::Editor::render(&file).text();
    assert!(rendered.contains(r#"snat_ip = ["198.18.2.1", "198.18.2.2"]"#), "{rendered}");
    assert_eq!(parse(&rendered).unwrap(), file);
    // Requests of daemons that knew one address (or none) still read.
    let json = serde_json::to_value(&file).unwrap();
    assert_eq!(json["snat_ip"], serde_json::json!(["198.18.2.1", "198.18.2.2"]));
    for (old, want) in [
        (serde_json::json!("198.18.2.1"), vec![Ipv4Addr::new(198, 18, 2, 1)]),
        (serde_json::Value::Null, vec![]),
    ] {
        let mut json = json.clone();
        json["snat_ip"] = old;
        let read: ServiceFile = serde_json::from_value(json).unwrap();
        assert_eq!(read.snat_ip, want);
    }
    assert_eq!(
        check_snat_ips(&[Ipv4Addr::new(127, 0, 0, 1)]).unwrap_err(),
        "snat_ip 127.0.0.1 is not a unicast address"
    );
}

#[test]
fn one_port_may_serve_tcp_and_udp() {
    let file = parse(&GOOD.replace("port = 53", "port = 80")).unwrap();
    assert_eq!(file.services[1].port, file.services[0].port);
}

#[test]
fn an_empty_file_has_no_services() {
    assert_eq!(parse("").unwrap(), ServiceFile { snat_ip: vec![], services: vec![], kube: None });
}

/// Replaces `from` with `to` in the good file and expects an error at
/// `line` containing `message`.
#[test]
fn every_validation_error_names_line_and_problem() {
    let seventeen_same = format!("snat_ip = [{}]", vec!["\"198.18.3.1\""; 17].join(", "));
    let seventeen = format!(
        "snat_ip = [{}]",
        (1..=17).map(|i| format!("\"198.18.3.{i}\"")).collect::<Vec<_>>().join(", ")
    );
    let cases: &[(&str, &str, &str, usize, &str)] = &[
        (
            "bad vip",
            r#"vip = "203.0.113.10""#,
            r#"vip = "203.0.113.300""#,
            6,
            "vip \"203.0.113.300\" is not an IPv4 address",
        ),
        (
            "multicast vip",
            r#"vip = "203.0.113.10""#,
            r#"vip = "224.0.0.1""#,
            6,
            "vip 224.0.0.1 is not a unicast address",
        ),
        ("port 0", "port = 80", "port = 0", 7, "port must be between 1 and 65535, not 0"),
        ("port too big", "port = 80", "port = 65536", 7, "port must be between 1 and 65535, not 65536"),
        ("port not a number", "port = 80", "port = \"80\"", 7, "invalid type: string \"80\", expected i64"),
        ("unknown protocol", r#"protocol = "tcp""#, r#"protocol = "sctp""#, 8, "unknown protocol \"sctp\""),
        ("unknown mode", r#"mode = "snat""#, r#"mode = "dsr""#, 9, "unknown mode \"dsr\""),
        (
            "no backends",
            r#"backends = ["198.18.2.11:30080", "198.18.2.12:30080"]"#,
            "backends = []",
            10,
            "service \"web\" has no backends",
        ),
        (
            "backend without port",
            r#""198.18.2.12:30080"]"#,
            r#""198.18.2.12"]"#,
            10,
            "backend \"198.18.2.12\" is not IPv4:PORT",
        ),
        (
            "backend port 0",
            r#""198.18.2.12:30080"]"#,
            r#""198.18.2.12:0"]"#,
            10,
            "backend \"198.18.2.12:0\" has port 0",
        ),
        (
            "duplicate backend",
            r#""198.18.2.12:30080"]"#,
            r#""198.18.2.11:30080"]"#,
            10,
            "duplicate backend 198.18.2.11:30080 in service \"web\"",
        ),
        ("weight too big", "weight = 2", "weight = 1001", 18, "weight 1001 is out of range 0..=1000"),
        ("negative weight", "weight = 2", "weight = -1", 18, "weight -1 is out of range 0..=1000"),
        ("weight not a number", "weight = 2", "weight = \"2\"", 18, "backend weight must be an integer"),
        ("unknown backend field", "weight = 2", "wieght = 2", 18, "unknown backend field \"wieght\""),
        (
            "backend table without addr",
            r#"{ addr = "198.18.2.12:30053" }"#,
            "{ weight = 3 }",
            18,
            "backend table needs addr",
        ),
        ("duplicate name", r#"name = "dns""#, r#"name = "web""#, 12, "duplicate service name \"web\""),
        ("bad name", r#"name = "dns""#, r#"name = "d n s""#, 13, "invalid service name \"d n s\""),
        (
            "duplicate listener",
            "port = 53\nprotocol = \"udp\"",
            "port = 80\nprotocol = \"tcp\"",
            12,
            "duplicate VIP:port:protocol 203.0.113.10:80/tcp",
        ),
        ("unknown key", r#"mode = "preserve""#, r#"mdoe = "preserve""#, 17, "unknown field `mdoe`"),
        ("missing key", "protocol = \"udp\"\n", "", 12, "missing field `protocol`"),
        (
            "bad snat ip",
            r#"snat_ip = "198.18.2.1""#,
            r#"snat_ip = "nope""#,
            2,
            "snat_ip \"nope\" is not an IPv4 address",
        ),
        ("empty snat pool", r#"snat_ip = "198.18.2.1""#, "snat_ip = []", 2, "snat_ip is an empty list"),
        (
            "snat pool twice",
            r#"snat_ip = "198.18.2.1""#,
            r#"snat_ip = ["198.18.2.1", "198.18.2.2", "198.18.2.1"]"#,
            2,
            "snat_ip names 198.18.2.1 twice",
        ),
        (
            "snat pool of numbers",
            r#"snat_ip = "198.18.2.1""#,
            "snat_ip = [1, 2]",
            2,
            "snat_ip entries are strings, not integer",
        ),
        ("snat ip a number", r#"snat_ip = "198.18.2.1""#, "snat_ip = 7", 2, "a string or a list of strings"),
        (
            "multicast snat ip in a list of several lines",
            r#"snat_ip = "198.18.2.1""#,
            "snat_ip = [\n  \"198.18.2.1\",\n  \"224.0.0.1\",\n]",
            4,
            "snat_ip 224.0.0.1 is not a unicast address",
        ),
        (
            "repeated snat ip in a list of several lines",
            r#"snat_ip = "198.18.2.1""#,
            "snat_ip = [\n  \"198.18.2.1\",\n  \"198.18.2.2\",\n  \"198.18.2.1\",\n]",
            5,
            "snat_ip names 198.18.2.1 twice",
        ),
        (
            "number in a snat ip list of several lines",
            r#"snat_ip = "198.18.2.1""#,
            "snat_ip = [\n  \"198.18.2.1\",\n  7,\n]",
            4,
            "snat_ip entries are strings, not integer",
        ),
        (
            "snat pool member not unicast",
            r#"snat_ip = "198.18.2.1""#,
            r#"snat_ip = ["198.18.2.1", "224.0.0.1"]"#,
            2,
            "snat_ip 224.0.0.1 is not a unicast address",
        ),
        (
            "snat pool too big",
            r#"snat_ip = "198.18.2.1""#,
            &seventeen,
            2,
            "snat_ip has 17 addresses; at most 16",
        ),
        (
            "too many snat ips, repeated: the count is what is reported",
            r#"snat_ip = "198.18.2.1""#,
            &seventeen_same,
            2,
            "snat_ip has 17 addresses; at most 16",
        ),
        (
            "not toml",
            "[[service]]\nname = \"web\"",
            "[[service]]\nname = web",
            5,
            "string values must be quoted",
        ),
    ];
    for (name, from, to, line, message) in cases {
        assert!(GOOD.contains(from), "{name}: fixture text not found");
        let text = GOOD.replacen(from, to, 1);
        let err = parse(&text).expect_err(name).to_string();
        let prefix = format!("svc.toml:{line}:");
        assert!(err.starts_with(&prefix), "{name}: {err:?} should start with {prefix:?}");
        assert!(err.contains(message), "{name}: {err:?} should contain {message:?}");
        assert_eq!(err.lines().count(), 1, "{name}: one line: {err:?}");
    }
}

#[test]
fn too_many_backends_is_an_error() {
    let backends: Vec<String> =
        (0..=MAX_BACKENDS_PER_SERVICE).map(|i| format!("\"10.{}.{}.1:80\"", i / 256, i % 256)).collect();
    let text = format!(
        "[[service]]\nname = \"big\"\nvip = \"10.0.0.1\"\nport = 1\nprotocol = \"tcp\"\nbackends = [{}]\n",
        backends.join(", ")
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("has 1001 backends; at most 1000"), "{err}");
}

#[test]
fn missing_file_names_the_path() {
    let err = ServiceFile::load(Path::new("/nonexistent/services.toml")).unwrap_err().to_string();
    assert!(err.starts_with("/nonexistent/services.toml: "), "{err}");
}

#[test]
fn line_column_counts_from_one() {
    assert_eq!(line_column("ab\ncd", 0), (1, 1));
    assert_eq!(line_column("ab\ncd", 4), (2, 2));
}

/// Random and mutated service files (bytes flipped, cut, duplicated,
/// TOML punctuation and out-of-range values inserted) never panic: each
/// parses or is refused with a message naming the file.
#[test]
fn mutated_service_files_parse_or_are_refused_never_panic() {
    use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};
    let mut rng = SmallRng::seed_from_u64(11);
    let tokens: [&str; 12] = [
        "\"",
        "[",
        "]]",
        "=",
        "{",
        ",",
        "\n[[service]]\n",
        "99999999999",
        "-1",
        "\"0.0.0.0\"",
        "\"300.1.1.1:80\"",
        "weight = 1e9",
    ];
    let (mut refused, mut parsed) = (0, 0);
    for _ in 0..20_000 {
        let mut text = GOOD.as_bytes().to_vec();
        for _ in 0..rng.random_range(1..5) {
            let at = rng.random_range(0..text.len());
            match rng.random_range(0..5) {
                0 => text[at] = rng.random(),
                1 => text.truncate(at),
                2 => {
                    let end = (at + rng.random_range(1..40)).min(text.len());
                    let copy = text[at..end].to_vec();
                    text.splice(at..at, copy);
                }
                3 => {
                    let end = (at + rng.random_range(1..20)).min(text.len());
                    text.drain(at..end);
                }
                _ => {
                    let token = tokens[rng.random_range(0..tokens.len())].as_bytes();
                    text.splice(at..at, token.iter().copied());
                }
            }
            if text.is_empty() {
                break;
            }
        }
        let text = String::from_utf8_lossy(&text);
        match parse(&text) {
            Ok(_) => parsed += 1,
            Err(err) => {
                assert!(err.to_string().contains("svc.toml"), "names the file: {err}");
                refused += 1;
            }
        }
    }
    assert!(refused > 10_000 && parsed > 100, "{refused} refused, {parsed} parsed");
}
