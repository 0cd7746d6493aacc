//! Next hop: `bpf_fib_lookup` for the translated packet (or, for a new
//! connection, a recent answer for the same node), then MACs.

use core::{ffi::c_void, mem::MaybeUninit, mem::size_of};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup,
    },
    helpers::bpf_fib_lookup as fib_lookup,
};
use forwarder_common::{
    conntrack::REFRESH_INTERVAL_NS,
    counters::Reason,
    maps::{FlowEntry, NextHop},
};

use network_types::eth::EthHdr;

use crate::{maps::FIRST_HOPS, mem, parse::Packet};

/// `AF_INET`, as `bpf_fib_lookup` and `bpf_redirect_neigh` take it.
pub const AF_INET: u8 = 2;

/// Where the translated packet goes.
pub enum Route {
    /// Out of an interface to a known MAC.
    Via(NextHop),
    /// Out of `ifindex` to `nexthop`, whose MAC the kernel does not know yet.
    NoNeigh { ifindex: u32, nexthop: u32 },
    /// Longer than the egress MTU, `mtu`.
    TooBig { mtu: u16 },
}

/// What a route is looked up for: the packet as it will leave.
pub struct Query {
    pub proto: u8,
    pub tos: u8,
    /// Addresses and ports in wire order (ports 0 for ICMP).
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    /// The IP length the egress MTU is checked against.
    pub len: u16,
}

/// Looks up the route of `pkt` once translated by `entry`, checking the
/// egress MTU against `wire_len` (see `Hook::wire_len`).
#[inline(always)]
pub fn route(
    ctx: *mut c_void,
    ingress: u32,
    pkt: &Packet,
    wire_len: u16,
    entry: &FlowEntry,
) -> Result<Route, Reason> {
    let query = Query {
        proto: pkt.key.proto,
        tos: pkt.tos(),
        src: entry.new_src,
        dst: entry.new_dst,
        sport: entry.new_sport,
        dport: entry.new_dport,
        len: wire_len,
    };
    lookup(ctx, ingress, &query)
}

/// A next hop found for a new connection, kept for the next ones to the
/// same node: a `FIRST_HOPS` value.
#[repr(C)]
pub struct FirstHop {
    /// When it was looked up.
    checked_ns: u64,
    /// What it was looked up for: node, source (wire order), ingress
    /// interface, TOS, and the IPv4 length the egress MTU was checked
    /// against.
    dst: u32,
    src: u32,
    ingress: u32,
    hop: NextHop,
    len: u16,
    tos: u8,
    _pad: u8,
}

/// The next hop (and the IPv4 length it was checked for) that a new
/// connection translated by `entry` may take without a route lookup: one
/// this CPU found within the last `REFRESH_INTERVAL_NS` for a packet to
/// the same node from the same source, arriving on the same interface
/// with the same TOS, and at least as long as this one (`wire_len`). The
/// lookup is most of what a new connection costs after its table entry.
/// The connection looks its own route up at its first refresh, a second
/// later, so a route change reaches it within about two seconds. (Dating
/// its entry from the reused lookup instead made the sweeper fixture lose
/// connections, likely through the torn in-place renewal of a reply entry
/// that `nat::claim` no longer does; not tried again since.)
/// Left out of the match: protocol and ports, which only policy rules on
/// ports and layer-4 multipath hashing read; with those, a connection's
/// first second may take another path of its route than the rest.
#[inline(always)]
pub fn first_hop(
    pkt: &Packet,
    entry: &FlowEntry,
    ingress: u32,
    wire_len: u16,
    now: u64,
) -> Option<FirstHopUse> {
    // SAFETY: this CPU's slot, read at once.
    let kept = unsafe { &*FIRST_HOPS.get_ptr(entry.backend_id)? };
    let usable = kept.hop.ifindex != 0
        && kept.dst == entry.new_dst
        && kept.src == entry.new_src
        && kept.ingress == ingress
        && kept.tos == pkt.tos()
        && wire_len <= kept.len
        && now.saturating_sub(kept.checked_ns) <= REFRESH_INTERVAL_NS;
    usable.then_some(FirstHopUse { hop: kept.hop, len: kept.len })
}

/// What [`first_hop`] found: the next hop and the length it was checked
/// for.
pub struct FirstHopUse {
    pub hop: NextHop,
    pub len: u16,
}

/// Keeps `hop`, just looked up for the new connection of `pkt` translated
/// by `entry` (see [`first_hop`]).
#[inline(always)]
pub fn keep_first_hop(pkt: &Packet, entry: &FlowEntry, ingress: u32, wire_len: u16, hop: &NextHop, now: u64) {
    let Some(kept) = FIRST_HOPS.get_ptr_mut(entry.backend_id) else { return };
    // SAFETY: this CPU's slot: no other writer while the program runs.
    let kept = unsafe { &mut *kept };
    kept.checked_ns = now;
    kept.dst = entry.new_dst;
    kept.src = entry.new_src;
    kept.ingress = ingress;
    kept.hop = *hop;
    kept.len = wire_len;
    kept.tos = pkt.tos();
}

/// `bpf_fib_lookup`, 8-aligned so that it can be zeroed a word at a time.
#[repr(C, align(8))]
struct Params(bpf_fib_lookup);

/// Looks up where a packet arriving on `ingress` and leaving as `query`
/// goes.
#[expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "`ctx` is the hook's program context, handed to the helper as the kernel gave it"
)]
#[inline(always)]
pub fn lookup(ctx: *mut c_void, ingress: u32, query: &Query) -> Result<Route, Reason> {
    // Zeroed word by word (see `mem`): all-zeroes is its "unset" state.
    let mut params = MaybeUninit::<Params>::uninit();
    // SAFETY: a local, aligned; `bpf_fib_lookup` is plain data.
    let params = unsafe {
        mem::zero(params.as_mut_ptr());
        &mut (*params.as_mut_ptr()).0
    };
    params.family = AF_INET;
    params.l4_protocol = query.proto;
    // Volatile: two constant ports would otherwise merge into one 4-byte
    // store at offset 2, a misaligned stack access the verifier refuses.
    // SAFETY: writes to fields of a local.
    unsafe {
        core::ptr::write_volatile(&mut params.sport, query.sport);
        core::ptr::write_volatile(&mut params.dport, query.dport);
    }
    params.__bindgen_anon_1.tot_len = query.len;
    params.ifindex = ingress;
    params.__bindgen_anon_2.tos = query.tos;
    params.__bindgen_anon_3.ipv4_src = query.src;
    params.__bindgen_anon_4.ipv4_dst = query.dst;
    // SAFETY: `params` is a valid, writable `bpf_fib_lookup` of the size given.
    let rc = unsafe { fib_lookup(ctx, params, size_of::<bpf_fib_lookup>() as i32, 0) };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(Route::Via(NextHop {
            ifindex: params.ifindex,
            src_mac: mac(&params.smac),
            dst_mac: mac(&params.dmac),
        })),
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(Route::NoNeigh {
            ifindex: params.ifindex,
            // SAFETY: the helper wrote the next hop (gateway or destination) here.
            nexthop: unsafe { params.__bindgen_anon_4.ipv4_dst },
        }),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Ok(Route::TooBig {
            // SAFETY: on this answer the helper wrote the egress MTU here.
            mtu: unsafe { params.__bindgen_anon_1.mtu_result },
        }),
        _ => Err(Reason::PassNoRoute),
    }
}

/// A MAC address from `bpf_fib_lookup`'s results, read two bytes at a
/// time: the compiler would otherwise read `dmac` (offset 58) with a
/// 4-byte load the verifier refuses as misaligned.
#[inline(always)]
fn mac(field: &[u8; 6]) -> [u8; 6] {
    let words = field.as_ptr().cast::<u16>();
    // SAFETY: both MAC fields sit at even offsets of the 4-aligned struct.
    let [a, b, c] = unsafe {
        [
            core::ptr::read_volatile(words),
            core::ptr::read_volatile(words.add(1)),
            core::ptr::read_volatile(words.add(2)),
        ]
    };
    let ([a0, a1], [b0, b1], [c0, c1]) = (a.to_ne_bytes(), b.to_ne_bytes(), c.to_ne_bytes());
    [a0, a1, b0, b1, c0, c1]
}

/// Sets the Ethernet addresses of the frame at `eth` for the next hop.
///
/// # Safety
/// `eth` must point to a bounds-checked, writable Ethernet header.
#[inline(always)]
pub unsafe fn set_macs(eth: *mut EthHdr, hop: &NextHop) {
    // SAFETY: as the caller promised.
    unsafe {
        (*eth).src_addr = hop.src_mac;
        (*eth).dst_addr = hop.dst_mac;
    }
}
