//! Creating a connection's translation (its reply entry in the half-open
//! table, SNAT port included, and its `ORIGINS` slot) and applying a
//! translation to a packet.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use forwarder_common::{
    conntrack::{FLAG_PENDING, FLAG_REPLY, FLAG_SNAT, SEEN_ACK, SEEN_RST, SEEN_SYN, TCP_SYN_TIMEOUT_NS},
    counters::Reason,
    csum,
    hash::flow_hash,
    maps::{Backend, FlowEntry, FlowKey, NatMode, ServiceEntry},
    origin::Origin,
};

use crate::{
    conntrack::{self, Table},
    lb,
    maps::{FLOWS, HALF_OPEN, SCRATCH, SCRATCH_BUILD},
    parse::Packet,
    ports::{self, Start},
    stats, tcp_ts,
};

/// The service or backend id of a connection whose service or backend is
/// not known: an index no traffic counter has.
const UNKNOWN: u32 = u32::MAX;

/// `EEXIST` (no errno constants in the BPF target's libraries).
const EEXIST: i32 = 17;

/// Creates the connection for `pkt` (whose flow hash is `hash`) towards
/// `backend`: its reply entry in the half-open table, which claims the
/// reply tuple. Writes the original-direction entry to translate `pkt`
/// with to `entry`; [`remember_origin`] then writes its slot.
/// `stale`: an unusable entry of an earlier connection is left under the
/// packet's key in the established table.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a key passed by value is copied to the stack, which then overflows its 512 bytes"
)]
pub fn create(
    pkt: &Packet,
    service: &ServiceEntry,
    backend: &Backend,
    hash: u32,
    now: u64,
    stale: bool,
    entry: &mut FlowEntry,
) -> Result<(), Reason> {
    let backend_id = backend.id;
    let original = pkt.key;
    let proto = original.proto;
    let (to, flags) = if service.mode == NatMode::Snat as u8 {
        let (addr, port) = match retake(pkt, service, backend, hash, now) {
            Ok(pair) => pair,
            Err(start) => ports::search(&original, service, backend, hash, start, now)?,
        };
        (FlowKey::new(addr, backend.addr, port, backend.port, proto), FLAG_SNAT)
    } else {
        let to = FlowKey::new(original.src, backend.addr, original.sport, backend.port, proto);
        // Built in per-CPU scratch memory: the stack has no room for it.
        let reply = SCRATCH.get_ptr_mut(SCRATCH_BUILD).ok_or(Reason::DropFlowTableFull)?;
        // SAFETY: this CPU's scratch slot for entries being built.
        let reply = unsafe { &mut *reply };
        *reply = FlowEntry::rewriting(
            &to.reversed(),
            &original.reversed(),
            service.id,
            backend_id,
            FLAG_REPLY,
            now,
        );
        // The client's own tuple: what a node in TIME_WAIT on it accepts
        // is between it and the client, as without NAT.
        if !claim(&to.reversed(), reply, now, SameClientClosed::Reuse)? {
            return Err(Reason::DropReplyCollision);
        }
        (to, 0)
    };

    *entry = FlowEntry::rewriting(&original, &to, service.id, backend_id, flags, now);
    entry.seen = pkt.seen;
    // An unusable entry of an earlier connection under this key goes:
    // lookups look in the established table first, and a later packet
    // could find it usable again (a SYN re-opening a closed connection,
    // then its ACK). Only here, where a connection replaces it: a packet
    // that starts none (TTL 1, a source not allowed) changes none.
    if stale {
        let _ = FLOWS.remove(&original);
    }
    Ok(())
}

/// The translation of `pkt`, a SYN or UDP datagram to the preserve-mode
/// `service`, towards `backend`, written to `entry`: forwarded without state, it
/// claims nothing (the node's answer does, see [`answer`]); only
/// [`remember_pending`] writes its slot. `stale`: as for [`create`].
#[inline(always)]
pub fn forward_unanswered(
    pkt: &Packet,
    service: &ServiceEntry,
    backend: &Backend,
    now: u64,
    stale: bool,
    entry: &mut FlowEntry,
) {
    let original = &pkt.key;
    let to = FlowKey::new(original.src, backend.addr, original.sport, backend.port, original.proto);
    *entry = FlowEntry::rewriting(original, &to, service.id, backend.id, 0, now);
    entry.seen = pkt.seen;
    if stale {
        let _ = FLOWS.remove(original);
    }
}

/// Writes the pending slot of the packet [`forward_unanswered`] translates
/// with `entry` (its next hop included, if known): indexed by the tuple
/// the node answers with, which finds it (see `forwarder_common::origin`).
/// Whether it is a new flow: not if the slot already waited for it (a
/// retransmitted SYN, the next datagram of an unanswered flow, the TC
/// hook's second look at what XDP handed over), so the new-connection
/// counters count each once. (The slot's line is read where it would be
/// written anyway.)
#[inline(always)]
pub fn remember_pending(pkt: &Packet, entry: &FlowEntry) -> bool {
    let reply = &entry.peer_key(pkt.key.proto);
    let Some(slot) =
        conntrack::slot_of(flow_hash(reply.src, reply.dst, reply.sport, reply.dport, reply.proto))
    else {
        return true;
    };
    // SAFETY: an `ORIGINS` value pointer; written whole, its check last.
    let slot = unsafe { &mut *slot };
    let again = slot.awaits(reply) && slot.key == pkt.key;
    write_origin(slot, &pkt.key, reply, entry, FLAG_PENDING);
    !again
}

/// Makes the connection of the node's answer `pkt` to a packet forwarded
/// without state, whose pending slot is `slot`: its reply entry in the
/// half-open table (claimed as [`create`] does, so a tuple another live
/// connection holds is refused) and the slot of its client tuple, from
/// there on a half-open connection as any other. Writes the reply entry
/// to `entry`. Its service and backend are those the first packet's
/// Maglev pick found, picked again (the slot has no room for them).
///
/// # Safety
/// `slot` must be an `ORIGINS` value pointer.
#[inline(always)]
pub unsafe fn answer(pkt: &Packet, slot: *mut Origin, now: u64, entry: &mut FlowEntry) -> Result<(), Reason> {
    // SAFETY: as the caller promised (`conntrack::find` found it waiting
    // for this answer).
    let pending = unsafe { &*slot };
    let key = &pkt.key;
    *entry = FlowEntry::rewriting(key, &pending.key.reversed(), 0, 0, FLAG_REPLY, pending.last_seen_ns);
    let original = &entry.peer_key(key.proto);
    // Counted against its service and backend if they are still what the
    // SYN found: `UNKNOWN` (counted nowhere) where the service went, or
    // its backends changed since (the node answers all the same).
    entry.service_id = UNKNOWN;
    entry.backend_id = UNKNOWN;
    if let Some(service) = lb::service(original) {
        entry.service_id = service.id;
        let hash = flow_hash(original.src, original.dst, original.sport, original.dport, key.proto);
        if let Ok(backend) = lb::pick(&service, hash)
            && backend.addr == key.src
            && backend.port == key.sport
        {
            entry.backend_id = backend.id;
        }
    }
    if !claim(key, entry, now, SameClientClosed::Reuse)? {
        return Err(Reason::DropReplyCollision);
    }
    let client_slot =
        conntrack::slot_of(flow_hash(original.src, original.dst, original.sport, original.dport, key.proto));
    let Some(client_slot) = client_slot else {
        let _ = HALF_OPEN.remove(key);
        return Err(Reason::DropFlowTableFull);
    };
    if client_slot != slot {
        // SAFETY: two distinct `ORIGINS` value pointers; the new slot is
        // written whole, its check last (from what was written: a pending
        // slot torn meanwhile yields one whose reply entry does not pair
        // with its key, refused by its readers).
        unsafe { adopt(&mut *client_slot, pending) };
    }
    // The pending slot is spent, or (both tuples hashing to it) becomes
    // the client's (its flags are not in its check): a later packet of the
    // node finds the connection, or, once that is gone, nothing to bring
    // it back with.
    // SAFETY: as above; a flag of a slot still waiting for this answer.
    let pending = unsafe { &mut *slot };
    if pending.awaits(key) {
        pending.flags &= !FLAG_PENDING;
    }
    Ok(())
}

/// Writes the slot of a half-open connection from the pending slot of the
/// packet it began with, another slot.
#[inline(always)]
fn adopt(slot: &mut Origin, pending: &Origin) {
    slot.key = pending.key;
    slot.reply = pending.reply;
    slot.hop = pending.hop;
    slot.last_seen_ns = pending.last_seen_ns;
    slot.hop_len = pending.hop_len;
    slot.seen = pending.seen;
    slot.flags = pending.flags & !FLAG_PENDING;
    slot.check = Origin::check_of(&slot.key, &slot.reply, &slot.hop);
}

/// Writes the `ORIGINS` slot of the connection [`create`] just made for
/// `pkt` (flow hash `hash`), whose original entry is `entry` (its next
/// hop included, if known); if there is none, undoes the connection.
#[inline(always)]
pub fn remember_origin(pkt: &Packet, entry: &FlowEntry, hash: u32) -> Result<(), Reason> {
    // A reference: a key passed by value is copied to the stack, which
    // has no room for it.
    let reply = &entry.peer_key(pkt.key.proto);
    let Some(slot) = conntrack::slot_of(hash) else {
        let _ = HALF_OPEN.remove(reply);
        return Err(Reason::DropFlowTableFull);
    };
    // SAFETY: an `ORIGINS` value pointer; the slot is written whole, its
    // check last, and trusted by readers only if the check matches.
    unsafe { write_origin(&mut *slot, &pkt.key, reply, entry, 0) };
    Ok(())
}

/// The SNAT address and port (wire order) of the half-open connection of
/// `pkt` (flow hash `hash`, towards `backend`), taken back for it: its
/// slot is whole and fresh, but its reply entry was evicted from the full
/// half-open table or, for TCP, its port taken over by a newer half-open
/// connection (the SNAT search's second pass). The node knows a TCP
/// connection by that tuple, and of two handshakes on one tuple it
/// completes at most one: this one, the further along (its client
/// acknowledges), gets it, where a new port would get its ACK a RST. A
/// UDP flow gets its port back only if nobody holds it (another client's
/// flow may be using it). Not for a SYN, which starts a connection afresh,
/// nor a RST, nor when an established connection holds the port.
///
/// Otherwise (`Err`), how the SNAT search is to start: for an ACK that no
/// slot describes, by looking for its connection's own pair
/// (`ports::Start::NoSlot`).
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "a key passed by value is copied to the stack, which then overflows its 512 bytes"
)]
fn retake(
    pkt: &Packet,
    service: &ServiceEntry,
    backend: &Backend,
    hash: u32,
    now: u64,
) -> Result<(u32, u16), Start> {
    let tcp = pkt.is_tcp();
    if tcp && pkt.seen & SEEN_SYN != 0 {
        return Err(Start::Syn);
    }
    if tcp && pkt.seen & (SEEN_RST | SEEN_ACK) != SEEN_ACK {
        return Err(Start::Other);
    }
    let Some(slot) = conntrack::slot_of(hash) else { return Err(Start::Other) };
    // SAFETY: an `ORIGINS` value pointer, read at once.
    let slot = unsafe { &*slot };
    if !slot.describes(&pkt.key) {
        // (Not for UDP, where every new flow would pay for the look: its
        // next datagram takes the first free pair, to the node a new flow
        // unless that is its old one.)
        return Err(if tcp { Start::NoSlot } else { Start::Other });
    }
    let reply = slot.reply;
    let fresh = now.saturating_sub(slot.last_seen_ns) <= TCP_SYN_TIMEOUT_NS;
    // Its address may be any of the pool's (the slot was written for a
    // SNAT connection to this backend; not one of preserve mode's).
    let ours = slot.flags & FLAG_SNAT != 0
        && reply.src == backend.addr
        && reply.sport == backend.port
        && reply.dst != 0;
    if !fresh || !ours || FLOWS.get_ptr(&reply).is_some() {
        return Err(Start::Other);
    }
    let Some(built) = SCRATCH.get_ptr_mut(SCRATCH_BUILD) else { return Err(Start::Other) };
    // SAFETY: this CPU's scratch slot for entries being built, used at once.
    let built = unsafe { &mut *built };
    *built = FlowEntry::rewriting(&reply, &pkt.key.reversed(), service.id, backend.id, FLAG_REPLY, now);
    let flags = if tcp { BPF_ANY } else { BPF_NOEXIST };
    if HALF_OPEN.insert(&reply, &*built, u64::from(flags)).is_err() {
        return Err(Start::Other);
    }
    stats::reason(Reason::HalfOpenReclaimed);
    Ok((reply.dst, reply.dport))
}

/// Fills `slot` for the client tuple `key` whose reply entry is keyed
/// `reply` and whose original entry is `entry`, with `entry`'s flags and
/// `more`, field by field, the check from what was written: the stack has
/// no room for a copy.
#[inline(always)]
fn write_origin(slot: &mut Origin, key: &FlowKey, reply: &FlowKey, entry: &FlowEntry, more: u8) {
    slot.key = *key;
    slot.reply = *reply;
    slot.hop = entry.hop;
    slot.last_seen_ns = entry.last_seen_ns;
    slot.hop_len = entry.hop_len;
    slot.seen = entry.seen;
    slot.flags = entry.flags | more;
    slot.check = Origin::check_of(&slot.key, &slot.reply, &slot.hop);
}

/// Whether [`claim`] may give a key held by a closed connection of the
/// same client (see `conntrack::closed_for_its_client`) to a new one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SameClientClosed {
    /// Yes: the key is the client's own tuple (preserve mode), or none of
    /// the first SNAT pairs tried was free (see `ports::search`).
    Reuse,
    /// Only where a node that closed first takes the new connection's
    /// SYN, the packet being processed, on it (see
    /// `conntrack::time_wait_takes`): while a free SNAT pair may still be
    /// found, one where the node may refuse the SYN is not taken.
    IfNodeTakesSyn,
    /// No: the new connection does not start with a SYN (a node may refuse
    /// whatever it sends), and a free SNAT pair may still be found.
    Avoid,
}

/// Inserts a reply entry in the half-open table unless its key belongs to
/// another live connection, in either table (a closed one of the same
/// client counting as live unless `closed` says otherwise).
#[inline(always)]
pub fn claim(key: &FlowKey, reply: &FlowEntry, now: u64, closed: SameClientClosed) -> Result<bool, Reason> {
    if let Some(existing) = FLOWS.get_ptr(key) {
        // SAFETY: a map value pointer from the lookup helper.
        if !reusable(Table::Established, key, unsafe { &*existing }, reply, now, closed) {
            return Ok(false);
        }
        // Lookups look in the established table first.
        let _ = FLOWS.remove(key);
    }
    // Looked up before inserting: an insertion allocates an entry first,
    // from the full table by evicting one, even when the key turns out to
    // be taken, so a port tried in vain would cost a connection.
    let held = HALF_OPEN.get_ptr_mut(key);
    if held.is_none() {
        match HALF_OPEN.insert(key, reply, u64::from(BPF_NOEXIST)) {
            Ok(()) => return Ok(true),
            Err(err) if err == -EEXIST => {}
            Err(_) => return Err(Reason::DropFlowTableFull),
        }
    }
    if let Some(existing) = held.or_else(|| HALF_OPEN.get_ptr_mut(key)) {
        // SAFETY: as above.
        let existing = unsafe { &mut *existing };
        if same_connection(existing, reply) {
            // This connection's own reply entry (its client starts it
            // again, or lost its slot to another): replaced whole, as an
            // update does (allocating: in a full share it evicts another
            // half-open connection, as a new one would). Not copied over
            // in place: the sweeper, which takes an expired entry out and
            // puts back what it took if that is not what it read, could
            // take a half-written one.
            // (Its failure, which only a share with no entry to evict
            // returns, counts as a taken key: telling it apart costs the
            // TC program 45k verified instructions.)
            return Ok(HALF_OPEN.insert(key, reply, u64::from(BPF_ANY)).is_ok());
        }
        if !reusable(Table::HalfOpen, key, existing, reply, now, closed) {
            return Ok(false);
        }
    }
    let _ = HALF_OPEN.remove(key);
    Ok(HALF_OPEN.insert(key, reply, u64::from(BPF_NOEXIST)).is_ok())
}

/// Whether a live half-open connection other than the one whose reply
/// entry is `reply` holds the reply tuple `key`, so that [`claim`] would
/// fail: a SNAT port tried in vain is most often one, and this costs one
/// lookup where `claim` costs two (a free port pays it on top of
/// `claim`'s, in a bucket then cached).
#[inline(always)]
pub fn half_open_holds(key: &FlowKey, reply: &FlowEntry, now: u64) -> bool {
    // (`SameClientClosed` does not matter: a half-open entry is judged
    // alone, see `reusable`.)
    // SAFETY: a map value pointer from the lookup helper.
    HALF_OPEN.get_ptr(key).is_some_and(|existing| {
        !reusable(Table::HalfOpen, key, unsafe { &*existing }, reply, now, SameClientClosed::Reuse)
    })
}

/// Whether the entry `existing` (keyed `key` in `table`) may give its key
/// to the new connection whose reply entry is `reply`.
///
/// A key already taken is free again when its connection expired, or when
/// it translates to the same client and VIP (an earlier incarnation of
/// this very connection), or, where `closed` allows, when it was closed
/// and the new connection comes from the same client (see
/// `conntrack::closed_for_its_client`).
/// An orphan (its original entry evicted from the
/// full table, or its key since another connection's) is judged alone: it
/// is free once quiet for its own timeout, never while the node still
/// sends on it, or a server-push stream would reach the new client.
/// Deleting and re-inserting with `BPF_NOEXIST` keeps two CPUs from
/// claiming the same key at once.
#[inline(always)]
fn reusable(
    table: Table,
    key: &FlowKey,
    existing: &FlowEntry,
    reply: &FlowEntry,
    now: u64,
    closed: SameClientClosed,
) -> bool {
    if same_connection(existing, reply) {
        return true;
    }
    if table == Table::HalfOpen {
        // A half-open connection's reply entry is judged alone: what its
        // client sent since (its slot) does not hold a port the node never
        // answered on for a whole timeout. (It also keeps the slot's lookup
        // out of this loop, which the verifier walks once per port tried.)
        return conntrack::expired_alone(existing, key.proto, now);
    }
    let same_client = existing.new_dst == reply.new_dst;
    conntrack::expired(table, key, existing, now)
        || (same_client
            && match closed {
                SameClientClosed::Reuse => conntrack::closed_for_its_client(table, key, existing, now),
                SameClientClosed::IfNodeTakesSyn => {
                    conntrack::time_wait_takes(existing, tcp_ts::tsval(SEEN_SYN), now)
                }
                SameClientClosed::Avoid => false,
            })
}

/// Whether the reply entries `existing` and `reply` translate to the same
/// client and VIP: the same connection, or an earlier incarnation of it.
#[inline(always)]
fn same_connection(existing: &FlowEntry, reply: &FlowEntry) -> bool {
    existing.new_src == reply.new_src
        && existing.new_dst == reply.new_dst
        && existing.new_sport == reply.new_sport
        && existing.new_dport == reply.new_dport
}

/// Rewrites addresses, ports, TTL and both checksums of `pkt` as `entry`
/// says, with the deltas computed when the flow was created: for packets
/// whose checksums are complete (XDP; see `tc::rewrite` for skbs).
#[inline(always)]
pub fn rewrite(pkt: &Packet, entry: &FlowEntry) {
    rewrite_headers(pkt, entry);
    // SAFETY: every pointer in `pkt` was bounds-checked by `parse`.
    unsafe {
        let ip = &mut *pkt.ip;
        ip.check = csum::apply(u16::from_ne_bytes(ip.check), entry.ip_csum_delta).to_ne_bytes();
        let old = u16::from_ne_bytes(*pkt.l4_check);
        let new = if pkt.is_tcp() {
            csum::apply(old, entry.l4_csum_delta)
        } else {
            csum::apply_udp(old, entry.l4_csum_delta)
        };
        *pkt.l4_check = new.to_ne_bytes();
    }
}

/// Rewrites addresses, ports and TTL of `pkt` as `entry` says, leaving
/// both checksums to the caller.
#[inline(always)]
pub fn rewrite_headers(pkt: &Packet, entry: &FlowEntry) {
    // SAFETY: every pointer in `pkt` was bounds-checked by `parse`.
    unsafe {
        let ip = &mut *pkt.ip;
        ip.src_addr = entry.new_src.to_ne_bytes();
        ip.dst_addr = entry.new_dst.to_ne_bytes();
        ip.ttl -= 1;
        let ports = pkt.l4.cast::<[u8; 4]>();
        let [s0, s1] = entry.new_sport.to_ne_bytes();
        let [d0, d1] = entry.new_dport.to_ne_bytes();
        *ports = [s0, s1, d0, d1];
    }
}
