//! The forwarder's datapath.
//!
//! Modules follow the packet: [`parse`] the headers, look the flow up in
//! [`conntrack`], or find its service and pick a backend in [`lb`], create
//! the translation in [`nat`], route it in [`fwd`], count it in [`stats`].
//! [`datapath`] strings them together independently of the hook; [`xdp`]
//! and [`tc`] are the two entry points.
#![no_std]
#![no_main]

mod conntrack;
mod datapath;
mod fwd;
mod lb;
mod maps;
mod nat;
mod parse;
mod stats;
mod tc;
mod xdp;

/// GPL-compatible, as `bpf_fib_lookup` and `bpf_redirect_neigh` require.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

// Only for the BPF target: a host build (e.g. `cargo clippy --workspace`)
// links std, which has its own.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
