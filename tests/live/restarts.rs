//! Restarts, hand-overs and `forwarder down`: what survives and what is left.

use forwarder_common::{
    conntrack::FLAG_REPLY,
    maps::{Backend, BackendKey, FlowEntry, FlowKey, PROTO_TCP, wire_port},
};
use forwarder_tests::lab::HTTP_NODEPORT;

use super::*;

/// The program the daemon's pinned link on an interface runs.
fn prog_id(lab: &Lab, iface: &str) -> Option<u32> {
    lab.attached(iface).map(|(hook, id)| {
        assert_eq!(hook, lab.flavour.hook(), "attached at the flavour's hook");
        id
    })
}

/// The SNAT port secret in the lab's pinned state.
fn pinned_secret(lab: &Lab) -> u64 {
    let path = lab.pin_dir().join(format!("v{}/maps/SECRET", forwarder_common::maps::LAYOUT_VERSION));
    let map = aya::maps::MapData::from_pin(&path).expect("pinned SECRET map");
    let secret = aya::maps::Array::<_, u64>::try_from(aya::maps::Map::Array(map)).expect("an array");
    secret.get(&0, 0).expect("its entry")
}

fn pinned_map(lab: &Lab, name: &str) -> std::path::PathBuf {
    lab.pin_dir().join(format!("v{}/maps/{name}", forwarder_common::maps::LAYOUT_VERSION))
}

/// The pinned half-open table.
fn pinned_half_open(lab: &Lab) -> aya::maps::HashMap<aya::maps::MapData, FlowKey, FlowEntry> {
    let map = aya::maps::MapData::from_pin(pinned_map(lab, "HALF_OPEN")).expect("pinned HALF_OPEN map");
    aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).expect("an LRU hash")
}

/// Whether the lab's pinned `REPLY_PORTS` map has the bit of `port`.
fn reply_port_pinned(lab: &Lab, port: u16) -> bool {
    let map = aya::maps::MapData::from_pin(pinned_map(lab, "REPLY_PORTS")).expect("pinned REPLY_PORTS map");
    let ports = aya::maps::Array::<_, u64>::try_from(aya::maps::Map::Array(map)).expect("an array");
    let (word, bit) = forwarder_common::maps::reply_port_bit(wire_port(port));
    ports.get(&word, 0).expect("its word") & bit != 0
}

/// Open connections keep exchanging data across a SIGKILL of the daemon
/// and a restart, and across a hand-over (SIGUSR2) and a restart; each
/// restart swaps a new program in (an upgrade) without a gap: a client
/// requesting all along sees no failure. The random SNAT port secret is
/// the pinned one throughout. The first restart finds no `REPLY_PORTS`
/// pin, as after a release without that map, and fills the new one.
#[test]
fn connections_survive_kill_and_handover_restarts() {
    let lab = lab_with_servers(2);
    let path = lab.write_services(&service_file("snat", &[0, 1], "")).unwrap();
    let mut forwarder = lab.start_forwarder(&path, &[]).unwrap();
    let secret = pinned_secret(&lab);
    assert_ne!(secret, 0, "a secret is drawn at the first start");
    let mut kept = open_connections(&lab, 8);
    let before = nodes_of(&mut kept);
    let load = Load::start(&lab.client, WEB, PAUSE);

    for signal in [libc::SIGKILL, libc::SIGUSR2] {
        let program = prog_id(&lab, LAN_IFACE).expect("attached");
        forwarder.signal(signal);
        let status = forwarder.wait(Duration::from_secs(10)).unwrap();
        assert_eq!(status.success(), signal == libc::SIGUSR2, "{status}");
        // No daemon: the datapath forwards on.
        assert_eq!(prog_id(&lab, LAN_IFACE), Some(program));
        assert_eq!(nodes_of(&mut kept), before, "open connections work with no daemon");
        let fresh: Vec<_> = lab.client.enter(|| (0..10).map(|_| http_get(WEB)).collect());
        assert!(fresh.iter().all(Result::is_ok), "new connections work with no daemon: {fresh:?}");

        // As a release without `REPLY_PORTS` would leave it: no such pin,
        // and a half-open connection to a port no backend has any more.
        let gone = FlowKey::new(0x0b00_000a, 0x0c00_000a, wire_port(31999), wire_port(40000), PROTO_TCP);
        if signal == libc::SIGKILL {
            assert!(reply_port_pinned(&lab, HTTP_NODEPORT), "the backends' port is marked");
            assert!(!reply_port_pinned(&lab, 31999), "a port no backend had is not");
            assert!(!reply_port_pinned(&lab, 31998), "nor this one");
            std::fs::remove_file(pinned_map(&lab, "REPLY_PORTS")).unwrap();
            let now = forwarder::conntrack::now_ns();
            let reply = FlowEntry::rewriting(&gone, &gone.reversed(), 0, 0, FLAG_REPLY, now);
            pinned_half_open(&lab).insert(gone, reply, 0).unwrap();
            // And a backend no service names (the new daemon prunes it).
            let map =
                aya::maps::MapData::from_pin(pinned_map(&lab, "BACKENDS")).expect("pinned BACKENDS map");
            let mut backends =
                aya::maps::HashMap::<_, BackendKey, Backend>::try_from(aya::maps::Map::HashMap(map))
                    .expect("a hash");
            let key = BackendKey { service_id: 4000, bank: 0, _pad: 0, index: 0 };
            let orphan =
                Backend { addr: 0x0b00_000a, snat_addr: 0, port: wire_port(31998), _pad: 0, id: 4000 };
            backends.insert(key, orphan, 0).unwrap();
        }
        forwarder = lab.start_forwarder(&path, &[]).unwrap();
        assert!(forwarder.output().contains("adopted=true"), "{}", forwarder.output());
        assert!(reply_port_pinned(&lab, HTTP_NODEPORT), "the adopted backends' port is marked");
        if signal == libc::SIGKILL {
            assert!(reply_port_pinned(&lab, 31999), "and that of the adopted half-open connection");
            assert!(reply_port_pinned(&lab, 31998), "and that of the adopted backend");
            pinned_half_open(&lab).remove(&gone).unwrap();
        }
        let upgraded = prog_id(&lab, LAN_IFACE).expect("still attached");
        assert_ne!(upgraded, program, "the new daemon's program runs");
        assert_eq!(pinned_secret(&lab), secret, "the adopted secret is kept");
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
    // The lab's default flavour finds the pins where `run` put them by
    // default; the tuned one names its own directory.
    let pin_dir = lab.pin_dir();
    let mut down = vec!["down"];
    if lab.flavour == Flavour::TunedXdp {
        down.extend(["--pin-dir", pin_dir.to_str().unwrap()]);
    }
    let (code, _, stderr) = lab.cli(&down);
    assert_eq!(code, 0, "{stderr}");
    for iface in [CLIENT_IFACE, LAN_IFACE] {
        assert!(!lab.forwards_on(iface), "{iface} detached");
    }
    assert_eq!(managed(), 0);
    assert!(!lab.forwarder.ip(&format!("addr show {CLIENT_IFACE}")).unwrap().contains("10.0.100.10/32"));
    let forwarding =
        lab.forwarder.exec("cat", &format!("/proc/sys/net/ipv4/conf/{LAN_IFACE}/forwarding")).unwrap();
    assert_eq!(forwarding.trim(), "0");
    assert_eq!(std::fs::read_dir(lab.pin_dir()).map(Iterator::count).unwrap_or(0), 0, "no pins left");
    assert!(lab.client.enter(|| http_get(WEB)).is_err(), "nothing forwards any more");
}

/// A successor that fails to start after a crash (here: a capacity too
/// small for the service file) leaves the host as it found it: the
/// predecessor's datapath keeps forwarding, the sysctls it switched on stay
/// on, held and new connections work; the next good start adopts it all.
#[test]
fn a_failed_restart_leaves_the_datapath_forwarding() {
    let lab = lab_with_servers(2);
    let path = lab.write_services(&service_file("snat", &[0, 1], "")).unwrap();
    let forwarder = lab.start_forwarder(&path, &[]).unwrap();
    let mut kept = open_connections(&lab, 4);
    let before = nodes_of(&mut kept);
    forwarder.signal(libc::SIGKILL);
    forwarder.wait(Duration::from_secs(10)).unwrap();

    // Two services (web, dns) do not fit one.
    let failed = lab.forwarder_command(&path, &["--max-services", "1"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("too many services"), "{stderr}");
    let forwarding =
        lab.forwarder.exec("cat", &format!("/proc/sys/net/ipv4/conf/{LAN_IFACE}/forwarding")).unwrap();
    assert_eq!(forwarding.trim(), "1", "the predecessor's sysctl stays on");
    assert!(prog_id(&lab, LAN_IFACE).is_some(), "still attached");
    assert_eq!(nodes_of(&mut kept), before, "held connections keep working");
    let fresh: Vec<_> = lab.client.enter(|| (0..10).map(|_| http_get(WEB)).collect());
    assert!(fresh.iter().all(Result::is_ok), "new connections work: {fresh:?}");

    let forwarder = lab.start_forwarder(&path, &[]).unwrap();
    assert!(forwarder.output().contains("adopted=true"), "{}", forwarder.output());
    assert_eq!(nodes_of(&mut kept), before, "and after the next good start");
    forwarder.stop().unwrap();
}

/// A host whose own ephemeral ports overlap the SNAT ports (a widened
/// `ip_local_port_range`) is refused at start with one line saying what to
/// set, and the start leaves nothing behind.
#[test]
fn overlapping_ephemeral_ports_are_refused_and_change_nothing() {
    let lab = lab_with_servers(2);
    let path = lab.write_services(&service_file("snat", &[0, 1], "")).unwrap();
    let sysctl = |setting: &str| {
        forwarder_tests::netns::run(lab.forwarder.command("sysctl").args(["-qw", setting])).unwrap();
    };
    sysctl("net.ipv4.ip_local_port_range=20000 60999");
    let failed = lab.forwarder_command(&path, &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("(20000-60999, net.ipv4.ip_local_port_range) overlap the SNAT ports 1024-32767"),
        "{stderr}"
    );
    let forwarding =
        lab.forwarder.exec("cat", &format!("/proc/sys/net/ipv4/conf/{LAN_IFACE}/forwarding")).unwrap();
    assert_eq!(forwarding.trim(), "0", "the sysctl it switched on is off again");
    assert!(!lab.forwards_on(LAN_IFACE), "nothing attached");

    sysctl("net.ipv4.ip_local_reserved_ports=20000-32767");
    let forwarder = lab.start_forwarder(&path, &[]).unwrap();
    assert!(lab.client.enter(|| http_get(WEB)).is_ok(), "starts once the overlap is reserved");
    forwarder.stop().unwrap();
}
