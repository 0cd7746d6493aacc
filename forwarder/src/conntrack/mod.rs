//! The connection table from user space: reading it ([`scan`]), the
//! periodic sweep that removes expired connections and counts live ones
//! ([`sweep`]), and the `flows` listing ([`flows`]). The rules (which entry
//! is the original, which timeout applies, what state a connection is in)
//! are `forwarder_common::conntrack`'s, the same the datapath runs.
//!
//! Everything here runs on blocking threads with its own handle to the
//! pinned map, never on the daemon's main loop.

pub mod flows;
pub mod sweep;

use std::path::Path;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use forwarder_common::{
    conntrack::{ConnState, FLAG_REPLY, directions, expired, timeout_ns},
    maps::{FlowEntry, FlowKey},
};
use nix::time::{ClockId, clock_gettime};

pub type FlowMap = BpfHashMap<MapData, FlowKey, FlowEntry>;

/// Opens the pinned connection table.
pub fn open(pin: &Path) -> anyhow::Result<FlowMap> {
    let map = MapData::from_pin(pin)?;
    Ok(BpfHashMap::try_from(Map::LruHashMap(map))?)
}

/// The clock the datapath stamps entries with (`bpf_ktime_get_coarse_ns`).
#[must_use]
pub fn now_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).expect("CLOCK_MONOTONIC_COARSE exists on Linux");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
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

    /// `SEEN_*` bits of (original, reply) direction.
    fn seen(&self) -> (u8, u8) {
        directions(self.original.flags, self.original.seen, self.reply.map_or(0, |r| r.seen))
    }

    /// The same rule as the datapath's.
    #[must_use]
    pub fn expired(&self, now: u64) -> bool {
        let (original, reply) = self.seen();
        expired(now, self.last_seen_ns(), timeout_ns(self.key.proto, original, reply))
    }

    #[must_use]
    pub fn state(&self) -> ConnState {
        let (original, reply) = self.seen();
        ConnState::of(self.key.proto, original, reply)
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
