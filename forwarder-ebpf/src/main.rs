//! The forwarder's BPF object: its two entry points. The datapath itself
//! is the library (`lib.rs`), which the benchmark object links too.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

#[xdp]
pub fn forwarder_xdp(ctx: XdpContext) -> u32 {
    forwarder_ebpf::xdp::run(&ctx)
}

#[classifier]
pub fn forwarder_tc(ctx: TcContext) -> i32 {
    forwarder_ebpf::tc::run(&ctx)
}

/// GPL-compatible, as `bpf_fib_lookup` and `bpf_redirect_neigh` require.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
