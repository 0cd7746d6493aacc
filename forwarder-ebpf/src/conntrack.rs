//! Flow lookup, liveness, refresh and promotion from the half-open table
//! to the established one. The policy (which timeout applies, when a
//! connection is answered) lives in `forwarder_common::conntrack`, where
//! host tests reach it.

use aya_ebpf::bindings::BPF_ANY;
use forwarder_common::{
    conntrack::{
        FLAG_REPLY, REFRESH_INTERVAL_NS, SEEN_FIN, SEEN_FIN_FIRST, SEEN_RST, TCP_CLOSED_TIMEOUT_NS, answered,
        directions, expired as past_timeout, reopens, timeout_ns,
    },
    counters::Reason,
    maps::{FlowEntry, FlowKey, NextHop},
};

use crate::{
    maps::{FLOWS, FlowTable, HALF_OPEN},
    stats,
};

/// Which table a connection's entries are in (both in the same one).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Established,
    HalfOpen,
}

impl Table {
    #[inline(always)]
    pub fn map(self) -> &'static FlowTable {
        match self {
            Table::Established => &FLOWS,
            Table::HalfOpen => &HALF_OPEN,
        }
    }
}

/// A packet's usable entry: where it is, and what it was when found.
pub struct Found {
    pub table: Table,
    pub ptr: *mut FlowEntry,
}

/// The entry a packet keyed `key` with `packet_seen` bits uses: the
/// established table's, else the half-open table's. `None`: a new
/// connection (see `nat::create` for an unusable entry left under `key`
/// in the established table).
///
/// A half-open original entry is used only with its reply entry: a new
/// connection may have taken that key over (see `nat::create`), and
/// translating with the original then would send this client's packets
/// into the other connection's tuple. One more lookup, for the few
/// packets of a connection before it is answered.
#[inline(always)]
pub fn find(key: &FlowKey, packet_seen: u8, now: u64) -> Option<Found> {
    if let Some(ptr) = FLOWS.get_ptr_mut(key)
        // SAFETY: a map value pointer from the lookup helper.
        && usable(Table::Established, key, unsafe { &*ptr }, packet_seen, now)
    {
        return Some(Found { table: Table::Established, ptr });
    }
    if let Some(ptr) = HALF_OPEN.get_ptr_mut(key) {
        // SAFETY: as above.
        let entry = unsafe { &*ptr };
        let whole = entry.flags & FLAG_REPLY != 0 || peer_of(Table::HalfOpen, key, entry).is_some();
        if whole && usable(Table::HalfOpen, key, entry, packet_seen, now) {
            return Some(Found { table: Table::HalfOpen, ptr });
        }
    }
    None
}

/// Moves the half-open connection of the packet just forwarded (keyed
/// `key`, its bits already recorded) to the established table if the
/// packet answered it (see `forwarder_common::conntrack::answered`). It
/// stays if not, if its peer is gone, or if the established table takes
/// no entry (it then works on from the half-open table). Entries are
/// inserted from where they are, not copied: the stack is small.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a key passed by value is copied to the stack, which then overflows its 512 bytes"
)]
pub fn promote(key: &FlowKey, packet_seen: u8) {
    let Some(ptr) = HALF_OPEN.get_ptr(key) else { return };
    // SAFETY: map value pointers from the lookup helper; a concurrent
    // update is a packet's refresh, as recent either way.
    let entry = unsafe { &*ptr };
    let Some(peer) = peer_of(Table::HalfOpen, key, entry) else { return };
    let peer = unsafe { &*peer };
    let from_node = entry.flags & FLAG_REPLY != 0;
    let (original, reply) = directions(entry.flags, entry.seen, peer.seen);
    if !answered(key.proto, from_node, packet_seen, original, reply) {
        return;
    }
    let peer_key = entry.peer_key(key.proto);
    if FLOWS.insert(&peer_key, peer, u64::from(BPF_ANY)).is_err() {
        return;
    }
    if FLOWS.insert(key, entry, u64::from(BPF_ANY)).is_err() {
        let _ = FLOWS.remove(&peer_key);
        return;
    }
    let _ = HALF_OPEN.remove(key);
    let _ = HALF_OPEN.remove(&peer_key);
    stats::reason(Reason::FlowEstablished);
}

/// The entry keyed `key` in either table, as it is now.
#[inline(always)]
pub fn get(key: &FlowKey) -> Option<(Table, FlowEntry)> {
    // SAFETY: map value pointers from the lookup helper, copied at once.
    if let Some(entry) = FLOWS.get_ptr(key) {
        return Some((Table::Established, unsafe { *entry }));
    }
    HALF_OPEN.get_ptr(key).map(|entry| (Table::HalfOpen, unsafe { *entry }))
}

/// The shortest timeout of any state: an entry refreshed more recently than
/// this is alive whatever its peer says, so the common case needs no second
/// lookup.
const ALIVE_FOR_SURE_NS: u64 = TCP_CLOSED_TIMEOUT_NS;
// `usable` trusts an entry refreshed within the interval without its peer.
const _: () = assert!(REFRESH_INTERVAL_NS < ALIVE_FOR_SURE_NS);

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() }
}

/// Whether the connection of `entry` (keyed `key`) has expired: its two
/// entries are judged together (latest refresh, flags of both
/// directions); an entry without its peer is judged alone, so an orphan
/// the node still sends on stays its connection's until it falls quiet.
#[inline(always)]
pub fn expired(table: Table, key: &FlowKey, entry: &FlowEntry, now: u64) -> bool {
    if now.saturating_sub(entry.last_seen_ns) <= ALIVE_FOR_SURE_NS {
        return false;
    }
    expired_with(entry, peer_of(table, key, entry), key.proto, now)
}

/// Whether the closed connection of `entry` (keyed `key`) may give its
/// tuple to a new connection from the same client now: a FIN each way, no
/// RST, and quiet for `TCP_CLOSED_TIMEOUT_NS`. A node that closed first
/// still holds the tuple in TIME_WAIT, but it takes a SYN whose timestamp
/// is newer than the last it saw (as the kernel allows), which a new
/// connection from the same client host carries: Linux keeps one
/// timestamp clock per address pair. Another client waits the TIME_WAIT
/// out ([`expired`]).
#[inline(always)]
pub fn closed_for_its_client(table: Table, key: &FlowKey, entry: &FlowEntry, now: u64) -> bool {
    let peer = peer_of(table, key, entry);
    // SAFETY: a map value pointer from the lookup helper.
    let (peer_seen, peer_last) = peer.map_or((0, 0), |p| unsafe { ((*p).seen, (*p).last_seen_ns) });
    let (original, reply) = directions(entry.flags, entry.seen, peer_seen);
    let last = if peer_last > entry.last_seen_ns { peer_last } else { entry.last_seen_ns };
    original & reply & SEEN_FIN != 0
        && (original | reply) & SEEN_RST == 0
        && past_timeout(now, last, TCP_CLOSED_TIMEOUT_NS)
}

/// The other entry of `entry`'s connection (`entry` is keyed `key`, in
/// `table`), if it is still there and still its peer.
#[inline(always)]
pub fn peer_of(table: Table, key: &FlowKey, entry: &FlowEntry) -> Option<*const FlowEntry> {
    let peer = table.map().get_ptr(entry.peer_key(key.proto))?;
    // SAFETY: a map value pointer from the lookup helper.
    unsafe { &*peer }.pairs_with(key).then_some(peer)
}

/// [`expired`], with `entry`'s peer (`None`: gone) looked up by the caller.
#[inline(always)]
fn expired_with(entry: &FlowEntry, peer: Option<*const FlowEntry>, proto: u8, now: u64) -> bool {
    let (mut peer_seen, mut last) = (0, entry.last_seen_ns);
    if let Some(peer) = peer {
        // SAFETY: a map value pointer from the lookup helper.
        let peer = unsafe { &*peer };
        peer_seen = peer.seen;
        if peer.last_seen_ns > last {
            last = peer.last_seen_ns;
        }
    }
    let (original, reply) = directions(entry.flags, entry.seen, peer_seen);
    past_timeout(now, last, timeout_ns(proto, original, reply))
}

/// Whether this packet (keyed `key`) may use `entry`, or must start a new
/// connection: expired, a SYN re-opening a closed 5-tuple, or an original
/// entry whose reply entry is gone (evicted, or swept) or now another
/// connection's: translating with it would send the node's answers to the
/// host, which resets the connection, or mix this client's packets into
/// another's, while a new connection puts both entries back.
///
/// An entry refreshed within the last second is alive (every timeout is
/// longer), so the common packet needs no second lookup: the peer is
/// looked up once a second per direction, when the refresh is due.
#[inline(always)]
pub fn usable(table: Table, key: &FlowKey, entry: &FlowEntry, packet_seen: u8, now: u64) -> bool {
    let original = entry.flags & FLAG_REPLY == 0;
    if original && reopens(entry.seen, packet_seen) {
        return false;
    }
    if !refresh_due(entry, now) {
        return true;
    }
    let peer = peer_of(table, key, entry);
    if original && peer.is_none() {
        return false;
    }
    !expired_with(entry, peer, key.proto, now)
}

/// Whether `entry`'s `last_seen` is due for a refresh (about once a
/// second): also the moment to check its cached next hop.
#[inline(always)]
pub fn refresh_due(entry: &FlowEntry, now: u64) -> bool {
    now.saturating_sub(entry.last_seen_ns) > REFRESH_INTERVAL_NS
}

/// Records a forwarded packet on `entry` (keyed `key`), writing only when
/// something changed so an established flow's cache line stays shared
/// between CPUs. The node's FIN, when it comes before the client's, is
/// marked (`SEEN_FIN_FIRST`): the node then holds the tuple in TIME_WAIT,
/// which the connection's timeout waits out. One peer lookup per
/// connection, on its first reply FIN.
///
/// Concurrent updates from other CPUs race benignly: both store a recent
/// time, or OR in flags.
#[inline(always)]
pub fn touch(table: Table, key: &FlowKey, entry: &mut FlowEntry, packet_seen: u8, now: u64) {
    if refresh_due(entry, now) {
        entry.last_seen_ns = now;
    }
    let mut seen = entry.seen | packet_seen;
    if seen != entry.seen {
        let first_fin = packet_seen & SEEN_FIN != 0 && entry.seen & SEEN_FIN == 0;
        if first_fin && entry.flags & FLAG_REPLY != 0 {
            // SAFETY: a map value pointer from the lookup helper.
            let peer_closed =
                peer_of(table, key, entry).is_some_and(|peer| unsafe { (*peer).seen } & SEEN_FIN != 0);
            if !peer_closed {
                seen |= SEEN_FIN_FIRST;
            }
        }
        entry.seen = seen;
    }
}

/// Records a forwarded packet on the flow keyed `key` in `table` (looked up afresh)
/// and, with `hop`, the next hop its route lookup found for a packet of
/// IPv4 total length `len` (a racing writer stores an answer as recent; at
/// worst a packet looks the route up once more).
#[inline(always)]
pub fn record(table: Table, key: &FlowKey, packet_seen: u8, now: u64, hop: Option<(NextHop, u16)>) {
    if let Some(entry) = table.map().get_ptr_mut(key) {
        // SAFETY: a map value pointer from the lookup helper, used at once.
        let entry = unsafe { &mut *entry };
        if let Some((hop, len)) = hop {
            entry.hop = hop;
            entry.hop_len = len;
        }
        touch(table, key, entry, packet_seen, now);
    }
}
