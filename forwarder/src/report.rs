//! What the daemon reports: the service table, statistics, tracked
//! connections. Sent as JSON over the control socket, rendered as tables by
//! the CLI and as metrics by the daemon.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

pub use forwarder_common::counters::Traffic;

use crate::config::{HealthSpec, Mode, Protocol};

/// A backend's health as the checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The service has no health checks.
    Unchecked,
    Up,
    Down,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Unchecked => "-",
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceView {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub health_check: Option<HealthSpec>,
    pub backends: Vec<BackendView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub addr: SocketAddrV4,
    /// As configured; 0 is draining.
    pub weight: u32,
    pub health: Health,
    /// Whether new connections go to it now (weight above 0 and not down,
    /// unless every backend is down: see the daemon's health policy).
    pub in_rotation: bool,
}

/// Per-second rates over the daemon's last sampling interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub packets_in: f64,
    pub packets_out: f64,
    pub bits_in: f64,
    pub bits_out: f64,
    pub new_flows: f64,
}

impl Rates {
    /// Rates from two samples `seconds` apart.
    #[must_use]
    pub fn between(old: &Traffic, new: &Traffic, seconds: f64) -> Self {
        if seconds <= 0.0 {
            return Self::default();
        }
        let per_sec = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
        Self {
            packets_in: per_sec(old.packets_in, new.packets_in),
            packets_out: per_sec(old.packets_out, new.packets_out),
            bits_in: 8.0 * per_sec(old.bytes_in, new.bytes_in),
            bits_out: 8.0 * per_sec(old.bytes_out, new.bytes_out),
            new_flows: per_sec(old.new_flows, new.new_flows),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Length of the interval the rates cover, in seconds.
    pub rate_interval_secs: f64,
    /// Age of the connection counts (from the periodic table sweep).
    pub flows_age_secs: f64,
    /// Tracked connections, all services.
    pub connections: u64,
    /// Of which half-open: not answered yet (TCP handshake not done, UDP
    /// without a reply), in their own table.
    #[serde(default)]
    pub half_open: u64,
    pub services: Vec<ServiceStats>,
    /// Packets by what the datapath did with them.
    pub reasons: Vec<ReasonCount>,
    /// SNAT port use per source address and protocol.
    #[serde(default)]
    pub snat: Vec<SnatUse>,
}

/// How much of one SNAT address's ports a protocol uses (as of the last
/// sweep). Ports are taken per node: an address carries up to
/// `ports_per_node` connections to each node:port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnatUse {
    pub address: Ipv4Addr,
    pub protocol: Protocol,
    /// Connections from this address, all nodes.
    pub connections: u64,
    /// Ports taken towards the node:port that uses most of them.
    pub busiest_node_ports: u64,
    pub ports_per_node: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStats {
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub totals: Traffic,
    pub rates: Rates,
    pub active_flows: u64,
    pub backends: Vec<BackendStats>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStats {
    pub addr: SocketAddrV4,
    pub weight: u32,
    pub health: Health,
    pub in_rotation: bool,
    pub totals: Traffic,
    pub rates: Rates,
    pub active_flows: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonCount {
    pub reason: String,
    pub packets: u64,
}

/// One tracked connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    pub service: String,
    pub protocol: Protocol,
    /// As the client sends it: client -> VIP.
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    /// As the backend sees it: source (the SNAT address, or the client)
    /// -> backend.
    pub source: SocketAddrV4,
    pub backend: SocketAddrV4,
    /// `forwarder_common::conntrack::ConnState`'s name: TCP `syn_sent`,
    /// `established`, `fin_wait`, `closing`, `reset`; UDP `active`.
    pub state: String,
    pub age_secs: f64,
    pub idle_secs: f64,
}
