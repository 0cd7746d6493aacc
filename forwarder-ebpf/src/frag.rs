//! IPv4 fragments of translated traffic (a UDP datagram larger than the
//! path MTU, say). Only a datagram's first fragment carries the ports, so
//! it alone can be looked up as a connection; it is translated like any
//! packet, and its translation is remembered under what every fragment of
//! the datagram shares (source, destination, IP id, protocol). Later
//! fragments get the same addresses, to the same node, with no reassembly:
//! the receiver reassembles, and the L4 checksum the first fragment's
//! translation updated covers the whole datagram.
//!
//! A later fragment whose first fragment was not translated here (not a
//! VIP's, lost, reordered ahead of it, or remembered more than
//! `FRAGMENT_TIMEOUT_NS` ago, or arriving on another interface than the
//! first) goes to the kernel untouched, as before:
//! for a VIP the datagram is lost, as on any path that reorders
//! fragments past a stateful middlebox. `FRAGMENTS` is an LRU of
//! `MAX_FRAGMENTED_DATAGRAMS` entries.

use aya_ebpf::bindings::BPF_ANY;
use forwarder_common::{
    counters::Reason,
    csum,
    maps::{FRAGMENT_TIMEOUT_NS, FlowEntry, FragmentEntry, FragmentKey},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    conntrack,
    datapath::{self, Hook, Verdict},
    fwd::{self, Query},
    maps::FRAGMENTS,
    parse::{IPV4_NO_OPTIONS, Packet},
    stats,
};

/// What to remember of `pkt`, a first fragment arriving on `ingress`,
/// for the rest of its datagram: taken before the rewrite (TC's helpers
/// invalidate `pkt`), stored with [`remember`] once it succeeded.
#[inline(always)]
pub fn first(pkt: &Packet, entry: &FlowEntry, now: u64, ingress: u32) -> (FragmentKey, FragmentEntry) {
    // SAFETY: `ip` was bounds-checked by `parse`.
    let id = u16::from_ne_bytes(unsafe { (*pkt.ip).id });
    let key = FragmentKey { src: pkt.key.src, dst: pkt.key.dst, id, proto: pkt.key.proto, _pad: 0 };
    let value = FragmentEntry {
        new_src: entry.new_src,
        new_dst: entry.new_dst,
        ip_csum_delta: entry.ip_csum_delta,
        flags: entry.flags,
        _pad: 0,
        service_id: entry.service_id,
        backend_id: entry.backend_id,
        ingress,
        created_ns: now,
    };
    (key, value)
}

#[inline(always)]
pub fn remember(first: &(FragmentKey, FragmentEntry)) {
    let _ = FRAGMENTS.insert(first.0, first.1, u64::from(BPF_ANY));
}

/// Translates and forwards a later fragment of a remembered datagram, or
/// says why it is passed.
#[inline(always)]
pub fn translate_later<H: Hook>(hook: &H) -> Result<Verdict, Reason> {
    let (data, data_end) = (hook.data(), hook.data_end());
    if data + EthHdr::LEN + Ipv4Hdr::LEN > data_end {
        return Err(Reason::PassMalformed);
    }
    let eth = data as *mut EthHdr;
    let ip = (data + EthHdr::LEN) as *mut Ipv4Hdr;
    // SAFETY: bounds-checked above.
    let ip = unsafe { &mut *ip };
    let ip_len = u16::from_be_bytes(ip.tot_len);
    if ip.vihl != IPV4_NO_OPTIONS {
        return Err(Reason::PassFragment);
    }
    if (ip_len as usize) <= Ipv4Hdr::LEN || EthHdr::LEN + ip_len as usize > hook.frame_len() {
        return Err(Reason::PassMalformed);
    }
    let (src, dst) = (u32::from_ne_bytes(ip.src_addr), u32::from_ne_bytes(ip.dst_addr));
    let key = FragmentKey { src, dst, id: u16::from_ne_bytes(ip.id), proto: ip.proto, _pad: 0 };
    let now = conntrack::now_ns();
    let entry = match FRAGMENTS.get_ptr(key) {
        // SAFETY: a map value pointer from the lookup helper, copied at once.
        Some(found) => unsafe { *found },
        None => return Err(Reason::PassFragment),
    };
    let ingress = hook.ingress_ifindex();
    // From elsewhere, a spoofed fragment would join another's datagram.
    if now.saturating_sub(entry.created_ns) > FRAGMENT_TIMEOUT_NS || entry.ingress != ingress {
        return Err(Reason::PassFragment);
    }
    if ip.ttl <= 1 {
        return Err(Reason::PassTtlExpired);
    }
    let query = Query {
        proto: ip.proto,
        tos: ip.tos,
        src: entry.new_src,
        dst: entry.new_dst,
        sport: 0,
        dport: 0,
        len: ip_len,
    };
    let route = fwd::lookup(hook.ctx(), ingress, &query)?;
    // SAFETY: `eth` was bounds-checked above.
    let verdict = unsafe { datapath::leave::<H>(route, eth, ingress)? };
    if let Verdict::HandToNeighHook = verdict {
        return Ok(verdict);
    }
    // Direct writes: the header's checksum stays valid, so does a
    // `CHECKSUM_COMPLETE` sum; the payload is not touched.
    ip.src_addr = entry.new_src.to_ne_bytes();
    ip.dst_addr = entry.new_dst.to_ne_bytes();
    ip.ttl -= 1;
    ip.check = csum::apply(u16::from_ne_bytes(ip.check), entry.ip_csum_delta).to_ne_bytes();
    stats::traffic(entry.service_id, entry.backend_id, entry.flags, ip_len);
    stats::reason(Reason::FragmentTranslated);
    Ok(verdict)
}
