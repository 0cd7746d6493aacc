//! Flow lookup, liveness, refresh and promotion from the half-open table
//! to the established one. The policy (which timeout applies, when a
//! connection is answered) lives in `forwarder_common::conntrack`, where
//! host tests reach it.
//!
//! An established connection is two entries in `FLOWS`. A half-open one
//! is its reply entry in `HALF_OPEN` and an `ORIGINS` slot for the
//! client's direction (see `forwarder_common::origin`), which stands in
//! for the original entry wherever one is read.

use aya_ebpf::bindings::BPF_ANY;
use forwarder_common::{
    conntrack::{
        FLAG_REPLY, REFRESH_INTERVAL_NS, SEEN_CLIENT_FIN, SEEN_FIN, SEEN_FIN_FIRST, SEEN_RST,
        TCP_CLOSED_TIMEOUT_NS, TCP_SYN_TIMEOUT_NS, UDP_TIMEOUT_NS, answered, expired as past_timeout,
        node_takes_syn, reopens, timeout_ns,
    },
    counters::Reason,
    hash::flow_hash,
    maps::{FlowEntry, FlowKey, NextHop, PROTO_TCP, reply_port_bit},
    origin::{Origin, origin_slot},
};

use crate::{
    maps::{FLOWS, HALF_OPEN, ORIGINS, ORIGINS_MASK, REPLY_PORTS, SCRATCH, SCRATCH_BUILD, SECRET},
    stats,
};

/// Which table a connection is in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Established,
    HalfOpen,
}

impl Table {
    /// The entry keyed `key` in this table (the two tables' maps differ in
    /// type: see `maps::HalfOpenTable`).
    #[inline(always)]
    pub fn get_ptr(self, key: &FlowKey) -> Option<*const FlowEntry> {
        match self {
            Table::Established => FLOWS.get_ptr(key),
            Table::HalfOpen => HALF_OPEN.get_ptr(key),
        }
    }

    /// [`Table::get_ptr`], writable.
    #[inline(always)]
    pub fn get_ptr_mut(self, key: &FlowKey) -> Option<*mut FlowEntry> {
        match self {
            Table::Established => FLOWS.get_ptr_mut(key),
            Table::HalfOpen => HALF_OPEN.get_ptr_mut(key),
        }
    }
}

/// Where the state of a packet's direction of its connection is kept.
#[derive(Clone, Copy)]
pub enum At {
    /// An entry of its table's map.
    Entry(*mut FlowEntry),
    /// A half-open connection's `ORIGINS` slot (the client's direction).
    Origin(*mut Origin),
}

/// Which kind of state a packet's direction of its connection has (see
/// [`At`]), without a pointer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Entry,
    Origin,
}

/// What [`find`] found for a packet.
pub enum Lookup {
    /// The usable entry of the packet's direction, in `table`.
    Usable { table: Table, ptr: *mut FlowEntry },
    /// A usable half-open connection's client direction: its slot, and
    /// its reply entry (see `Origin::entry`).
    Origin { slot: *mut Origin, reply: *const FlowEntry },
    /// The node's answer to a packet forwarded without state: that
    /// packet's pending slot (see `forwarder_common::origin`).
    Answer { slot: *mut Origin },
    /// A new connection. `stale`: an unusable entry of an earlier one is
    /// left under the key in the established table (see `nat::create`).
    New { stale: bool },
}

/// The entry a packet keyed `key` with `packet_seen` bits uses: the
/// established table's, else a half-open connection's (its reply entry,
/// or its client direction from `ORIGINS`), else the packet forwarded
/// without state that its node answers.
/// `opens_stateless`, asked only of a packet not established: whether it
/// is forwarded without state if new (see `forwarder_common::origin`), so
/// no half-open connection is looked for (a cold slot read of a new
/// connection's cost).
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a key passed by value is copied to the stack, which then overflows its 512 bytes"
)]
pub fn find(key: &FlowKey, packet_seen: u8, now: u64, opens_stateless: impl FnOnce() -> bool) -> Lookup {
    let established = FLOWS.get_ptr_mut(key);
    if let Some(ptr) = established
        // SAFETY: a map value pointer from the lookup helper.
        && usable(Table::Established, key, unsafe { &*ptr }, packet_seen, now)
    {
        return Lookup::Usable { table: Table::Established, ptr };
    }
    let stale = established.is_some();
    // (Not over an earlier connection's entry: that one's reply entry may
    // live on, and `nat::create` claims its key properly.)
    if !stale && opens_stateless() {
        return Lookup::New { stale };
    }
    if may_be_reply(key)
        && let Some(ptr) = HALF_OPEN.get_ptr_mut(key)
        // SAFETY: as above.
        && usable(Table::HalfOpen, key, unsafe { &*ptr }, packet_seen, now)
    {
        return Lookup::Usable { table: Table::HalfOpen, ptr };
    }
    let Some(slot) = slot_of(flow_hash(key.src, key.dst, key.sport, key.dport, key.proto)) else {
        return Lookup::New { stale };
    };
    // SAFETY: a map value pointer from the lookup helper.
    let described = unsafe { &*slot };
    if described.describes(key) {
        if let Some(reply) = HALF_OPEN.get_ptr(&described.reply)
            // SAFETY: as above.
            && unsafe { &*reply }.pairs_with(key)
            && origin_usable(key, described, unsafe { &*reply }, packet_seen, now)
        {
            return Lookup::Origin { slot, reply };
        }
    } else if awaits(described, key, now) {
        return Lookup::Answer { slot };
    }
    Lookup::New { stale }
}

/// Whether `slot` is the pending slot of a packet forwarded without state,
/// within the timeout of an unanswered connection, whose node answers
/// with `key`.
#[inline(always)]
fn awaits(slot: &Origin, key: &FlowKey, now: u64) -> bool {
    let timeout = if key.proto == PROTO_TCP { TCP_SYN_TIMEOUT_NS } else { UDP_TIMEOUT_NS };
    slot.awaits(key) && now.saturating_sub(slot.last_seen_ns) <= timeout
}

/// The reply entry a node's answer keyed `key` to a packet forwarded
/// without state is translated with (service and backend unknown: 0), if
/// its slot still waits for it.
#[inline(always)]
fn pending_reply(key: &FlowKey, now: u64) -> Option<FlowEntry> {
    // SAFETY: a map value pointer from the lookup helper, read at once.
    let slot = unsafe { &*slot_of(flow_hash(key.src, key.dst, key.sport, key.dport, key.proto))? };
    if !awaits(slot, key, now) {
        return None;
    }
    let mut reply = FlowEntry::rewriting(key, &slot.key.reversed(), 0, 0, FLAG_REPLY, slot.last_seen_ns);
    reply.last_seen_ns = slot.last_seen_ns;
    Some(reply)
}

/// Whether the half-open table may hold `key`: its source port is one a
/// backend has had. A client's packet most often comes from another, and
/// is spared a lookup that misses (about 20 ns of a new flow by profile in
/// the bench, whose table is cached; a cache miss in a large one).
#[inline(always)]
fn may_be_reply(key: &FlowKey) -> bool {
    let (word, bit) = reply_port_bit(key.sport);
    REPLY_PORTS.get(word).is_none_or(|ports| ports & bit != 0)
}

/// [`usable`] for a half-open connection's client direction, from its
/// slot and its reply entry (the peer), without building the entry.
#[inline(always)]
fn origin_usable(key: &FlowKey, slot: &Origin, reply: &FlowEntry, packet_seen: u8, now: u64) -> bool {
    if reopens(slot.seen, packet_seen) {
        return false;
    }
    if now.saturating_sub(slot.last_seen_ns) <= REFRESH_INTERVAL_NS {
        return true;
    }
    let last = if reply.last_seen_ns > slot.last_seen_ns { reply.last_seen_ns } else { slot.last_seen_ns };
    !past_timeout(now, last, timeout_ns(key.proto, slot.seen, reply.seen))
}

/// The `ORIGINS` slot a client tuple `key` (whose flow hash is `hash`) uses.
#[inline(always)]
pub fn slot_of(key_hash: u32) -> Option<*mut Origin> {
    let secret = SECRET.get(0).copied().unwrap_or(0);
    ORIGINS.get_ptr_mut(origin_slot(secret, key_hash, ORIGINS_MASK.load()))
}

/// The slot and reply entry of the half-open connection whose client
/// tuple is `key`: the slot must be whole and name `key`, and the reply
/// entry it names must translate back to `key` (a newer connection may
/// have taken the slot, or the reply key).
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a key passed by value is copied to the stack, which then overflows its 512 bytes"
)]
fn origin(key: &FlowKey) -> Option<(*mut Origin, *const FlowEntry)> {
    let slot = slot_of(flow_hash(key.src, key.dst, key.sport, key.dport, key.proto))?;
    // SAFETY: a map value pointer from the lookup helper.
    let described = unsafe { &*slot };
    if !described.describes(key) {
        return None;
    }
    let reply = HALF_OPEN.get_ptr(&described.reply)?;
    // SAFETY: as above.
    unsafe { &*reply }.pairs_with(key).then_some((slot, reply))
}

/// The slot of the half-open connection whose client tuple is `key` and
/// whose reply entry is keyed `reply` (its caller holds that entry).
#[inline(always)]
fn origin_of_reply(key: &FlowKey, reply: &FlowKey) -> Option<*mut Origin> {
    let slot = slot_of(flow_hash(key.src, key.dst, key.sport, key.dport, key.proto))?;
    // SAFETY: a map value pointer from the lookup helper.
    let described = unsafe { &*slot };
    (described.describes(key) && described.reply == *reply).then_some(slot)
}

/// Moves the half-open connection of the reply packet just forwarded
/// (keyed `key`, its bits already recorded) to the established table if
/// the packet answered it (see `forwarder_common::conntrack::answered`):
/// its reply entry, and its original entry built from its slot. It stays
/// if not, if its slot is gone, or if the established table takes no entry
/// (it then works on from the half-open table).
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a key passed by value is copied to the stack, which then overflows its 512 bytes"
)]
pub fn promote(key: &FlowKey, packet_seen: u8) {
    let Some(ptr) = HALF_OPEN.get_ptr(key) else { return };
    // SAFETY: a map value pointer from the lookup helper; a concurrent
    // update is a packet's refresh, as recent either way.
    let reply = unsafe { &*ptr };
    let original_key = reply.peer_key(key.proto);
    let Some(slot) = origin_of_reply(&original_key, key) else { return };
    // SAFETY: as above.
    let slot = unsafe { &*slot };
    if !answered(key.proto, true, packet_seen, slot.seen, reply.seen) {
        return;
    }
    // The original entry is built in per-CPU scratch memory: the stack
    // has no room for it.
    let Some(original) = SCRATCH.get_ptr_mut(SCRATCH_BUILD) else { return };
    // SAFETY: this CPU's scratch slot, used at once.
    let original = unsafe { &mut *original };
    *original = slot.entry(reply);
    // Read again: another CPU may have rewritten the slot for a colliding
    // connection while it was copied (a torn copy must not become an
    // established entry).
    if !slot.describes(&original_key) || slot.reply != *key {
        return;
    }
    if FLOWS.insert(key, reply, u64::from(BPF_ANY)).is_err() {
        return;
    }
    if FLOWS.insert(&original_key, original, u64::from(BPF_ANY)).is_err() {
        let _ = FLOWS.remove(key);
        return;
    }
    let _ = HALF_OPEN.remove(key);
    stats::reason(Reason::FlowEstablished);
}

/// The entry keyed `key` in either table, as it is now (a half-open
/// connection's original as its slot describes it; the reply entry a
/// pending SYN's answer would get).
#[inline(always)]
pub fn get(key: &FlowKey) -> Option<(Table, FlowEntry)> {
    // SAFETY: map value pointers from the lookup helper, copied at once.
    if let Some(entry) = FLOWS.get_ptr(key) {
        return Some((Table::Established, unsafe { *entry }));
    }
    if let Some(entry) = HALF_OPEN.get_ptr(key) {
        return Some((Table::HalfOpen, unsafe { *entry }));
    }
    if let Some((slot, reply)) = origin(key) {
        return Some((Table::HalfOpen, unsafe { (*slot).entry(&*reply) }));
    }
    pending_reply(key, now_ns()).map(|reply| (Table::HalfOpen, reply))
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

/// What a connection's other direction says of it.
#[derive(Clone, Copy)]
pub struct Peer {
    pub seen: u8,
    pub last_seen_ns: u64,
    /// The interface its translated packets leave by (0: not known yet).
    pub hop_ifindex: u32,
}

/// The other direction of `entry`'s connection (`entry` is keyed `key`,
/// in `table`), if it is still there and still its peer: the other entry,
/// or for a half-open reply entry its slot.
#[inline(always)]
pub fn peer(table: Table, key: &FlowKey, entry: &FlowEntry) -> Option<Peer> {
    let peer_key = entry.peer_key(key.proto);
    if table == Table::HalfOpen && entry.flags & FLAG_REPLY != 0 {
        // SAFETY: a map value pointer from the lookup helper.
        let slot = unsafe { &*origin_of_reply(&peer_key, key)? };
        return Some(Peer {
            seen: slot.seen,
            last_seen_ns: slot.last_seen_ns,
            hop_ifindex: slot.hop.ifindex,
        });
    }
    // SAFETY: as above.
    let other = unsafe { &*table.get_ptr(&peer_key)? };
    other.pairs_with(key).then_some(Peer {
        seen: other.seen,
        last_seen_ns: other.last_seen_ns,
        hop_ifindex: other.hop.ifindex,
    })
}

/// Whether the connection of `entry` (keyed `key`) has expired: its two
/// directions are judged together (latest refresh, flags of both); an
/// entry without its peer is judged alone, so an orphan the node still
/// sends on stays its connection's until it falls quiet.
#[inline(always)]
pub fn expired(table: Table, key: &FlowKey, entry: &FlowEntry, now: u64) -> bool {
    if now.saturating_sub(entry.last_seen_ns) <= ALIVE_FOR_SURE_NS {
        return false;
    }
    expired_with(entry, peer(table, key, entry), key.proto, now)
}

/// Whether the closed connection of `entry` (keyed `key`) may give its
/// tuple to a new connection from the same client now: a FIN each way, no
/// RST, and quiet for `TCP_CLOSED_TIMEOUT_NS`. A node that closed first
/// still holds the tuple in TIME_WAIT, and takes a SYN on it only if its
/// timestamp is newer than the last it saw. Linux draws a timestamp offset
/// per connection, so a new connection's is newer only half the time; when
/// it is not, the node answers with an ACK of the old connection, the
/// client resets that and sends its SYN again about 8 ms later, which then
/// goes through (measured; see `ports::search`, whose first pass takes
/// such a tuple only where [`time_wait_takes`] says the node takes the
/// SYN). Another client waits the TIME_WAIT out ([`expired`]).
#[inline(always)]
pub fn closed_for_its_client(table: Table, key: &FlowKey, entry: &FlowEntry, now: u64) -> bool {
    let peer = peer(table, key, entry);
    let (peer_seen, peer_last) = peer.map_or((0, 0), |p| (p.seen, p.last_seen_ns));
    let (original, reply) = directions(entry, peer_seen);
    let last = if peer_last > entry.last_seen_ns { peer_last } else { entry.last_seen_ns };
    original & reply & SEEN_FIN != 0
        && (original | reply) & SEEN_RST == 0
        && past_timeout(now, last, TCP_CLOSED_TIMEOUT_NS)
}

/// Whether the node, which closed the connection of the reply entry
/// `entry` first and holds its tuple in TIME_WAIT, takes a new SYN from
/// the same client with the timestamp value `syn_tsval` on it now: the
/// client's FIN was seen with an older timestamp (see `node_takes_syn`),
/// no RST from the node, and both quiet for `TCP_CLOSED_TIMEOUT_NS` (the
/// client's FIN refreshes `entry`: see [`note_client_fin`]). Judged from
/// `entry` alone: the SNAT port search asks it of every pair it tries. (A
/// RST from the client ends the node's TIME_WAIT, so that any SYN is
/// taken.)
#[inline(always)]
pub fn time_wait_takes(entry: &FlowEntry, syn_tsval: u32, now: u64) -> bool {
    const CLOSED: u8 = SEEN_FIN | SEEN_FIN_FIRST | SEEN_CLIENT_FIN;
    entry.flags & FLAG_REPLY != 0
        && entry.seen & (CLOSED | SEEN_RST) == CLOSED
        && node_takes_syn(entry.fin_tsval, syn_tsval)
        && past_timeout(now, entry.last_seen_ns, TCP_CLOSED_TIMEOUT_NS)
}

/// `entry`'s connection's bits as (original direction, reply direction).
#[inline(always)]
fn directions(entry: &FlowEntry, peer_seen: u8) -> (u8, u8) {
    forwarder_common::conntrack::directions(entry.flags, entry.seen, peer_seen)
}

/// [`expired`] for `entry` judged without its peer.
#[inline(always)]
pub fn expired_alone(entry: &FlowEntry, proto: u8, now: u64) -> bool {
    now.saturating_sub(entry.last_seen_ns) > ALIVE_FOR_SURE_NS && expired_with(entry, None, proto, now)
}

/// [`expired`], with `entry`'s peer (`None`: gone) looked up by the caller.
#[inline(always)]
fn expired_with(entry: &FlowEntry, peer: Option<Peer>, proto: u8, now: u64) -> bool {
    let (mut peer_seen, mut last) = (0, entry.last_seen_ns);
    if let Some(peer) = peer {
        peer_seen = peer.seen;
        if peer.last_seen_ns > last {
            last = peer.last_seen_ns;
        }
    }
    let (original, reply) = directions(entry, peer_seen);
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
    let peer = peer(table, key, entry);
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

/// Records a forwarded packet of the connection `entry` found (keyed
/// `key` in `table`, state kept at `at`), writing only when something
/// changed so an established flow's cache line stays shared between CPUs.
/// The node's FIN, when it comes before the client's, is marked
/// (`SEEN_FIN_FIRST`): the node then holds the tuple in TIME_WAIT, which
/// the connection's timeout waits out. One peer lookup per connection, on
/// its first reply FIN.
///
/// Concurrent updates from other CPUs race benignly: both store a recent
/// time, or OR in flags.
#[inline(always)]
pub fn touch(table: Table, key: &FlowKey, at: At, packet_seen: u8, now: u64) {
    match at {
        At::Entry(ptr) => {
            // SAFETY: a map value pointer from the lookup helper, used at once.
            let entry = unsafe { &mut *ptr };
            if refresh_due(entry, now) {
                entry.last_seen_ns = now;
            }
            let mut seen = entry.seen | packet_seen;
            if seen != entry.seen {
                let first_fin = packet_seen & SEEN_FIN != 0 && entry.seen & SEEN_FIN == 0;
                if first_fin && entry.flags & FLAG_REPLY != 0 {
                    let peer_closed = peer(table, key, entry).is_some_and(|peer| peer.seen & SEEN_FIN != 0);
                    if !peer_closed {
                        seen |= SEEN_FIN_FIRST;
                    }
                }
                entry.seen = seen;
            }
            if packet_seen & SEEN_FIN != 0 && entry.flags & FLAG_REPLY == 0 {
                note_client_fin(table, key, entry, crate::tcp_ts::tsval(packet_seen), now);
            }
        }
        At::Origin(slot) => {
            // SAFETY: a map value pointer from the lookup helper, used at once.
            let slot = unsafe { &mut *slot };
            if now.saturating_sub(slot.last_seen_ns) > REFRESH_INTERVAL_NS {
                slot.last_seen_ns = now;
            }
            if slot.seen | packet_seen != slot.seen {
                slot.seen |= packet_seen;
            }
        }
    }
}

/// Records a FIN the client sent, with the timestamp value `tsval`, on the
/// connection whose original entry is `entry` (keyed `key` in `table`) in
/// its reply entry, if that is still its peer: `SEEN_CLIENT_FIN`, the
/// timestamp (see `FlowEntry::fin_tsval`), and the time, so that the
/// connection counts as quiet from the client's last FIN on, however long
/// the node has been silent (see [`time_wait_takes`]; expiry takes the
/// later of the two entries' times, so this changes no timeout).
#[inline(always)]
fn note_client_fin(table: Table, key: &FlowKey, entry: &FlowEntry, tsval: u32, now: u64) {
    let Some(reply) = table.get_ptr_mut(&entry.peer_key(key.proto)) else { return };
    // SAFETY: a map value pointer from the lookup helper, used at once.
    let reply = unsafe { &mut *reply };
    if !reply.pairs_with(key) {
        return;
    }
    reply.fin_tsval = tsval;
    reply.seen |= SEEN_CLIENT_FIN;
    reply.last_seen_ns = now;
}

/// Records a forwarded packet of the connection keyed `key` in `table`,
/// its state of `kind` (looked up afresh: LRU entries are recycled at
/// once, and a slot may meanwhile be another connection's) and, with
/// `hop`, the next hop its route lookup found for a packet of IPv4 total
/// length `len` (a racing writer stores an answer as recent; at worst a
/// packet looks the route up once more).
#[inline(always)]
pub fn record(
    table: Table,
    kind: Kind,
    key: &FlowKey,
    packet_seen: u8,
    now: u64,
    hop: Option<(NextHop, u16)>,
) {
    match kind {
        Kind::Entry => {
            let Some(entry) = table.get_ptr_mut(key) else { return };
            if let Some((hop, len)) = hop {
                // SAFETY: a map value pointer from the lookup helper, used at once.
                let entry = unsafe { &mut *entry };
                entry.hop = hop;
                entry.hop_len = len;
            }
            touch(table, key, At::Entry(entry), packet_seen, now);
        }
        Kind::Origin => {
            let Some(slot) = slot_of(flow_hash(key.src, key.dst, key.sport, key.dport, key.proto)) else {
                return;
            };
            // SAFETY: an `ORIGINS` value pointer, used at once. The key
            // alone is checked: a slot torn elsewhere is still refused by
            // its readers, whose reply entry must pair with the key.
            let described = unsafe { &mut *slot };
            let reply = described.reply;
            if described.key != *key {
                return;
            }
            if let Some((hop, len)) = hop {
                described.set_hop(key, &reply, &hop, len);
            }
            touch(table, key, At::Origin(slot), packet_seen, now);
        }
    }
}
