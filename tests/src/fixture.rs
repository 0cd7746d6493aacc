//! The fixture network: one namespace with a client-side interface `cl`
//! (10.1.0.1/24) and a node-side interface `nd` (10.2.0.1/24), fixed MACs,
//! and permanent neighbours, so `bpf_fib_lookup` answers with known MACs
//! and `BPF_PROG_TEST_RUN` can check exact packets.

use std::{io::Write as _, net::Ipv4Addr};

use crate::netns::{Netns, unique_name};

/// MAC of a node-side neighbour `10.2.x.y`: `02:00:00:02:x:y`.
#[must_use]
pub fn node_mac(addr: Ipv4Addr) -> [u8; 6] {
    let [_, _, x, y] = addr.octets();
    [2, 0, 0, 2, x, y]
}

/// Builds the namespace, with a permanent neighbour for the client
/// (10.1.0.2), a host on the client side (10.1.0.50), and each of `nodes`
/// (10.2.0.0/16 addresses on `nd`, MAC from [`node_mac`]).
pub fn network(nodes: &[Ipv4Addr]) -> anyhow::Result<Netns> {
    let ns = Netns::create(unique_name("fwx", ""))?;
    for cmd in [
        "link add cl type veth peer name cl-peer",
        "link add nd type veth peer name nd-peer",
        "link set cl address 02:00:00:00:01:01",
        "link set nd address 02:00:00:00:02:01",
        "addr add 10.1.0.1/24 dev cl",
        "addr add 10.2.0.1/16 dev nd",
        "link set cl up",
        "link set cl-peer up",
        "link set nd up",
        "link set nd-peer up",
        "neigh add 10.1.0.2 lladdr 02:00:00:00:01:02 dev cl nud permanent",
        "neigh add 10.1.0.50 lladdr 02:00:00:00:01:50 dev cl nud permanent",
    ] {
        ns.ip(cmd)?;
    }
    // Many neighbours at once: `ip -batch`.
    let mut batch = tempfile::NamedTempFile::new()?;
    for node in nodes {
        let mac = node_mac(*node).map(|b| format!("{b:02x}")).join(":");
        writeln!(batch, "neigh add {node} lladdr {mac} dev nd nud permanent")?;
    }
    batch.flush()?;
    crate::netns::run(std::process::Command::new("ip").args(["-n", ns.name(), "-batch"]).arg(batch.path()))?;
    ns.exec("sysctl", "-qw net.ipv4.conf.all.forwarding=1")?;
    Ok(ns)
}
