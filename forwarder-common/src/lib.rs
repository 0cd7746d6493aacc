//! What the forwarder's kernel and user-space halves must agree on.
//!
//! * [`maps`]: the `#[repr(C)]` keys and values of every BPF map, and the
//!   map names.
//! * [`csum`]: incremental Internet checksum arithmetic (RFC 1624).
//! * [`hash`]: the flow hash that picks a Maglev slot and a SNAT port.
//! * [`snat`]: the SNAT port range and the ports a new flow tries.
//! * [`conntrack`]: per-flow state bits and the timeout policy.
//! * [`origin`]: half-open connections' original direction (`ORIGINS`).
//! * [`counters`]: the reasons a packet is passed, dropped or forwarded.
//! * [`icmp`]: which ICMP errors are translated, and their checksums.
//!
//! Everything here is `no_std` and free of BPF helpers so host unit tests
//! exercise exactly the arithmetic the datapath runs.
//!
//! Addresses and ports are kept as the raw bytes of the packet read as a
//! native integer ("wire order"): the datapath never byte-swaps. Use
//! [`maps::wire_addr`] / [`maps::wire_port`] and their inverses to convert.
#![no_std]

pub mod bench;
pub mod conntrack;
pub mod counters;
pub mod csum;
pub mod hash;
pub mod icmp;
pub mod maps;
pub mod origin;
pub mod snat;
pub mod ts;
