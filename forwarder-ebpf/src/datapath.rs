//! The translation core, independent of the hook it runs in.
//!
//! A hook (XDP, TC) supplies packet bounds, its context and ingress
//! interface; the core answers with a [`Verdict`] the hook turns into its
//! own return code. The packet is rewritten only when it will be forwarded.

use core::ffi::c_void;

use forwarder_common::{
    conntrack::FLAG_REPLY,
    counters::Reason,
    hash::flow_hash,
    maps::{FlowEntry, NatMode},
};
use network_types::eth::EthHdr;

use crate::{
    conntrack::{self, At, Kind, Lookup, Table},
    frag,
    fwd::{self, Route},
    icmp, lb,
    maps::{SCRATCH, SCRATCH_PACKET},
    mem, nat,
    parse::{Packet, parse},
    pmtu, stats, tcp_ts,
};

/// What a hook gives the core.
pub trait Hook {
    /// Whether this hook can hand a packet to the kernel's neighbour
    /// subsystem (`bpf_redirect_neigh`, TC only).
    const RESOLVES_NEIGH: bool;
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The frame's whole length: `data_end - data` in XDP; in TC more
    /// when the skb is not linear (a GSO packet's payload sits in pages
    /// beyond `data_end`).
    fn frame_len(&self) -> usize;
    fn ingress_ifindex(&self) -> u32;
    /// The program context, for helpers such as `bpf_fib_lookup`.
    fn ctx(&self) -> *mut c_void;
    /// The IP length of the largest packet this one leaves as: its own,
    /// or for a GSO packet (TC) that of one segment. What the egress MTU
    /// is checked against.
    fn wire_len(&self, pkt: &Packet) -> u16;
    /// Applies `entry`'s translation, checksums included, in the way this
    /// hook's packets need; false if it could not (the packet is then
    /// dropped). The packet's last change: helpers may move it.
    fn rewrite(&self, pkt: &Packet, entry: &FlowEntry) -> bool;
    /// Makes the first `len` bytes (or the whole frame, if shorter)
    /// directly readable, where the hook may hold less (an skb's linear
    /// area). Invalidates pointers into the packet.
    fn pull(&self, len: u32);
    /// Cuts the frame to its first `len` bytes and makes them directly
    /// writable; false if it could not. Invalidates pointers into the packet.
    fn shrink(&self, len: u32) -> bool;
    /// Copies `len` bytes of the packet from `offset` to `to`; false if it
    /// has fewer. Through a helper, so that the verifier's idea of how much
    /// of the packet is readable stays the same on every path.
    fn load_bytes(&self, offset: u32, to: *mut u8, len: u32) -> bool;
    /// Whether a packet passed untouched is counted under its reason: not
    /// on a second look at a packet another hook already passed (and
    /// counted). Asked only then, so that no flag is carried through the
    /// datapath for the verifier to walk it twice.
    fn counts_passes(&self) -> bool;
}

/// What to do with the packet.
pub enum Verdict {
    /// Untouched, to the kernel.
    Pass,
    Drop,
    /// Translated, out of the ingress interface.
    Tx,
    /// Translated, out of another interface.
    Redirect(u32),
    /// Untouched: the next hop's MAC is unknown, let a hook that can
    /// resolve neighbours handle it (XDP only).
    HandToNeighHook,
    /// Translated, out of `ifindex` through the neighbour subsystem (TC only).
    RedirectNeigh {
        ifindex: u32,
        nexthop: u32,
    },
}

/// Runs the datapath on one packet.
#[inline(always)]
pub fn process<H: Hook>(hook: &H) -> Verdict {
    match translate(hook) {
        Ok(verdict) => verdict,
        Err(reason) => {
            let drop = reason.is_drop();
            if drop || hook.counts_passes() {
                stats::reason(reason);
            }
            if drop { Verdict::Drop } else { Verdict::Pass }
        }
    }
}

#[inline(always)]
fn translate<H: Hook>(hook: &H) -> Result<Verdict, Reason> {
    let pkt = match parse(hook.data(), hook.data_end(), hook.frame_len()) {
        Err(Reason::PassNotTcpUdp) => return icmp::translate(hook),
        Err(Reason::PassFragment) => return frag::translate_later(hook),
        parsed => parsed?,
    };
    tcp_ts::load(hook, &pkt);
    let now = conntrack::now_ns();
    let wire_len = hook.wire_len(&pkt);
    let ingress = hook.ingress_ifindex();
    // The flow's entry, and its cached next hop unless due for a check or
    // the packet is longer than the one the route (and MTU) was checked
    // for. The entry lives in per-CPU scratch memory: the stack has no
    // room. Only a packet that is forwarded changes its connection's
    // state: a spoofed RST that would expire (TTL 1) or has no route never
    // reaches the node, so it must not close the connection here either.
    // The common case (a cached next hop) records it where it was just
    // found; after a route lookup it is looked up again (see
    // `conntrack::record`). Map pointers go no further than this match:
    // states that differ only in which map a pointer is into would each
    // be walked by the verifier through the rest of the program.
    // SAFETY: this CPU's scratch slot for the packet's entry.
    let entry = unsafe { &mut *SCRATCH.get_ptr_mut(SCRATCH_PACKET).ok_or(Reason::PassMalformed)? };
    // A SYN or datagram to a preserve-mode service starts no state (see
    // `forwarder_common::origin`), so no half-open connection is looked for.
    let opens_stateless =
        || pkt.opens() && lb::service(&pkt.key).is_some_and(|s| s.mode == NatMode::Preserve as u8);
    let (table, kind, tracked, cached) = match conntrack::find(&pkt.key, pkt.seen, now, opens_stateless) {
        Lookup::Usable { table, ptr } => {
            // SAFETY: a map value pointer from the lookup helper, copied
            // so later map updates cannot alias it.
            unsafe { mem::copy::<u64, _>(entry, ptr) };
            if pkt.ttl() <= 1 {
                return Err(Reason::PassTtlExpired);
            }
            let cached = hop_cached(entry, now, wire_len);
            if cached {
                conntrack::touch(table, &pkt.key, At::Entry(ptr), pkt.seen, now);
            }
            (table, Kind::Entry, true, cached)
        }
        Lookup::Origin { slot, reply } => {
            // SAFETY: map value pointers from the lookup helper.
            *entry = unsafe { (*slot).entry(&*reply) };
            if pkt.ttl() <= 1 {
                return Err(Reason::PassTtlExpired);
            }
            let cached = hop_cached(entry, now, wire_len);
            if cached {
                conntrack::touch(Table::HalfOpen, &pkt.key, At::Origin(slot), pkt.seen, now);
            }
            (Table::HalfOpen, Kind::Origin, true, cached)
        }
        Lookup::Answer { slot } => {
            if pkt.ttl() <= 1 {
                return Err(Reason::PassTtlExpired);
            }
            // SAFETY: an `ORIGINS` value pointer from the lookup helper.
            unsafe { nat::answer(&pkt, slot, now, entry)? };
            (Table::HalfOpen, Kind::Entry, true, false)
        }
        Lookup::New { stale } => {
            new_flow(&pkt, now, stale, ingress, wire_len, entry)?;
            (Table::HalfOpen, Kind::Origin, false, entry.hop.ifindex != 0)
        }
    };
    let entry: &FlowEntry = entry;
    let route = if cached {
        Route::Via(entry.hop)
    } else {
        let route = fwd::route(hook.ctx(), ingress, &pkt, wire_len, entry)?;
        if let Route::TooBig { mtu } = route {
            return too_big(hook, &pkt, mtu);
        }
        match &route {
            Route::Via(hop) => {
                if !tracked {
                    fwd::keep_first_hop(&pkt, entry, ingress, wire_len, hop, now);
                }
                conntrack::record(table, kind, &pkt.key, pkt.seen, now, Some((*hop, wire_len)))
            }
            Route::NoNeigh { .. } if H::RESOLVES_NEIGH => {
                conntrack::record(table, kind, &pkt.key, pkt.seen, now, None)
            }
            // The TC program translates (and records) it.
            Route::NoNeigh { .. } | Route::TooBig { .. } => {}
        }
        route
    };
    match route {
        Route::Via(hop) => {
            // SAFETY: `eth` was bounds-checked by `parse`.
            unsafe { fwd::set_macs(pkt.eth, &hop) };
            let first = pkt.first_fragment().then(|| frag::first(&pkt, entry, now, ingress));
            if !hook.rewrite(&pkt, entry) {
                return Err(Reason::DropRedirectFailed);
            }
            if let Some(first) = &first {
                frag::remember(first);
            }
            forwarded(&pkt, entry, table, tracked);
            if hop.ifindex == ingress {
                stats::reason(Reason::TxSameInterface);
                Ok(Verdict::Tx)
            } else {
                stats::reason(Reason::Redirect);
                Ok(Verdict::Redirect(hop.ifindex))
            }
        }
        Route::NoNeigh { ifindex, nexthop } if H::RESOLVES_NEIGH => {
            let first = pkt.first_fragment().then(|| frag::first(&pkt, entry, now, ingress));
            if !hook.rewrite(&pkt, entry) {
                return Err(Reason::DropRedirectFailed);
            }
            if let Some(first) = &first {
                frag::remember(first);
            }
            forwarded(&pkt, entry, table, tracked);
            stats::reason(Reason::RedirectNeigh);
            Ok(Verdict::RedirectNeigh { ifindex, nexthop })
        }
        Route::NoNeigh { .. } => {
            stats::reason(Reason::HandedToTc);
            Ok(Verdict::HandToNeighHook)
        }
        Route::TooBig { mtu } => too_big(hook, &pkt, mtu),
    }
}

/// Whether `entry`'s next hop may be used without a route lookup: there
/// is one, it is not due for a check, and it was looked up for a packet
/// at least as long as this one (`wire_len`).
#[inline(always)]
fn hop_cached(entry: &FlowEntry, now: u64, wire_len: u16) -> bool {
    entry.hop.ifindex != 0 && !conntrack::refresh_due(entry, now) && wire_len <= entry.hop_len
}

/// Counts a packet translated with `entry` (from `table`; `tracked`: of a
/// connection found, not created by this packet) as forwarded, and moves
/// its connection to the established table if the packet answered it
/// (only the node answers, with a reply entry's packet): only a packet
/// that is forwarded changes its connection's state.
#[inline(always)]
fn forwarded(pkt: &Packet, entry: &FlowEntry, table: Table, tracked: bool) {
    stats::forwarded(entry, pkt.ip_len);
    if tracked && table == Table::HalfOpen && entry.flags & FLAG_REPLY != 0 {
        conntrack::promote(&pkt.key, pkt.seen);
    }
}

/// A packet longer than its egress MTU: with DF, answered with ICMP
/// "fragmentation needed" (see `pmtu`); without, dropped (fragmenting is
/// not done).
#[inline(always)]
fn too_big<H: Hook>(hook: &H, pkt: &Packet, mtu: u16) -> Result<Verdict, Reason> {
    // Never an answer to a source that is no host (RFC 1122 3.2.2).
    let sender = u32::from_be(pkt.key.src);
    let unicast = sender != 0 && sender >> 28 != 0xe && sender != u32::MAX;
    if !pkt.dont_fragment() || !unicast || !pmtu::answer(hook, pkt, mtu) {
        return Err(Reason::DropFragNeeded);
    }
    stats::reason(Reason::FragNeededSent);
    // Redirected to the ingress interface rather than sent with XDP_TX: a
    // veth hands XDP_TX frames to a peer without an XDP program of its own
    // but does not wake it, so the answer would wait for the next
    // redirected packet (measured: ten seconds of a stalled upload); a
    // redirect flushes.
    stats::reason(Reason::Redirect);
    Ok(Verdict::Redirect(hook.ingress_ifindex()))
}

/// A packet without a usable flow (arriving on `ingress`, `wire_len`
/// long): if it is for a service, start a connection (`stale`: see
/// [`conntrack::Lookup`]); its original entry goes to `entry`, with a
/// next hop if one recent enough is known (see `fwd::first_hop`).
#[inline(always)]
fn new_flow(
    pkt: &Packet,
    now: u64,
    stale: bool,
    ingress: u32,
    wire_len: u16,
    entry: &mut FlowEntry,
) -> Result<(), Reason> {
    let service = lb::service(&pkt.key).ok_or(Reason::PassNoService)?;
    if pkt.ttl() <= 1 {
        return Err(Reason::PassTtlExpired);
    }
    if !lb::source_allowed(&service, pkt.key.src) {
        return Err(Reason::DropSourceNotAllowed);
    }
    let key = &pkt.key;
    let hash = flow_hash(key.src, key.dst, key.sport, key.dport, key.proto);
    let backend = lb::pick(&service, hash)?;
    // Decided on this lookup of the service, whatever `find` was told; not
    // over an earlier connection's entry (see `conntrack::find`).
    let stateless = !stale && pkt.opens() && service.mode == NatMode::Preserve as u8;
    if stateless {
        nat::forward_unanswered(pkt, &service, &backend, now, stale, entry);
    } else {
        nat::create(pkt, &service, &backend, hash, now, stale, entry)?;
    }
    if let Some(kept) = fwd::first_hop(pkt, entry, ingress, wire_len, now) {
        entry.hop = kept.hop;
        entry.hop_len = kept.len;
    }
    let new = if stateless {
        nat::remember_pending(pkt, entry)
    } else {
        nat::remember_origin(pkt, entry, hash)?;
        true
    };
    if new {
        stats::new_flow(entry);
    }
    Ok(())
}

/// How a packet translated outside a connection's own path (an ICMP
/// error, a later fragment) leaves by `route`: the MACs set for a known
/// next hop and the way counted. `HandToNeighHook` means: leave it
/// untouched for TC. A packet too big is dropped: it is neither an error
/// to answer with an error (RFC 1122) nor one the datapath fragments.
///
/// # Safety
/// `eth` must point to the packet's bounds-checked Ethernet header.
#[inline(always)]
pub unsafe fn leave<H: Hook>(route: Route, eth: *mut EthHdr, ingress: u32) -> Result<Verdict, Reason> {
    Ok(match route {
        Route::Via(hop) => {
            // SAFETY: as the caller promised.
            unsafe { fwd::set_macs(eth, &hop) };
            if hop.ifindex == ingress {
                stats::reason(Reason::TxSameInterface);
                Verdict::Tx
            } else {
                stats::reason(Reason::Redirect);
                Verdict::Redirect(hop.ifindex)
            }
        }
        Route::NoNeigh { ifindex, nexthop } if H::RESOLVES_NEIGH => {
            stats::reason(Reason::RedirectNeigh);
            Verdict::RedirectNeigh { ifindex, nexthop }
        }
        Route::NoNeigh { .. } => {
            stats::reason(Reason::HandedToTc);
            Verdict::HandToNeighHook
        }
        Route::TooBig { .. } => return Err(Reason::DropFragNeeded),
    })
}
