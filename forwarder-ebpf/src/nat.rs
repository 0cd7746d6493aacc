//! Creating a connection's translation (both entries, SNAT port included,
//! in the half-open table) and applying a translation to a packet.

use aya_ebpf::bindings::{BPF_ANY, BPF_NOEXIST};
use forwarder_common::{
    conntrack::{FLAG_REPLY, FLAG_SNAT},
    counters::Reason,
    csum,
    maps::{Backend, FlowEntry, FlowKey, NatMode, ServiceEntry, wire_port},
    snat::{SNAT_PORT_TRIES, snat_port},
};

use crate::{
    conntrack::{self, Table},
    maps::{FLOWS, HALF_OPEN, SECRET},
    parse::Packet,
    stats,
};

/// `EEXIST` (no errno constants in the BPF target's libraries).
const EEXIST: i32 = 17;

/// Creates the connection for `pkt` towards `backend`, in the half-open
/// table, and returns the original-direction entry to translate `pkt` with.
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
) -> Result<FlowEntry, Reason> {
    let backend_id = backend.id;
    let original = pkt.key;
    let proto = original.proto;
    let reply_to = original.reversed();
    let reply_of = |to: &FlowKey| {
        FlowEntry::rewriting(&to.reversed(), &reply_to, service.id, backend_id, FLAG_REPLY, now)
    };

    let (to, flags) = if service.mode == NatMode::Snat as u8 {
        let secret = SECRET.get(0).copied().unwrap_or(0);
        let to_via = |attempt| {
            let port = wire_port(snat_port(secret, hash, attempt));
            FlowKey::new(backend.snat_addr, backend.addr, port, backend.port, proto)
        };
        let mut claimed = None;
        for attempt in 0..SNAT_PORT_TRIES {
            let to = to_via(attempt);
            if claim(&to.reversed(), &reply_of(&to), now)? {
                claimed = Some(to);
                break;
            }
        }
        // Every port tried is held: the first one a half-open connection
        // holds is taken over (that connection's original entry, orphaned,
        // starts afresh), so that a flood of unanswered connections cannot
        // keep new ones out. A second pass rather than a note of it in the
        // first, which would multiply the states the verifier walks.
        if claimed.is_none() {
            for attempt in 0..SNAT_PORT_TRIES {
                let to = to_via(attempt);
                let key = to.reversed();
                if FLOWS.get_ptr(&key).is_none()
                    && HALF_OPEN.insert(&key, reply_of(&to), u64::from(BPF_ANY)).is_ok()
                {
                    stats::reason(Reason::HalfOpenDisplaced);
                    claimed = Some(to);
                    break;
                }
            }
        }
        (claimed.ok_or(Reason::DropSnatExhausted)?, FLAG_SNAT)
    } else {
        let to = FlowKey::new(original.src, backend.addr, original.sport, backend.port, proto);
        if !claim(&to.reversed(), &reply_of(&to), now)? {
            return Err(Reason::DropReplyCollision);
        }
        (to, 0)
    };

    let mut entry = FlowEntry::rewriting(&original, &to, service.id, backend_id, flags, now);
    entry.seen = pkt.seen;
    // An unusable entry of an earlier connection under this key goes:
    // lookups look in the established table first, and a later packet
    // could find it usable again (a SYN re-opening a closed connection,
    // then its ACK). Only here, where a connection replaces it: a packet
    // that starts none (TTL 1, a source not allowed) changes none.
    if FLOWS.get_ptr(&original).is_some() {
        let _ = FLOWS.remove(&original);
    }
    if HALF_OPEN.insert(original, entry, u64::from(BPF_ANY)).is_err() {
        let _ = HALF_OPEN.remove(to.reversed());
        return Err(Reason::DropFlowTableFull);
    }
    Ok(entry)
}

/// Inserts a reply entry in the half-open table unless its key belongs to
/// another live connection, in either table.
#[inline(always)]
fn claim(key: &FlowKey, reply: &FlowEntry, now: u64) -> Result<bool, Reason> {
    if let Some(existing) = FLOWS.get_ptr(key) {
        // SAFETY: a map value pointer from the lookup helper.
        if !reusable(Table::Established, key, unsafe { &*existing }, reply, now) {
            return Ok(false);
        }
        // Lookups look in the established table first.
        let _ = FLOWS.remove(key);
    }
    match HALF_OPEN.insert(key, reply, u64::from(BPF_NOEXIST)) {
        Ok(()) => return Ok(true),
        Err(err) if err == -EEXIST => {}
        Err(_) => return Err(Reason::DropFlowTableFull),
    }
    if let Some(existing) = HALF_OPEN.get_ptr(key)
        // SAFETY: as above.
        && !reusable(Table::HalfOpen, key, unsafe { &*existing }, reply, now)
    {
        return Ok(false);
    }
    let _ = HALF_OPEN.remove(key);
    Ok(HALF_OPEN.insert(key, reply, u64::from(BPF_NOEXIST)).is_ok())
}

/// Whether the entry `existing` (keyed `key` in `table`) may give its key
/// to the new connection whose reply entry is `reply`.
///
/// A key already taken is free again when its connection expired, or when
/// it translates to the same client and VIP (an earlier incarnation of
/// this very connection), or when it was closed and the new connection
/// comes from the same client (see `conntrack::closed_for_its_client`).
/// An orphan (its original entry evicted from the
/// full table, or its key since another connection's) is judged alone: it
/// is free once quiet for its own timeout, never while the node still
/// sends on it, or a server-push stream would reach the new client.
/// Deleting and re-inserting with `BPF_NOEXIST` keeps two CPUs from
/// claiming the same key at once.
#[inline(always)]
fn reusable(table: Table, key: &FlowKey, existing: &FlowEntry, reply: &FlowEntry, now: u64) -> bool {
    let same_connection = existing.new_src == reply.new_src
        && existing.new_dst == reply.new_dst
        && existing.new_sport == reply.new_sport
        && existing.new_dport == reply.new_dport;
    let same_client = existing.new_dst == reply.new_dst;
    same_connection
        || conntrack::expired(table, key, existing, now)
        || (same_client && conntrack::closed_for_its_client(table, key, existing, now))
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
