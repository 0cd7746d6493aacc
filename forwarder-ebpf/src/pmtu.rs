//! Path MTU: a packet too big for its egress link, with "don't fragment"
//! set, is answered with ICMP "fragmentation needed" carrying the egress
//! MTU, as a router on its path would (RFC 1191), so the sender lowers its
//! path MTU instead of retransmitting into a black hole.
//!
//! The error goes back out of the interface the packet came in on, to the
//! MAC it came from, from the address the packet was sent to (the VIP, or
//! for a reply the address the node sent it to), quoting the packet as it
//! arrived. The headers are built by `forwarder_common::icmp::frag_needed`,
//! where host tests check them against etherparse.

use forwarder_common::icmp::{ERROR_HEADERS_LEN, QUOTE_LEN, write_frag_needed};
use network_types::eth::EthHdr;

use crate::{datapath::Hook, parse::Packet};

/// The whole error frame.
pub const FRAME_LEN: usize = EthHdr::LEN + ERROR_HEADERS_LEN + QUOTE_LEN;
const QUOTE_AT: usize = EthHdr::LEN;
const QUOTE_TO: usize = EthHdr::LEN + ERROR_HEADERS_LEN;

/// Turns `pkt` into the "fragmentation needed" error reporting `mtu`,
/// addressed back to its sender; false if the hook could not (the packet
/// is then dropped). In place: the frame is cut to the error's length,
/// the quote (the packet's IP header and 8 bytes, `parse` checked them)
/// copied behind where the new headers go, then those written.
#[inline(always)]
pub fn answer<H: Hook>(hook: &H, pkt: &Packet, mtu: u16) -> bool {
    let (from, to) = (pkt.key.dst, pkt.key.src);
    if !hook.shrink(FRAME_LEN as u32) {
        return false;
    }
    let data = hook.data();
    if data + FRAME_LEN > hook.data_end() {
        return false;
    }
    // SAFETY: bounds-checked just above; the quote's source (14..42) and
    // destination (42..70) do not overlap.
    unsafe {
        let quote = &mut *((data + QUOTE_TO) as *mut [u8; QUOTE_LEN]);
        *quote = *((data + QUOTE_AT) as *const [u8; QUOTE_LEN]);
        let eth = &mut *(data as *mut EthHdr);
        let (sender, us) = (eth.src_addr, eth.dst_addr);
        eth.src_addr = us;
        eth.dst_addr = sender;
        let headers = &mut *((data + EthHdr::LEN) as *mut [u8; ERROR_HEADERS_LEN]);
        write_frag_needed(headers, from, to, mtu, quote);
    }
    true
}
