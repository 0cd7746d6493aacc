//! The forwarder's BPF object: its entry points. The datapath itself
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

/// Beside XDP: what XDP handed over.
#[classifier]
pub fn forwarder_tc(ctx: TcContext) -> i32 {
    forwarder_ebpf::tc::run_handed_over(&ctx)
}

/// Instead of XDP (`--attach tc`): every packet.
#[classifier]
pub fn forwarder_tc_all(ctx: TcContext) -> i32 {
    forwarder_ebpf::tc::run_all(&ctx)
}

/// GPL-compatible, as `bpf_fib_lookup` and `bpf_redirect_neigh` require.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
