//! `forwarder kube render`: recorded `kubectl get services,nodes -A -o json`
//! output in, a service file that `forwarder check` accepts out. Needs no
//! root and no cluster.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use forwarder_tests::forwarder_bin;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn forwarder(args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(forwarder_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run forwarder");
    let mut pipe = child.stdin.take().expect("stdin piped");
    pipe.write_all(stdin.unwrap_or("").as_bytes()).expect("write stdin");
    drop(pipe);
    let out = child.wait_with_output().expect("forwarder finishes");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/kube").join(name)
}

/// `forwarder check` on `text`, through a file.
fn check(text: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("services.toml");
    std::fs::write(&path, text).unwrap();
    forwarder(&["check", path.to_str().unwrap()], None)
}

/// Three nodes (node-b NotReady, node-c excluded), a Local ingress
/// controller with two TCP ports, a Cluster DNS Service on UDP and TCP 53
/// with source ranges, a MetalLB-class Service and the ClusterIP
/// `kubernetes` Service that are not ours.
#[test]
fn the_recorded_cluster_renders_to_a_valid_file() {
    let cluster = data("cluster.json");
    let run =
        forwarder(&["kube", "render", "--from", cluster.to_str().unwrap(), "--pool", "203.0.113.0/29"], None);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{}", run.stderr);
    let expected = std::fs::read_to_string(data("cluster.services.toml")).unwrap();
    assert_eq!(run.stdout, expected, "the reviewed rendering changed");
    for wanted in [
        "name = \"kube.ingress-nginx.ingress-nginx-controller.http\"",
        "mode = \"preserve\"",
        "health = { kind = \"http\", path = \"/healthz\", port = 32315",
        "protocol = \"udp\"",
        "source_ranges = [\"198.18.0.0/16\", \"192.0.2.0/24\"]",
    ] {
        assert!(run.stdout.contains(wanted), "{wanted} missing in\n{}", run.stdout);
    }
    // Only node-a is Ready and not excluded.
    for absent in ["198.18.2.12", "198.18.2.13", "storefront", "kubernetes."] {
        assert!(!run.stdout.contains(absent), "{absent} in\n{}", run.stdout);
    }
    let checked = check(&run.stdout);
    assert_eq!(checked.code, 0, "{}", checked.stderr);
    assert!(checked.stdout.ends_with(": ok: 4 services, 4 backends\n"), "{}", checked.stdout);
    // The same from stdin.
    let json = std::fs::read_to_string(&cluster).unwrap();
    let piped = forwarder(&["kube", "render", "--from", "-", "--pool", "203.0.113.0/29"], Some(&json));
    assert_eq!((piped.code, piped.stdout), (0, expected));
}

#[test]
fn a_service_file_gives_pools_and_keeps_its_hand_written_services() {
    let dir = tempfile::tempdir().unwrap();
    let services = dir.path().join("services.toml");
    let hand = "# hand-written, kept\n[[service]]\nname = \"legacy\"\nvip = \"203.0.113.1\"\nport = 80\n\
                protocol = \"tcp\"\nbackends = [\"198.18.2.50:30080\"]   # the old box\n\n\
                [kube]\npools = [\"203.0.113.0/29\"]\n";
    std::fs::write(&services, hand).unwrap();
    let cluster = data("cluster.json");
    let run = forwarder(
        &["kube", "render", "--from", cluster.to_str().unwrap(), "--services", services.to_str().unwrap()],
        None,
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    // Comments and layout kept; generated services go after the existing
    // ones (toml_edit keeps an array of tables together).
    let (services_part, kube_part) = hand.split_at(hand.find("[kube]").unwrap());
    assert!(run.stdout.starts_with(services_part), "{}", run.stdout);
    assert!(run.stdout.ends_with(kube_part), "{}", run.stdout);
    // 203.0.113.1 is the hand-written service's: the ingress gets .2.
    assert!(
        run.stdout
            .contains("name = \"kube.ingress-nginx.ingress-nginx-controller.http\"\nvip = \"203.0.113.2\""),
        "{}",
        run.stdout
    );
    let checked = check(&run.stdout);
    assert!(checked.stdout.ends_with(": ok: 5 services, 5 backends\n"), "{}", checked.stderr);
}

#[test]
fn problems_of_one_service_go_to_stderr() {
    let json = std::fs::read_to_string(data("cluster.json")).unwrap().replace(
        "\"externalTrafficPolicy\": \"Local\",",
        "\"externalTrafficPolicy\": \"Local\", \"loadBalancerIP\": \"192.0.2.99\",",
    );
    let run = forwarder(&["kube", "render", "--from", "-", "--pool", "203.0.113.0/29"], Some(&json));
    assert_eq!(run.code, 0);
    assert_eq!(
        run.stderr,
        "warning: Service ingress-nginx/ingress-nginx-controller: AllocationFailed: requested address \
         192.0.2.99: not in any pool (203.0.113.0/29)\n"
    );
    assert!(!run.stdout.contains("ingress-nginx"), "{}", run.stdout);
    assert!(run.stdout.contains("kube.kube-system.dns-external.dns"), "{}", run.stdout);
    assert_eq!(check(&run.stdout).code, 0);
}

#[test]
fn bad_input_is_one_line_and_a_failure() {
    let cluster = data("cluster.json");
    let cluster = cluster.to_str().unwrap();
    let cases: [(&[&str], &str, i32, &str); 5] = [
        (
            &["--from", "-", "--pool", "203.0.113.0/29"],
            "{ not json",
            1,
            "error: -: not JSON: key must be a string at line 1 column 3\n",
        ),
        (
            &["--from", "-", "--pool", "203.0.113.0/29"],
            "{\"items\": []}",
            1,
            "error: -: expected a Kubernetes List",
        ),
        (&["--from", cluster], "", 1, "error: no address pools: give --pool CIDR"),
        (
            &["--from", "/nonexistent.json", "--pool", "203.0.113.0/29"],
            "",
            1,
            "error: /nonexistent.json: No such file",
        ),
        (
            &["--from", cluster, "--pool", "203.0.113.1/29"],
            "",
            2,
            "error: invalid value '203.0.113.1/29' for '--pool <CIDR>'",
        ),
    ];
    for (args, stdin, code, start) in cases {
        let run = forwarder(&[&["kube", "render"], args].concat(), Some(stdin));
        assert_eq!(run.code, code, "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {}", run.stderr);
        assert!(run.stderr.starts_with(start), "{args:?}: {:?} should start with {start:?}", run.stderr);
        assert_eq!(run.stdout, "");
    }
}
