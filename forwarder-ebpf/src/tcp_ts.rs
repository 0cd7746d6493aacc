//! The TCP timestamp value (TSval, RFC 7323) of SYNs and FINs: what a node
//! holding a closed connection's tuple in TIME_WAIT compares a new SYN's
//! with (see `forwarder_common::conntrack::node_takes_syn`).
//!
//! The options are copied into a per-CPU slot by a helper and read there,
//! and the value is kept there for the rest of the packet's way: read
//! straight from the packet, or carried along in `Packet`, it would make
//! the verifier walk the rest of the program once per outcome (the
//! program then no longer loads).

use forwarder_common::{
    conntrack::{SEEN_FIN, SEEN_SYN},
    ts::{OPTIONS_READ, tsval_of},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{datapath::Hook, maps::TCP_OPTIONS, parse::Packet};

/// Where TCP options start, from the start of the frame.
const OPTIONS_AT: u32 = (EthHdr::LEN + Ipv4Hdr::LEN + 20) as u32;

/// A CPU's copy of the options of the SYN or FIN it is processing.
#[repr(C)]
pub struct Options {
    bytes: [u8; OPTIONS_READ],
    tsval: u32,
}

/// Reads the timestamp value of `pkt` if it is a TCP SYN or FIN (0 if it
/// has none where one is looked for: see `forwarder_common::ts`), for
/// [`tsval`].
#[inline(always)]
pub fn load<H: Hook>(hook: &H, pkt: &Packet) {
    if !pkt.is_tcp() || pkt.seen & (SEEN_SYN | SEEN_FIN) == 0 {
        return;
    }
    let Some(slot) = TCP_OPTIONS.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot, used at once.
    let slot = unsafe { &mut *slot };
    let len = usize::from(pkt.l4_hdr_len).saturating_sub(20).min(OPTIONS_READ);
    slot.tsval = 0;
    if len == 0 {
        return;
    }
    // The same length, in a form the verifier sees is 1 to OPTIONS_READ
    // (it loses the check above on the way to the helper call).
    let len = ((len - 1) % OPTIONS_READ) + 1;
    if hook.load_bytes(OPTIONS_AT, slot.bytes.as_mut_ptr(), len as u32) {
        slot.tsval = tsval_of(&slot.bytes, len);
    }
}

/// The timestamp value [`load`] read for the packet being processed, if
/// its `SEEN_*` bits (`seen`) are a SYN's or FIN's; 0 if not.
#[inline(always)]
pub fn tsval(seen: u8) -> u32 {
    if seen & (SEEN_SYN | SEEN_FIN) == 0 {
        return 0;
    }
    TCP_OPTIONS.get(0).map_or(0, |slot| slot.tsval)
}
