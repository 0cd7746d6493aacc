//! Benchmark programs, built as their own object (never loaded by the
//! daemon): a traffic generator for `BPF_PROG_TEST_RUN` in live-frames
//! mode (and one for kernels that refuse live frames: a TC program that
//! sends a clone of every run), a counting sink, the baselines the forwarder is compared with
//! (drop everything; swap MACs and send on), and the forwarder itself
//! behind a frame rewrite, so `BPF_PROG_TEST_RUN` with `repeat` times it
//! on a fresh packet every iteration.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        TC_ACT_SHOT,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    btf_maps::{Array, DevMap, PerCpuArray},
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use forwarder_common::{
    bench::{BounceConfig, FRAME_LEN, GenConfig, SYN_FRAME_LEN, flow_source},
    csum,
    maps::PROTO_TCP,
};
use forwarder_ebpf::{maps::FLOWS, parse::parse};

#[btf_map]
static GEN: Array<GenConfig, 1> = Array::new();
#[btf_map]
static BOUNCE: Array<BounceConfig, 1> = Array::new();
#[btf_map]
static BOUNCE_TO: DevMap<1> = DevMap::new();
/// Per CPU: [0] packets seen (sink, drop), [1] generator sequence.
#[btf_map]
static COUNTS: PerCpuArray<u64, 2> = PerCpuArray::new();

/// Offsets in the frame: IPv4 checksum, protocol, source and destination
/// address, the L4 source and destination port, and the TCP or UDP checksum.
const IP_CHECK: usize = 14 + 10;
const IP_PROTO: usize = 14 + 9;
const IP_SRC: usize = 14 + 12;
const IP_DST: usize = 14 + 16;
const L4_SPORT: usize = 14 + 20;
const L4_DPORT: usize = 14 + 20 + 2;
const UDP_CHECK: usize = 14 + 20 + 6;
const TCP_CHECK: usize = 14 + 20 + 16;

#[inline(always)]
fn bump(index: u32) -> u64 {
    match COUNTS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot.
        Some(count) => unsafe {
            *count += 1;
            *count
        },
        None => 0,
    }
}

#[inline(always)]
unsafe fn read16(p: *const u8, at: usize) -> u16 {
    // SAFETY: callers stay inside the bounds-checked frame.
    unsafe { u16::from_ne_bytes([*p.add(at), *p.add(at + 1)]) }
}

#[inline(always)]
unsafe fn write16(p: *mut u8, at: usize, value: u16) {
    let [lo, hi] = value.to_ne_bytes();
    // SAFETY: callers stay inside the bounds-checked frame.
    unsafe {
        *p.add(at) = lo;
        *p.add(at + 1) = hi;
    }
}

#[inline(always)]
unsafe fn read32(p: *const u8, at: usize) -> u32 {
    // SAFETY: callers stay inside the bounds-checked frame.
    unsafe { u32::from_ne_bytes([*p.add(at), *p.add(at + 1), *p.add(at + 2), *p.add(at + 3)]) }
}

/// Writes the whole template frame (live-frame pages come back with
/// whatever the receiver left in them; a NAT rewrites in place) with this
/// packet's flow: the next source port, then the next address; and the
/// flow's destination among `vips`. For a node's answer (`answers`), the
/// flow's client is the destination.
#[inline(always)]
fn write_frame(ctx: &XdpContext) -> bool {
    write_frame_at(ctx.data(), ctx.data_end())
}

#[inline(always)]
fn write_frame_at(data: usize, end: usize) -> bool {
    if data + FRAME_LEN > end {
        return false;
    }
    let Some(config) = GEN.get(0) else { return false };
    let seq = bump(1);
    let index = if config.flows == 0 { seq as u32 } else { (seq % u64::from(config.flows)) as u32 };
    let (port, addr_offset) = flow_source(index);
    // SAFETY: `data..data + FRAME_LEN` was bounds-checked above.
    unsafe {
        let p = data as *mut u8;
        core::ptr::copy_nonoverlapping(config.frame.as_ptr(), p, FRAME_LEN);
        if data + SYN_FRAME_LEN <= end {
            // The rest of a SYN's options (ahead of the fields rewritten
            // below: only addresses, port and checksums change).
            let tail = SYN_FRAME_LEN - FRAME_LEN;
            core::ptr::copy_nonoverlapping(config.frame.as_ptr().add(FRAME_LEN), p.add(FRAME_LEN), tail);
        }
        // The client's address and port, and the other end's address.
        let (client_at, port_at, other_at) =
            if config.answers != 0 { (IP_DST, L4_DPORT, IP_SRC) } else { (IP_SRC, L4_SPORT, IP_DST) };
        let old_addr = read32(p, client_at);
        let new_addr = (u32::from_be(old_addr) + addr_offset).to_be();
        let old_other = read32(p, other_at);
        let vip_offset = if config.vips > 1 && config.answers == 0 { index % config.vips } else { 0 };
        let new_other = (u32::from_be(old_other) + vip_offset).to_be();
        let old_port = read16(p, port_at);
        let new_port = port.to_be();
        let addr =
            csum::combine(csum::addr_delta(old_addr, new_addr), csum::addr_delta(old_other, new_other));
        let l4 = csum::combine(addr, csum::fold(csum::word_delta(old_port, new_port)));
        *p.add(client_at).cast::<[u8; 4]>() = new_addr.to_ne_bytes();
        *p.add(other_at).cast::<[u8; 4]>() = new_other.to_ne_bytes();
        write16(p, port_at, new_port);
        write16(p, IP_CHECK, csum::apply(read16(p, IP_CHECK), addr));
        if *p.add(IP_PROTO) == PROTO_TCP {
            write16(p, TCP_CHECK, csum::apply(read16(p, TCP_CHECK), l4));
        } else {
            write16(p, UDP_CHECK, csum::apply_udp(read16(p, UDP_CHECK), l4));
        }
    }
    true
}

/// The generator: a fresh frame, sent out of the interface it was
/// "received" on.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    if write_frame(&ctx) { XDP_TX } else { XDP_DROP }
}

/// The generator where the kernel refuses live frames: a fresh frame, a
/// clone of it sent out of the device the test run's context names (the
/// helper transmits at once; the run itself is dropped).
#[classifier]
pub fn bench_gen_tc(ctx: TcContext) -> i32 {
    if write_frame_at(ctx.data(), ctx.data_end()) {
        // SAFETY: the context's own `__sk_buff`.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        let _ = ctx.clone_redirect(ifindex, 0);
    }
    TC_ACT_SHOT
}

/// The forwarder's XDP program on a fresh frame.
#[xdp]
pub fn bench_forward(ctx: XdpContext) -> u32 {
    if write_frame(&ctx) { forwarder_ebpf::xdp::run(&ctx) } else { XDP_DROP }
}

/// The frame rewrite, parsing, the flow lookup and one read of the entry
/// alone: the part of the forwarder's cost that is the flow table's memory
/// (the rest is its code).
#[xdp]
pub fn bench_lookup(ctx: XdpContext) -> u32 {
    if !write_frame(&ctx) {
        return XDP_DROP;
    }
    let Ok(pkt) = parse(ctx.data(), ctx.data_end(), ctx.data_end() - ctx.data()) else { return XDP_DROP };
    match FLOWS.get_ptr(pkt.key) {
        // SAFETY: a map value pointer from the lookup helper; the volatile
        // read keeps the load (the entry's own cache lines) in the program.
        Some(entry) => match unsafe { core::ptr::read_volatile(&raw const (*entry).last_seen_ns) } {
            0 => XDP_DROP,
            _ => XDP_PASS,
        },
        None => XDP_DROP,
    }
}

/// The frame rewrite alone: what `bench_forward` adds to the forwarder.
#[xdp]
pub fn bench_rewrite(ctx: XdpContext) -> u32 {
    if write_frame(&ctx) { XDP_PASS } else { XDP_DROP }
}

/// Counts and drops: the sink, and the "XDP_DROP" ceiling.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    bump(0);
    XDP_DROP
}

/// The trivial forwarder: new MACs, out of another interface.
#[xdp]
pub fn bench_bounce(ctx: XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 14 > end {
        return XDP_PASS;
    }
    let Some(config) = BOUNCE.get(0) else { return XDP_PASS };
    // SAFETY: the Ethernet header was bounds-checked above.
    unsafe {
        let eth = data as *mut [u8; 12];
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&config.dst_mac);
        macs[6..].copy_from_slice(&config.src_mac);
        *eth = macs;
    }
    BOUNCE_TO.redirect(0, 0).unwrap_or(XDP_DROP)
}

/// Does nothing: the overhead `BPF_PROG_TEST_RUN` adds to a measurement.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
