//! The forwarder's datapath.
//!
//! Modules follow the packet: [`parse`] the headers, look the flow up in
//! [`conntrack`], or find its service and pick a backend in [`lb`], create
//! the translation in [`nat`], route it in [`fwd`], count it in [`stats`];
//! ICMP errors about a connection are translated with it in [`icmp`];
//! packets too big for their egress are answered in [`pmtu`]; later
//! fragments follow their first in [`frag`].
//! The timestamps of SYNs and FINs are read in [`tcp_ts`].
//! [`datapath`] strings them together independently of the hook; [`xdp`]
//! and [`tc`] are the two entry points.
#![no_std]

pub mod conntrack;
pub mod datapath;
pub mod frag;
pub mod fwd;
pub mod icmp;
pub mod lb;
pub mod maps;
pub mod mem;
pub mod nat;
pub mod parse;
pub mod pmtu;
pub mod ports;
pub mod stats;
pub mod tc;
pub mod tcp_ts;
pub mod xdp;

// One for every BPF object that links the datapath. Only for the BPF
// target: a host build (e.g. `cargo clippy --workspace`) links std, which
// has its own.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
