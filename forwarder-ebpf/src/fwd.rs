//! Next hop: `bpf_fib_lookup` for the translated packet, then MACs.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup,
    },
    helpers::bpf_fib_lookup as fib_lookup,
};
use forwarder_common::{
    counters::Reason,
    maps::{FlowEntry, NextHop},
};

use crate::parse::Packet;

/// `AF_INET`, as `bpf_fib_lookup` and `bpf_redirect_neigh` take it.
pub const AF_INET: u8 = 2;

/// Where the translated packet goes.
pub enum Route {
    /// Out of an interface to a known MAC.
    Via(NextHop),
    /// Out of `ifindex` to `nexthop`, whose MAC the kernel does not know yet.
    NoNeigh { ifindex: u32, nexthop: u32 },
}

/// Looks up the route of `pkt` once translated by `entry`, checking the
/// egress MTU against `wire_len` (see `Hook::wire_len`).
#[expect(
    clippy::not_unsafe_ptr_arg_deref,
    reason = "`ctx` is the hook's program context, handed to the helper as the kernel gave it"
)]
#[inline(always)]
pub fn route(
    ctx: *mut c_void,
    ingress: u32,
    pkt: &Packet,
    wire_len: u16,
    entry: &FlowEntry,
) -> Result<Route, Reason> {
    // SAFETY: `bpf_fib_lookup` is plain data; all-zeroes is its "unset" state.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = pkt.key.proto;
    params.sport = entry.new_sport;
    params.dport = entry.new_dport;
    params.__bindgen_anon_1.tot_len = wire_len;
    params.ifindex = ingress;
    params.__bindgen_anon_2.tos = pkt.tos();
    params.__bindgen_anon_3.ipv4_src = entry.new_src;
    params.__bindgen_anon_4.ipv4_dst = entry.new_dst;
    // SAFETY: `params` is a valid, writable `bpf_fib_lookup` of the size given.
    let rc = unsafe { fib_lookup(ctx, &mut params, size_of::<bpf_fib_lookup>() as i32, 0) };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {
            Ok(Route::Via(NextHop { ifindex: params.ifindex, src_mac: params.smac, dst_mac: params.dmac }))
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(Route::NoNeigh {
            ifindex: params.ifindex,
            // SAFETY: the helper wrote the next hop (gateway or destination) here.
            nexthop: unsafe { params.__bindgen_anon_4.ipv4_dst },
        }),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(Reason::DropFragNeeded),
        _ => Err(Reason::PassNoRoute),
    }
}

/// Sets the Ethernet addresses for the next hop.
#[inline(always)]
pub fn set_macs(pkt: &Packet, hop: &NextHop) {
    // SAFETY: `eth` was bounds-checked by `parse`.
    unsafe {
        (*pkt.eth).src_addr = hop.src_mac;
        (*pkt.eth).dst_addr = hop.dst_mac;
    }
}
