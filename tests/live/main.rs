//! Live operations against a running daemon in the namespace lab: CLI
//! changes under load, reloads, health checks, restarts, bad input,
//! statistics and metrics, VIP announcement, `forwarder down`. Needs root.
//!
//! `changes` (CLI changes and reloads under load), `health` (checks taking
//! nodes out and back), `restarts` (kill, hand-over, failed restarts,
//! `down`), `input` (bad input refused), `observe` (stats, flows, metrics,
//! VIP announcement), `privileges` (what the daemon runs without).

mod changes;
mod health;
mod input;
mod observe;
mod privileges;
mod restarts;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddrV4, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use forwarder::{
    config::{BackendSpec, ServiceFile},
    report::{Flow, Health, ServiceView, Stats},
};
use forwarder_tests::{
    client::{HttpConnection, Load, http_get},
    lab::{CLIENT, CLIENT_IFACE, FORWARDER_LAN_SIDE, Flavour, LAN_IFACE, Lab, VIP, node_addr, service_file},
    require_root,
};

const WEB: SocketAddrV4 = SocketAddrV4::new(VIP, 80);
const PAUSE: Duration = Duration::from_millis(5);

fn lab_with_servers(nodes: usize) -> Lab {
    require_root();
    let mut lab = Lab::new("fwl", nodes).expect("lab");
    lab.start_servers().expect("node servers");
    lab
}

fn node_http(i: usize) -> String {
    format!("{}:30080", node_addr(i))
}

fn list(lab: &Lab) -> Vec<ServiceView> {
    serde_json::from_str(&lab.cli_ok(&["service", "list", "--json"])).expect("service list JSON")
}

fn open_connections(lab: &Lab, n: usize) -> Vec<HttpConnection> {
    lab.client.enter(|| (0..n).map(|_| HttpConnection::open(WEB).unwrap()).collect())
}

fn nodes_of(connections: &mut [HttpConnection]) -> Vec<String> {
    connections.iter_mut().map(|c| c.get().expect("request on an open connection").node).collect()
}
