//! The TC (tcx ingress) entry points.
//!
//! Beside XDP, [`run_handed_over`] translates packets XDP handed over
//! because the next hop's MAC was unknown, and sends them through
//! `bpf_redirect_neigh`, which resolves the neighbour and queues the packet
//! meanwhile: the first packet of a flow is not lost, and since the packet
//! never enters the IP input path, a SNATed source that is one of the
//! host's own addresses is not dropped as a martian.
//!
//! Instead of XDP (`--attach tc`), [`run_all`] runs the whole datapath on
//! every packet. It sees the skb, which XDP does not: checksums are
//! updated by the kernel's helpers, which know whether the packet carries
//! a complete checksum, a partial one (`CHECKSUM_PARTIAL`, from a veth or
//! tap whose sender offloads it: only the pseudo-header part is in the
//! field) or a `CHECKSUM_COMPLETE` sum to keep in step; and a GSO packet
//! is checked against the egress MTU by its segment size, not its length.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup, bpf_redir_neigh,
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_l3_csum_replace, bpf_l4_csum_replace, bpf_redirect,
        bpf_redirect_neigh, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_pull_data,
    },
    programs::TcContext,
};
use aya_log_ebpf::debug;
use forwarder_common::{
    counters::Reason,
    csum,
    maps::{FlowEntry, META_NEEDS_NEIGH, SETTING_ROUTE_OTHER, SETTING_TC_TRANSLATES_ALL},
};
use network_types::ip::Ipv4Hdr;

use crate::{
    datapath::{self, Hook, Verdict},
    fwd::AF_INET,
    maps::{SETTINGS, XDP_METADATA},
    nat,
    parse::{IP_CHECK_AT, Packet},
    stats,
};

/// Ethernet + IPv4 without options + TCP without options.
const HEADERS_LEN: u32 = 14 + 20 + 20;

/// The context, and whether the program runs beside XDP (on what XDP
/// passed) rather than instead of it: a constant in each program.
struct TcHook<'a>(&'a TcContext, Role);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    BesideXdp,
    All,
}

impl Hook for TcHook<'_> {
    const RESOLVES_NEIGH: bool = true;

    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }

    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }

    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    #[expect(
        clippy::misnamed_getters,
        reason = "on ingress `ifindex` is the arriving device; `ingress_ifindex` is unset in test runs"
    )]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: `skb` is the kernel's `__sk_buff`.
        unsafe { (*self.0.skb.skb).ifindex }
    }

    #[inline(always)]
    fn ctx(&self) -> *mut c_void {
        self.0.skb.skb.cast()
    }

    #[inline(always)]
    fn wire_len(&self, pkt: &Packet) -> u16 {
        // SAFETY: reading a `__sk_buff` field.
        let gso_size = unsafe { (*self.0.skb.skb).gso_size };
        if gso_size == 0 {
            return pkt.ip_len;
        }
        // A GRO-merged or TSO packet leaves as segments of `gso_size`
        // payload bytes each behind copies of its headers.
        let segment = Ipv4Hdr::LEN as u32 + u32::from(pkt.l4_hdr_len) + gso_size;
        segment.min(u32::from(pkt.ip_len)) as u16
    }

    #[inline(always)]
    fn rewrite(&self, pkt: &Packet, entry: &FlowEntry) -> bool {
        rewrite(self.0, pkt, entry)
    }

    #[inline(always)]
    fn pull(&self, len: u32) {
        let (linear, whole) = ((self.data_end() - self.data()) as u32, self.0.len());
        let len = if len < whole { len } else { whole };
        if linear < len {
            // SAFETY: a helper on the program's own skb, within its length.
            let _ = unsafe { bpf_skb_pull_data(self.0.skb.skb, len) };
        }
    }

    /// Trims the skb (which also drops its GSO state) and pulls what is
    /// left into the linear area. A `CHECKSUM_PARTIAL` skb (from a local
    /// sender on a veth or tap) keeps that state: what is made of it goes
    /// back over the same link to that sender, which trusts such checksums.
    #[inline(always)]
    fn shrink(&self, len: u32) -> bool {
        let skb = self.0.skb.skb;
        // SAFETY: helpers on the program's own skb.
        unsafe { bpf_skb_change_tail(skb, len, 0) == 0 && bpf_skb_pull_data(skb, len) == 0 }
    }

    #[inline(always)]
    fn load_bytes(&self, offset: u32, to: *mut u8, len: u32) -> bool {
        // SAFETY: the helper checks the range against the skb (its pages
        // included); `to` is writable for `len` bytes (the caller's promise).
        unsafe { bpf_skb_load_bytes(self.0.skb.skb.cast(), offset, to.cast(), len) == 0 }
    }

    /// Beside XDP, a packet XDP did not tag (where the kernel lets it
    /// tag: see [`run_handed_over`]) was passed and counted by XDP.
    #[inline(always)]
    fn counts_passes(&self) -> bool {
        self.1 == Role::All
            || XDP_METADATA.load() != 0
            || handed_over_by_xdp(self.0)
            || setting(SETTING_TC_TRANSLATES_ALL)
    }
}

/// Translates `pkt` as `entry` says: the headers directly, the checksums
/// through the kernel's helpers, which keep them right in the skb's
/// checksum state (see the module's doc). The address change is part of
/// the L4 pseudo-header, the port change is not: in a partial checksum
/// only the first is applied, the device computes the rest. False when a
/// helper failed (the skb could not be made writable).
#[inline(always)]
fn rewrite(ctx: &TcContext, pkt: &Packet, entry: &FlowEntry) -> bool {
    let key = &pkt.key;
    let addrs = csum::addrs_delta(key.src, key.dst, entry.new_src, entry.new_dst);
    let ports = csum::ports_delta(key.sport, key.dport, entry.new_sport, entry.new_dport);
    let (l4_at, udp) = (pkt.l4_check_at(), u64::from(!pkt.is_tcp()));
    // UDP's "no checksum" zero stays zero; a computed zero is sent as 0xffff.
    let l4_flags = udp * u64::from(BPF_F_MARK_MANGLED_0);
    nat::rewrite_headers(pkt, entry);
    let skb = ctx.skb.skb;
    // SAFETY: helpers on the program's own skb; offsets inside the headers
    // `parse` checked. With size 0, `to` is a checksum delta.
    unsafe {
        bpf_l3_csum_replace(skb, IP_CHECK_AT, 0, u64::from(entry.ip_csum_delta), 0) == 0
            && bpf_l4_csum_replace(skb, l4_at, 0, u64::from(addrs), l4_flags | u64::from(BPF_F_PSEUDO_HDR))
                == 0
            && bpf_l4_csum_replace(skb, l4_at, 0, u64::from(ports), l4_flags) == 0
    }
}

/// The TC program beside XDP: packets XDP handed over (or all of them,
/// see `SETTING_TC_TRANSLATES_ALL`, for tests), then the verdict as a TC
/// action. Where XDP cannot tag what it hands over (`XDP_METADATA` 0),
/// every packet XDP passed gets the datapath again: those it handed over
/// are translated, the rest pass as XDP decided, not counted twice.
#[inline(always)]
pub fn run_handed_over(ctx: &TcContext) -> i32 {
    if XDP_METADATA.load() != 0 && !handed_over_by_xdp(ctx) && !setting(SETTING_TC_TRANSLATES_ALL) {
        return to_kernel(ctx);
    }
    run(&TcHook(ctx, Role::BesideXdp))
}

/// The TC program instead of XDP: the datapath on every packet, then the
/// verdict as a TC action.
#[inline(always)]
pub fn run_all(ctx: &TcContext) -> i32 {
    run(&TcHook(ctx, Role::All))
}

#[inline(always)]
fn run(hook: &TcHook) -> i32 {
    let ctx = hook.0;
    if ctx.data_end() - ctx.data() < HEADERS_LEN as usize {
        // SAFETY: the helper bounds the pull by the packet length itself.
        let _ = unsafe { bpf_skb_pull_data(ctx.skb.skb, HEADERS_LEN) };
    }
    match datapath::process(hook) {
        Verdict::Pass | Verdict::HandToNeighHook => to_kernel(ctx),
        Verdict::Drop => TC_ACT_SHOT,
        // SAFETY (all three): helpers taking plain integers or a valid,
        // correctly sized `bpf_redir_neigh`.
        Verdict::Tx => unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32 },
        Verdict::Redirect(ifindex) => unsafe { bpf_redirect(ifindex, 0) as i32 },
        Verdict::RedirectNeigh { ifindex, nexthop } => {
            // Rare by construction: only until the neighbour resolves.
            debug!(
                &ctx,
                "next hop {:i} unresolved: redirect_neigh via ifindex {}",
                nexthop.to_ne_bytes(),
                ifindex
            );
            // SAFETY: all-zeroes is a valid `bpf_redir_neigh`.
            let mut neigh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
            neigh.nh_family = u32::from(AF_INET);
            neigh.__bindgen_anon_1.ipv4_nh = nexthop;
            unsafe { bpf_redirect_neigh(ifindex, &mut neigh, size_of::<bpf_redir_neigh>() as i32, 0) as i32 }
        }
    }
}

#[inline(always)]
fn handed_over_by_xdp(ctx: &TcContext) -> bool {
    // SAFETY: reading `__sk_buff` fields; the meta read is bounds-checked.
    unsafe {
        let skb = ctx.skb.skb;
        let (meta, data) = ((*skb).data_meta as usize, (*skb).data as usize);
        meta + size_of::<u32>() <= data && *(meta as *const u32) == META_NEEDS_NEIGH
    }
}

#[inline(always)]
fn setting(flag: u32) -> bool {
    SETTINGS.get(0).is_some_and(|settings| settings.flags & flag != 0)
}

/// A packet the datapath did not translate, on its way into the kernel:
/// dropped if the kernel would route it out again, unless the operator
/// allowed that (`SETTING_ROUTE_OTHER`). Packets for this host (its
/// addresses, multicast, broadcast), and any the kernel answers itself
/// (unreachable routes, disabled forwarding, an expiring TTL), go on. This is where an untranslated packet to a VIP would otherwise
/// bounce between the forwarder and its router, and where clients would
/// use the forwarder as a router to the nodes.
#[inline(always)]
fn to_kernel(ctx: &TcContext) -> i32 {
    if setting(SETTING_ROUTE_OTHER) || !routed_elsewhere(ctx, ipv4_addrs(ctx)) {
        return TC_ACT_OK;
    }
    stats::reason(Reason::DropNotTranslated);
    TC_ACT_SHOT
}

/// Whether the kernel would route an IPv4 packet `addrs` (source,
/// destination in wire order, TTL) arriving with `ctx` out to another host.
#[inline(always)]
fn routed_elsewhere(ctx: &TcContext, addrs: Option<(u32, u32, u8)>) -> bool {
    let Some((src, dst, ttl)) = addrs else { return false };
    // The kernel answers an expiring packet with ICMP time exceeded (what
    // traceroute shows); it cannot loop.
    if ttl <= 1 {
        return false;
    }
    // The route lookup knows nothing of multicast (VRRP, OSPF, IGMP, mDNS)
    // or the limited broadcast (DHCP), which the kernel takes before
    // routing: they are the host's.
    let (src_host, dst_host) = (u32::from_be(src), u32::from_be(dst));
    if dst_host >> 28 == 0xe || dst_host == u32::MAX || src_host == 0 {
        return false;
    }
    // SAFETY: `bpf_fib_lookup` is plain data; all-zeroes is its "unset" state.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.ifindex = ingress(ctx);
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    // SAFETY: `params` is a valid, writable `bpf_fib_lookup` of the size given.
    let rc = unsafe { fib_lookup(ctx.skb.skb.cast(), &mut params, size_of::<bpf_fib_lookup>() as i32, 0) };
    matches!(rc as u32, BPF_FIB_LKUP_RET_SUCCESS | BPF_FIB_LKUP_RET_NO_NEIGH | BPF_FIB_LKUP_RET_FRAG_NEEDED)
}

#[inline(always)]
fn ingress(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the program's own `__sk_buff`.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The IPv4 (source, destination, TTL) of an Ethernet frame, if IPv4.
#[inline(always)]
fn ipv4_addrs(ctx: &TcContext) -> Option<(u32, u32, u8)> {
    const ETHERTYPE_AT: usize = 12;
    const TTL_AT: usize = 14 + 8;
    const SRC_AT: usize = 14 + 12;
    const ETH_P_IP: u16 = 0x0800;
    let ethertype: u16 = ctx.load(ETHERTYPE_AT).ok()?;
    if u16::from_be(ethertype) != ETH_P_IP {
        return None;
    }
    let ttl: u8 = ctx.load(TTL_AT).ok()?;
    let addrs: [u32; 2] = ctx.load(SRC_AT).ok()?;
    Some((addrs[0], addrs[1], ttl))
}
