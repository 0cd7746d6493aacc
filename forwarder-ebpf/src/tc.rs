//! The TC (clsact ingress) entry point.
//!
//! It translates packets XDP handed over because the next hop's MAC was
//! unknown, and sends them through `bpf_redirect_neigh`, which resolves the
//! neighbour and queues the packet meanwhile: the first packet of a flow is
//! not lost, and since the packet never enters the IP input path, a SNATed
//! source that is one of the host's own addresses is not dropped as a
//! martian. With `Settings::tc_translates_all` it translates every packet
//! itself (interfaces without XDP).

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, bpf_redir_neigh},
    helpers::{bpf_redirect, bpf_redirect_neigh, bpf_skb_pull_data},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use forwarder_common::maps::META_NEEDS_NEIGH;

use crate::{
    datapath::{self, Hook, Verdict},
    fwd::AF_INET,
    maps::SETTINGS,
};

/// Ethernet + IPv4 without options + TCP without options.
const HEADERS_LEN: u32 = 14 + 20 + 20;

struct TcHook<'a>(&'a TcContext);

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
}

/// The TC program: packets XDP handed over (or all of them, see
/// `Settings::tc_translates_all`), then the verdict as a TC action.
#[inline(always)]
pub fn run(ctx: &TcContext) -> i32 {
    if !handed_over_by_xdp(ctx) && !translates_all() {
        return TC_ACT_OK;
    }
    if ctx.data_end() - ctx.data() < HEADERS_LEN as usize {
        // SAFETY: the helper bounds the pull by the packet length itself.
        let _ = unsafe { bpf_skb_pull_data(ctx.skb.skb, HEADERS_LEN) };
    }
    match datapath::process(&TcHook(ctx)) {
        Verdict::Pass | Verdict::HandToNeighHook => TC_ACT_OK,
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
fn translates_all() -> bool {
    SETTINGS.get(0).is_some_and(|settings| settings.tc_translates_all != 0)
}
