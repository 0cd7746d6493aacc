//! The connection table from user space: a periodic sweep removes expired
//! connections and counts live ones per service and backend; `flows` lists
//! them. Runs on blocking threads with its own handle to the pinned map.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use forwarder_common::{
    conntrack::{FLAG_REPLY, SEEN_FIN, SEEN_PACKET, SEEN_RST, SEEN_SYN, expired, timeout_ns},
    maps::{FlowEntry, FlowKey, PROTO_TCP},
};

pub type FlowMap = BpfHashMap<MapData, FlowKey, FlowEntry>;

/// How often the sweep runs.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Opens the pinned connection table.
pub fn open(pin: &Path) -> anyhow::Result<FlowMap> {
    let map = MapData::from_pin(pin)?;
    Ok(BpfHashMap::try_from(Map::LruHashMap(map))?)
}

/// The clock the datapath stamps entries with (`bpf_ktime_get_coarse_ns`).
#[must_use]
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A connection: its original-direction entry (client -> VIP) and, if
/// still there, its reply entry. An orphan reply entry (its original was
/// evicted) appears with `original` holding it and `orphan` set.
pub struct Conn {
    pub key: FlowKey,
    pub original: FlowEntry,
    pub reply: Option<FlowEntry>,
    pub orphan: bool,
}

impl Conn {
    #[must_use]
    pub fn last_seen_ns(&self) -> u64 {
        self.original.last_seen_ns.max(self.reply.map_or(0, |r| r.last_seen_ns))
    }

    fn seen(&self) -> (u8, u8) {
        if self.orphan {
            (0, self.original.seen)
        } else {
            (self.original.seen, self.reply.map_or(0, |r| r.seen))
        }
    }

    /// The same rule as the datapath's (`forwarder_common::conntrack`).
    #[must_use]
    pub fn expired(&self, now: u64) -> bool {
        let (original, reply) = self.seen();
        expired(now, self.last_seen_ns(), timeout_ns(self.key.proto, original, reply))
    }

    #[must_use]
    pub fn state(&self) -> &'static str {
        if self.key.proto != PROTO_TCP {
            return "active";
        }
        let (original, reply) = self.seen();
        match (original | reply, original & reply & SEEN_FIN) {
            (all, _) if all & SEEN_RST != 0 => "reset",
            (_, fin) if fin != 0 => "closing",
            (all, _) if all & SEEN_FIN != 0 => "fin_wait",
            _ if reply & SEEN_PACKET != 0 => "established",
            (all, _) if all & SEEN_SYN != 0 => "syn_sent",
            _ => "established",
        }
    }
}

/// Reads every connection.
pub fn scan(flows: &FlowMap) -> Vec<Conn> {
    // Keys first: removing while walking would restart the walk.
    let keys: Vec<FlowKey> = flows.keys().filter_map(Result::ok).collect();
    let mut conns = Vec::new();
    for key in keys {
        let Ok(entry) = flows.get(&key, 0) else { continue }; // gone meanwhile
        let peer = flows.get(&entry.peer_key(key.proto), 0).ok();
        if entry.flags & FLAG_REPLY == 0 {
            conns.push(Conn { key, original: entry, reply: peer, orphan: false });
        } else if peer.is_none() {
            conns.push(Conn { key, original: entry, reply: None, orphan: true });
        }
    }
    conns
}

/// What a sweep found.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub at: Instant,
    pub connections: u64,
    pub by_service: HashMap<u32, u64>,
    pub by_backend: HashMap<u32, u64>,
    pub removed: u64,
}

impl Default for Sweep {
    fn default() -> Self {
        Self {
            at: Instant::now(),
            connections: 0,
            by_service: HashMap::new(),
            by_backend: HashMap::new(),
            removed: 0,
        }
    }
}

/// Removes expired connections (both entries) and counts the live ones.
pub fn sweep(flows: &mut FlowMap) -> Sweep {
    let now = now_ns();
    let mut result = Sweep::default();
    for conn in scan(flows) {
        if conn.expired(now) {
            let _ = flows.remove(&conn.key);
            if !conn.orphan {
                let _ = flows.remove(&conn.original.peer_key(conn.key.proto));
            }
            result.removed += 1;
        } else if !conn.orphan {
            result.connections += 1;
            *result.by_service.entry(conn.original.service_id).or_default() += 1;
            *result.by_backend.entry(conn.original.backend_id).or_default() += 1;
        }
    }
    result.at = Instant::now();
    result
}
