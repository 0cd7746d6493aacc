//! The XDP entry point: the fast path.

use core::{ffi::c_void, mem::size_of};

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::{bpf_redirect, bpf_xdp_adjust_meta, bpf_xdp_adjust_tail, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use forwarder_common::{
    counters::Reason,
    maps::{FlowEntry, META_NEEDS_NEIGH},
};

use crate::{
    datapath::{self, Hook, Verdict},
    maps::{EGRESS, XDP_METADATA},
    nat,
    parse::Packet,
    stats,
};

struct XdpHook<'a>(&'a XdpContext);

impl Hook for XdpHook<'_> {
    const RESOLVES_NEIGH: bool = false;

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
        // Read apart from `data_end`, so the compiler cannot derive a
        // bounds check from a length check (`ip_len <= frame_len`) and
        // drop it: the verifier only trusts comparisons with `data_end`.
        // SAFETY: reading fields of the kernel's `xdp_md`.
        unsafe {
            let ctx = self.0.ctx;
            (core::ptr::read_volatile(&(*ctx).data_end) - core::ptr::read_volatile(&(*ctx).data)) as usize
        }
    }

    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        // SAFETY: `ctx` is the kernel's `xdp_md`.
        unsafe { (*self.0.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn ctx(&self) -> *mut c_void {
        self.0.ctx.cast()
    }

    #[inline(always)]
    fn wire_len(&self, pkt: &Packet) -> u16 {
        pkt.ip_len
    }

    #[inline(always)]
    fn rewrite(&self, pkt: &Packet, entry: &FlowEntry) -> bool {
        nat::rewrite(pkt, entry);
        true
    }

    /// An XDP frame is linear (multi-buffer frames are not enabled).
    #[inline(always)]
    fn pull(&self, _len: u32) {}

    #[inline(always)]
    fn shrink(&self, len: u32) -> bool {
        let by = len as i32 - (self.0.data_end() - self.0.data()) as i32;
        // SAFETY: the helper checks the new length against the frame.
        by <= 0 && unsafe { bpf_xdp_adjust_tail(self.0.ctx, by) } == 0
    }

    #[inline(always)]
    fn load_bytes(&self, offset: u32, to: *mut u8, len: u32) -> bool {
        // SAFETY: the helper checks the range against the frame; `to` is
        // writable for `len` bytes (the caller's promise).
        unsafe { bpf_xdp_load_bytes(self.0.ctx, offset, to.cast(), len) == 0 }
    }

    /// XDP is the first to see a packet.
    #[inline(always)]
    fn counts_passes(&self) -> bool {
        true
    }
}

/// The XDP program: the datapath, then the verdict as an XDP action.
#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    match datapath::process(&XdpHook(ctx)) {
        Verdict::Pass => XDP_PASS,
        Verdict::Drop => XDP_DROP,
        Verdict::Tx => XDP_TX,
        Verdict::Redirect(ifindex) => match EGRESS.redirect(ifindex, 0) {
            Ok(action) => action,
            // Not in the devmap (an interface the daemon did not list):
            // the slower, unbatched redirect still delivers it.
            // SAFETY: a helper taking plain integers.
            Err(_) => unsafe { bpf_redirect(ifindex, 0) as u32 },
        },
        Verdict::HandToNeighHook => {
            mark_for_tc(ctx);
            XDP_PASS
        }
        // XDP cannot resolve neighbours, so the core never asks it to.
        Verdict::RedirectNeigh { .. } => {
            stats::reason(Reason::DropRedirectFailed);
            XDP_DROP
        }
    }
}

/// Tags the packet's metadata so the TC program knows XDP handed it over.
/// Where the kernel refuses XDP metadata (`XDP_METADATA` is 0) the TC
/// program looks at every packet XDP passed instead. Where only the driver
/// has no metadata room the packet reaches the kernel untouched; TCP
/// retransmits once the daemon's managed neighbour entry resolves.
#[inline(always)]
fn mark_for_tc(ctx: &XdpContext) {
    if XDP_METADATA.load() == 0 {
        return;
    }
    // SAFETY: `ctx` is the kernel's `xdp_md`; the helper checks the headroom.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(size_of::<u32>() as i32)) } != 0 {
        return;
    }
    let (meta, data) = (ctx.metadata(), ctx.data());
    if meta + size_of::<u32>() > data {
        return;
    }
    // SAFETY: bounds-checked against `data` just above.
    unsafe { *(meta as *mut u32) = META_NEEDS_NEIGH };
}
