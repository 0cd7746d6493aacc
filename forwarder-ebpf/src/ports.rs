//! The SNAT address and port search of a new connection: the pairs it
//! tries, as `bpf_loop` iterations.
//!
//! A plain loop is unrolled by the verifier, which walks its body once per
//! port tried, in every pass: most of the program's verification budget,
//! and most of its stack. A `bpf_loop` callback is verified once, in a
//! frame of its own; each pass has its own: the look for a connection's
//! own pair ([`try_own_pair`]), then the two passes of the search proper
//! (see [`try_pair`]).

use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_loop};
use forwarder_common::{
    conntrack::FLAG_REPLY,
    counters::Reason,
    maps::{Backend, FlowEntry, FlowKey, ServiceEntry, wire_port},
    snat::{SNAT_FREE_TRIES, SNAT_PORT_TRIES, snat_pool_index, snat_port},
};

use crate::{
    conntrack,
    maps::{FLOWS, HALF_OPEN, SCRATCH, SCRATCH_BUILD, SECRET, SNAT_POOL},
    nat::{SameClientClosed, claim, half_open_holds},
    stats,
};

/// The look for a connection's own pair stops at this many pairs that no
/// connection holds (see [`Start::NoSlot`]).
const OWN_LOOK_FREE_PAIRS: u8 = 2;

/// What the search needs, and what it found: the callback's context.
#[repr(C)]
struct Search {
    secret: u64,
    now: u64,
    /// The client's tuple reversed: what replies are translated to.
    reply_to: FlowKey,
    /// The backend's own SNAT address: where there is no pool.
    snat_addr: u32,
    backend_addr: u32,
    service_id: u32,
    backend_id: u32,
    hash: u32,
    backend_port: u16,
    proto: u8,
    /// Whether the new connection starts with a SYN (whose timestamp
    /// value `tcp_ts` holds).
    syn: bool,
    /// The port claimed (wire order), 0 while none: SNAT ports start at 1024.
    port: u16,
    /// The half-open table refused an insertion.
    full: bool,
    /// Pairs no connection holds that the look for a connection's own
    /// pair passed (see [`Start::NoSlot`]).
    free_passed: u8,
    /// The address claimed with `port` (last: fields are laid out so the
    /// compiler's merged loads stay aligned, as the verifier demands).
    claimed_addr: u32,
}

/// How the new connection starts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// With a SYN (whose timestamp value `tcp_ts` holds).
    Syn,
    /// With another packet: a UDP datagram of no known flow, a TCP
    /// segment without ACK or with RST, or an ACK whose slot names its
    /// connection but whose pair `nat::retake` could not take back.
    Other,
    /// With a TCP segment with ACK, without SYN or RST, that no slot
    /// describes: of a half-open connection whose `ORIGINS` slot a newer
    /// connection took (slots are shared by hash, and a flood overwrites
    /// them fast), or of no connection known (a flood's ACK, a connection
    /// the tables lost). Its connection's pair, if it has one, is looked
    /// for first, in the order the search tries them (counted as taken
    /// back). Not the first free pair: one tried before its own may have
    /// been freed since its SYN, and the node, which knows the connection
    /// by its own pair, would answer the ACK on another with a RST.
    ///
    /// The look stops at the second pair that no connection holds, a
    /// bound on what an ACK of no connection costs where the table has
    /// room (in a full one it looks at every pair). Its SYN found every
    /// pair before its own held; the look still finds its own if one of
    /// them was freed since, not if two were, which the short time from
    /// SYN to ACK makes rare but a table turning over fast (a flood) does
    /// not rule out.
    NoSlot,
}

/// Claims a SNAT address and port for the new connection of the client
/// tuple `original` (flow hash `hash`) towards `backend`: its reply entry
/// goes to the half-open table. Returns both, in wire order. The address
/// is the backend's SNAT address, or one of the pool's (see
/// `forwarder_common::snat::snat_pool_index`).
///
/// A connection that starts with an ACK no slot describes first looks for
/// a pair of its own among all `SNAT_PORT_TRIES` (see [`Start::NoSlot`]);
/// if it has none, it searches as any other.
///
/// The first `SNAT_FREE_TRIES` pairs are tried for a free one. If all are
/// held, the first pair of all `SNAT_PORT_TRIES` that is free, held by a
/// closed connection of the same client, or held by a half-open
/// connection is taken (in the order the pairs are tried, whichever of
/// the three it is), the last taken over (its client's next packet takes
/// it back or starts afresh), so that a flood of unanswered connections
/// can neither keep new ones out nor make each of them try every pair.
/// Ports of established connections never are taken over.
///
/// A pair of a closed connection of the same client that the node closed
/// first counts as free in the first pass only if the node takes the new
/// connection's SYN on it: the node holds the tuple in TIME_WAIT and
/// refuses a SYN whose timestamp is not newer than the one of the
/// client's FIN, which half of new connections from the same client carry
/// (Linux draws a timestamp offset per connection); the client then
/// retries about 8 ms later (see `conntrack::time_wait_takes`). Without a
/// timestamp on either side (a SYN not laid out as `tcp_ts` expects, a
/// client that sends none, a new connection that starts with no SYN), such
/// a pair waits for the second pass, so that a free pair among the first
/// `SNAT_FREE_TRIES` goes before it, not one further on. (A third pass
/// for closed pairs alone, so that none of them is passed over for a
/// half-open connection's, made the verifier refuse the program.)
#[inline(always)]
pub fn search(
    original: &FlowKey,
    service: &ServiceEntry,
    backend: &Backend,
    hash: u32,
    start: Start,
    now: u64,
) -> Result<(u32, u16), Reason> {
    let mut search = Search {
        secret: SECRET.get(0).copied().unwrap_or(0),
        now,
        reply_to: original.reversed(),
        snat_addr: backend.snat_addr,
        backend_addr: backend.addr,
        service_id: service.id,
        backend_id: backend.id,
        hash,
        backend_port: backend.port,
        proto: original.proto,
        syn: start == Start::Syn,
        port: 0,
        full: false,
        free_passed: 0,
        claimed_addr: 0,
    };
    if start == Start::NoSlot {
        run(&mut search, SNAT_PORT_TRIES, try_own_pair);
        if search.port != 0 {
            stats::reason(Reason::HalfOpenReclaimed);
            return Ok((search.claimed_addr, search.port));
        }
    }
    run(&mut search, SNAT_FREE_TRIES, try_free_pair);
    if search.port == 0 && !search.full {
        run(&mut search, SNAT_PORT_TRIES, try_any_pair);
    }
    if search.full {
        return Err(Reason::DropFlowTableFull);
    }
    if search.port == 0 {
        return Err(Reason::DropSnatExhausted);
    }
    Ok((search.claimed_addr, search.port))
}

/// Tries the first `tries` pairs with `callback`, until one is claimed.
#[inline(always)]
fn run(search: &mut Search, tries: u32, callback: extern "C" fn(u64, *mut c_void) -> i64) {
    let callback = callback as *mut c_void;
    // SAFETY: a helper taking the callback, its context (on this stack,
    // alive throughout) and no flags.
    unsafe { bpf_loop(tries, callback, (search as *mut Search).cast(), 0) };
}

/// One pair of the first pass, for a free one: the `bpf_loop` callback.
/// 1 stops the loop.
extern "C" fn try_free_pair(attempt: u64, ctx: *mut c_void) -> i64 {
    try_pair::<false>(attempt, ctx)
}

/// One pair of the second pass: free, held by a closed connection of the
/// same client, or taken over from a half-open one.
extern "C" fn try_any_pair(attempt: u64, ctx: *mut c_void) -> i64 {
    try_pair::<true>(attempt, ctx)
}

/// One pair, in the first pass or (`SECOND`) the second. Two callbacks,
/// each verified with its pass a constant: one reading the pass from its
/// context made the verifier walk 85-102k more instructions.
#[inline(always)]
fn try_pair<const SECOND: bool>(attempt: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `run` passes its `Search`.
    let search = unsafe { &mut *ctx.cast::<Search>() };
    let attempt = attempt as u32;
    // (Not shared with `try_own_pair` through a function: that took this
    // callback's frame from 80 to 88 bytes, and with the program's 424
    // past the 512 of a call chain.)
    let port = wire_port(snat_port(search.secret, search.hash, attempt));
    let addr = pool_addr(search.hash, attempt).unwrap_or(search.snat_addr);
    let key = FlowKey::new(search.backend_addr, addr, search.backend_port, port, search.proto);
    let Some(reply) = SCRATCH.get_ptr_mut(SCRATCH_BUILD) else {
        search.full = true;
        return 1;
    };
    // SAFETY: this CPU's scratch slot for entries being built (the stack
    // has no room), used at once.
    let reply = unsafe { &mut *reply };
    *reply = FlowEntry::rewriting(
        &key,
        &search.reply_to,
        search.service_id,
        search.backend_id,
        FLAG_REPLY,
        search.now,
    );
    // The second pass tries every pair for free again, closed connections
    // of the same client now counting as free (see `search`).
    let closed = match (SECOND, search.syn) {
        (true, _) => SameClientClosed::Reuse,
        (false, true) => SameClientClosed::IfNodeTakesSyn,
        (false, false) => SameClientClosed::Avoid,
    };
    let free = if half_open_holds(&key, reply, search.now) {
        false
    } else {
        match claim(&key, reply, search.now, closed) {
            Ok(claimed) => claimed,
            Err(_) => {
                search.full = true;
                return 1;
            }
        }
    };
    let claimed = free || SECOND && displace(&key, reply);
    if claimed {
        search.port = port;
        search.claimed_addr = addr;
        return 1;
    }
    0
}

/// One pair of the look for a connection's own pair (see
/// [`Start::NoSlot`]): the `bpf_loop` callback. 1 stops the loop.
extern "C" fn try_own_pair(attempt: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `run` passes its `Search`.
    let search = unsafe { &mut *ctx.cast::<Search>() };
    let attempt = attempt as u32;
    // The pair `try_pair` tries at `attempt` (see there).
    let port = wire_port(snat_port(search.secret, search.hash, attempt));
    let addr = pool_addr(search.hash, attempt).unwrap_or(search.snat_addr);
    let key = &FlowKey::new(search.backend_addr, addr, search.backend_port, port, search.proto);
    // SAFETY: a map value pointer from the lookup helper, read at once.
    let Some(existing) = HALF_OPEN.get_ptr(key).map(|existing| unsafe { &*existing }) else {
        if FLOWS.get_ptr(key).is_some() {
            return 0;
        }
        search.free_passed += 1;
        return i64::from(search.free_passed >= OWN_LOOK_FREE_PAIRS);
    };
    if !existing.pairs_with(&search.reply_to.reversed()) {
        return 0;
    }
    // Its own pair: no other is. Not taken if expired (the search then
    // takes it as a free one) or if an established connection holds it.
    if !conntrack::expired_alone(existing, search.proto, search.now) && FLOWS.get_ptr(key).is_none() {
        search.port = port;
        search.claimed_addr = addr;
    }
    1
}

/// Takes the pair of the reply tuple `key` over for the new connection
/// whose reply entry is `reply`, unless an established connection holds it.
#[inline(always)]
fn displace(key: &FlowKey, reply: &FlowEntry) -> bool {
    let taken = FLOWS.get_ptr(key).is_none() && HALF_OPEN.insert(key, reply, u64::from(BPF_ANY)).is_ok();
    if taken {
        stats::reason(Reason::HalfOpenDisplaced);
    }
    taken
}

/// The pool address attempt `attempt` of a flow with `hash` tries; none
/// without a pool (or where a racing pool update left a hole).
#[inline(always)]
fn pool_addr(hash: u32, attempt: u32) -> Option<u32> {
    let pool = SNAT_POOL.get(0)?;
    if pool.count == 0 {
        return None;
    }
    let index = snat_pool_index(hash, attempt, pool.count) as usize;
    let addr = *pool.addrs.get(index)?;
    (addr != 0).then_some(addr)
}
