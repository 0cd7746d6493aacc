//! What the daemon needs: no CAP_SYS_ADMIN once a bpffs is mounted (as
//! systemd mounts /sys/fs/bpf at boot, or the unit's privileged
//! `ExecStartPre` does), which is how the unit runs it.

use std::process::Command;

use forwarder_tests::netns::Process;

use super::*;

/// `CAP_SYS_ADMIN`'s bit in `/proc/PID/status` capability masks.
const CAP_SYS_ADMIN: u32 = 21;

fn effective_caps(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let line = status.lines().find_map(|l| l.strip_prefix("CapEff:")).expect("CapEff line");
    u64::from_str_radix(line.trim(), 16).expect("hex mask")
}

/// Started with only the unit's capabilities in its bounding set (so in
/// no set after exec: no CAP_SYS_ADMIN, no CAP_DAC_OVERRIDE...), the
/// daemon loads, attaches, forwards, answers the CLI, reloads and stops.
#[test]
fn the_daemon_runs_without_cap_sys_admin() {
    require_root();
    let mut lab = Lab::with_flavour("fwp", 1, Flavour::TunedXdp).expect("lab");
    lab.start_servers().expect("node servers");
    let path = lab.write_services(&service_file("snat", &[0], "")).unwrap();
    let plain = lab.forwarder_command(&path, &[]);
    // `ip netns exec NS` FORWARDER ARGS, with setpriv between.
    let args: Vec<_> = plain.get_args().map(ToOwned::to_owned).collect();
    let mut cmd = Command::new(plain.get_program());
    cmd.args(&args[..3])
        .args(["setpriv", "--bounding-set", "-all,+bpf,+net_admin,+perfmon,+sys_resource", "--"])
        .args(&args[3..]);
    for (key, value) in plain.get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    let mut forwarder = Process::spawn("forwarder", cmd).unwrap();
    forwarder.wait_for("forwarding;", 1, Duration::from_secs(30)).unwrap();
    let caps = effective_caps(forwarder.id());
    assert_eq!(caps & (1 << CAP_SYS_ADMIN), 0, "CapEff {caps:x} lacks CAP_SYS_ADMIN");
    assert_ne!(caps & (1 << 39), 0, "CapEff {caps:x} has CAP_BPF");
    assert_eq!(lab.client.enter(|| http_get(WEB)).unwrap().node, "node1");
    assert!(lab.cli_ok(&["stats"]).contains("web"));
    lab.write_services(&service_file("preserve", &[0], "")).unwrap();
    forwarder.signal(libc::SIGHUP);
    forwarder.wait_for("reloaded", 1, Duration::from_secs(10)).unwrap();
    assert!(forwarder.stop().unwrap().success());
}

/// The unit file's `SystemCallFilter=` and `RestrictAddressFamilies=`.
fn unit_sandbox() -> (Vec<String>, Vec<String>) {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../forwarder/packaging/forwarder.service"
    ))
    .expect("the unit file");
    let values = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key))
            .flat_map(|v| v.split_whitespace().map(ToOwned::to_owned).collect::<Vec<_>>())
            .collect()
    };
    (values("SystemCallFilter="), values("RestrictAddressFamilies="))
}

/// Every system call the filter `items` allows: groups (`@name`) expanded
/// as systemd-analyze lists them, recursively.
fn allowed_syscalls(items: &[String]) -> std::collections::HashSet<String> {
    let listing = forwarder_tests::netns::run(Command::new("systemd-analyze").arg("syscall-filter")).unwrap();
    let mut groups: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    let mut current = None;
    for line in listing.lines() {
        if let Some(group) = line.strip_prefix('@') {
            current = Some(format!("@{}", group.trim()));
        } else if let (Some(group), item) = (&current, line.trim())
            && !item.is_empty()
            && !item.starts_with('#')
        {
            groups.entry(group.clone()).or_default().push(item.to_owned());
        }
    }
    let mut allowed = std::collections::HashSet::new();
    let mut todo: Vec<String> = items.to_vec();
    while let Some(item) = todo.pop() {
        match groups.get(&item) {
            Some(members) if allowed.insert(item.clone()) => todo.extend(members.iter().cloned()),
            Some(_) => {}
            None => {
                allowed.insert(item);
            }
        }
    }
    allowed
}

/// Under strace through a start, traffic, CLI calls, health probes, a
/// reload and a stop, the daemon makes only system calls the unit's
/// `SystemCallFilter=` allows and opens only sockets of the families
/// `RestrictAddressFamilies=` allows (a call outside them would kill it,
/// or fail, under systemd).
#[test]
fn the_daemon_stays_inside_its_units_sandbox() {
    require_root();
    let (filter, families) = unit_sandbox();
    assert!(!filter.is_empty() && !families.is_empty(), "the unit sets both");
    let allowed = allowed_syscalls(&filter);
    let mut lab = Lab::with_flavour("fws", 1, Flavour::TunedXdp).expect("lab");
    lab.start_servers().expect("node servers");
    let health = "health = { kind = \"http\", path = \"/\", interval = \"200ms\" }";
    let path = lab.write_services(&service_file("snat", &[0], health)).unwrap();
    let trace = path.with_file_name("strace.out");
    let plain = lab.forwarder_command(&path, &["--metrics", "127.0.0.1:9464"]);
    let args: Vec<_> = plain.get_args().map(ToOwned::to_owned).collect();
    let mut cmd = Command::new(plain.get_program());
    cmd.args(&args[..3]).args(["strace", "-f", "-qq", "-o"]).arg(&trace).arg("--").args(&args[3..]);
    for (key, value) in plain.get_envs() {
        if let Some(value) = value {
            cmd.env(key, value);
        }
    }
    let mut strace = Process::spawn("strace", cmd).unwrap();
    strace.wait_for("forwarding;", 1, Duration::from_secs(60)).unwrap();
    assert_eq!(lab.client.enter(|| http_get(WEB)).unwrap().node, "node1");
    for verb in [&["stats"][..], &["service", "list"], &["flows"]] {
        lab.cli_ok(verb);
    }
    let metrics = lab.forwarder.enter(|| {
        let mut stream = TcpStream::connect("127.0.0.1:9464").expect("metrics port");
        stream.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        body
    });
    std::thread::sleep(Duration::from_millis(500));
    lab.write_services(&service_file("preserve", &[0], health)).unwrap();
    strace.wait_for("reloaded", 1, Duration::from_secs(10)).unwrap();
    // The daemon is strace's child; strace exits with it.
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", strace.id())).unwrap();
    let daemon: i32 = children.split_whitespace().next().expect("the traced daemon").parse().unwrap();
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(daemon, libc::SIGTERM) };
    strace.wait(Duration::from_secs(20)).unwrap();

    let text = std::fs::read_to_string(&trace).unwrap();
    let mut calls = std::collections::BTreeSet::new();
    let mut opened = std::collections::BTreeSet::new();
    for line in text.lines() {
        let rest = line.split_once(' ').map_or(line, |(_, rest)| rest).trim_start();
        let Some((name, args)) = rest.split_once('(') else { continue };
        // Resumed calls, signals, exits, and "???": a call strace caught
        // mid-way as a thread exited, whose name it could not read.
        if name.starts_with('<') || name.starts_with("---") || name.starts_with("+++") || name == "???" {
            continue;
        }
        calls.insert(name.to_owned());
        if name == "socket" {
            opened.insert(args.split(',').next().unwrap_or("").to_owned());
        }
    }
    assert!(calls.contains("bpf") && calls.len() > 30, "the trace is real: {calls:?}");
    let outside: Vec<_> = calls.iter().filter(|c| !allowed.contains(*c)).collect();
    assert!(outside.is_empty(), "system calls outside SystemCallFilter={filter:?}: {outside:?}");
    let families_outside: Vec<_> = opened.iter().filter(|f| !families.contains(f)).collect();
    assert!(families_outside.is_empty(), "socket families outside {families:?}: {families_outside:?}");
    eprintln!(
        "sandbox: {} distinct system calls, socket families {opened:?}; metrics {} bytes",
        calls.len(),
        metrics.len()
    );
}
