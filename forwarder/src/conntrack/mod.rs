//! The connection tables from user space: reading them ([`scan`],
//! [`scan_half_open`], [`Tables`]), the periodic sweep that removes expired
//! connections and counts live ones ([`sweep`]), and the `flows` listing
//! ([`flows`]). The rules (which entry is the original, which timeout
//! applies, what state a connection is in) are
//! `forwarder_common::conntrack`'s, the same the datapath runs; a
//! half-open connection's original entry is built from its `ORIGINS`
//! slot as the datapath builds it (`forwarder_common::origin`).
//!
//! Everything here runs on blocking threads with its own handle to the
//! pinned map, never on the daemon's main loop.

pub mod flows;
pub mod sweep;

use std::path::Path;

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use forwarder_common::{
    conntrack::{ConnState, FLAG_REPLY, SEEN_ACK, SEEN_PACKET, directions, expired, timeout_ns},
    hash::flow_hash,
    maps::{FlowEntry, FlowKey, PROTO_TCP, names},
    origin::{Origin, origin_slot},
};
use nix::time::{ClockId, clock_gettime};

use crate::kernel::Pins;

pub type FlowMap = BpfHashMap<MapData, FlowKey, FlowEntry>;
pub type OriginMap = Array<MapData, Origin>;

/// Opens the pinned connection table.
pub fn open(pin: &Path) -> anyhow::Result<FlowMap> {
    let map = MapData::from_pin(pin)?;
    Ok(BpfHashMap::try_from(Map::LruHashMap(map))?)
}

/// Both connection tables, with what reading the half-open one takes.
pub struct Tables {
    pub established: FlowMap,
    pub half_open: FlowMap,
    pub origins: OriginMap,
    /// The host's secret, which keys `ORIGINS` slots.
    pub secret: u64,
}

impl Tables {
    /// Opens the pinned tables.
    pub fn open(pins: &Pins) -> anyhow::Result<Self> {
        let array = |name| -> anyhow::Result<Map> { Ok(Map::Array(MapData::from_pin(pins.map(name))?)) };
        let secret: Array<MapData, u64> = Array::try_from(array(names::SECRET)?)?;
        Ok(Self {
            established: open(&pins.map(names::FLOWS))?,
            half_open: open(&pins.map(names::HALF_OPEN))?,
            origins: Array::try_from(array(names::ORIGINS)?)?,
            secret: secret.get(&0, 0)?,
        })
    }

    /// Every connection, established ones first.
    #[must_use]
    pub fn scan(&self) -> Vec<Conn> {
        let mut conns = scan(&self.established);
        conns.extend(scan_half_open(&self.half_open, &self.origins, self.secret));
        conns
    }
}

/// The slot of the half-open connection whose client tuple is `key`, if a
/// whole slot names it (as the datapath reads one).
#[must_use]
pub fn origin_of(origins: &OriginMap, secret: u64, key: &FlowKey) -> Option<Origin> {
    slot_at(origins, secret, key).filter(|slot| slot.describes(key))
}

/// The pending slot of a SYN or datagram forwarded without state (see
/// `forwarder_common::origin`) whose node answers with the tuple `reply`.
#[must_use]
pub fn pending_of(origins: &OriginMap, secret: u64, reply: &FlowKey) -> Option<Origin> {
    slot_at(origins, secret, reply).filter(|slot| slot.awaits(reply))
}

/// The slot the tuple `key` hashes to, whatever it holds.
fn slot_at(origins: &OriginMap, secret: u64, key: &FlowKey) -> Option<Origin> {
    let mask = origins.len().checked_sub(1)?;
    let hash = flow_hash(key.src, key.dst, key.sport, key.dport, key.proto);
    origins.get(&origin_slot(secret, hash, mask), 0).ok()
}

/// The clock the datapath stamps entries with (`bpf_ktime_get_coarse_ns`).
#[must_use]
pub fn now_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE).expect("CLOCK_MONOTONIC_COARSE exists on Linux");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// A connection: its original-direction entry (client -> VIP) and, if
/// still there, its reply entry. An orphan reply entry (its original was
/// evicted, or its slot taken) appears with `original` holding it and
/// `orphan` set. `from_slot`: a half-open connection, whose original is
/// built from its slot (only its reply entry is in a map).
pub struct Conn {
    pub key: FlowKey,
    pub original: FlowEntry,
    pub reply: Option<FlowEntry>,
    pub orphan: bool,
    pub from_slot: bool,
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
        // A peer key that holds another connection's entry (ours was
        // evicted and the key claimed since) is no peer.
        let peer = flows.get(&entry.peer_key(key.proto), 0).ok().filter(|peer| peer.pairs_with(&key));
        if entry.flags & FLAG_REPLY == 0 {
            conns.push(Conn { key, original: entry, reply: peer, orphan: false, from_slot: false });
        } else if peer.is_none() {
            conns.push(Conn { key, original: entry, reply: None, orphan: true, from_slot: false });
        }
    }
    conns
}

/// Reads every half-open connection: each reply entry in `half_open`
/// with the slot of its client direction in `origins`.
pub fn scan_half_open(half_open: &FlowMap, origins: &OriginMap, secret: u64) -> Vec<Conn> {
    let keys: Vec<FlowKey> = half_open.keys().filter_map(Result::ok).collect();
    let mut conns = Vec::new();
    for reply_key in keys {
        let Ok(reply) = half_open.get(&reply_key, 0) else { continue }; // gone meanwhile
        let key = reply.peer_key(reply_key.proto);
        match origin_of(origins, secret, &key).filter(|slot| slot.reply == reply_key) {
            Some(slot) => conns.push(Conn {
                key,
                original: slot.entry(&reply),
                reply: Some(reply),
                orphan: false,
                from_slot: true,
            }),
            None => conns.push(Conn {
                key: reply_key,
                original: reply,
                reply: None,
                orphan: true,
                from_slot: false,
            }),
        }
    }
    conns
}

/// Marks the handshake done on TCP connections a datapath of the release
/// before `SEEN_ACK` tracked (records of v0): it never set the bit, so its
/// answered connections would fall to the handshake timeout. Its rule was
/// "established once the node answered", which this keeps for them.
/// Returns how many were marked.
pub fn mark_handshakes_done(flows: &mut FlowMap) -> usize {
    let mut marked = 0;
    for conn in scan(flows) {
        let answered = conn.reply.is_some_and(|reply| reply.seen & SEEN_PACKET != 0);
        if conn.orphan || conn.key.proto != PROTO_TCP || !answered || conn.original.seen & SEEN_ACK != 0 {
            continue;
        }
        let mut entry = conn.original;
        entry.seen |= SEEN_ACK;
        if flows.insert(conn.key, entry, 0).is_ok() {
            marked += 1;
        }
    }
    marked
}
