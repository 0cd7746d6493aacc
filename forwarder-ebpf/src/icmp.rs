//! ICMP errors about tracked connections: translated with the connection
//! they quote and forwarded to its other side.
//!
//! A node (or a router between forwarder and node) answering a translated
//! packet with "fragmentation needed", "port unreachable" or "time
//! exceeded" addresses the translated source: the SNAT address, or in
//! preserve mode the client. The error must reach the client as if the
//! VIP had sent it, quoting the packet the client sent, or path MTU
//! discovery and fast failure break. The same holds the other way for
//! errors a client sends about a reply. The quoted packet is the key: its
//! reversed 5-tuple is the flow entry of the error's direction, whose
//! translation gives every new address. The checksum arithmetic is in
//! `forwarder_common::icmp`, where host tests check it against etherparse.
//!
//! Only errors about a packet the error's receiver sent are translated
//! (the outer destination is the quoted source); everything else (echo,
//! errors about nothing tracked) goes on untouched.

use forwarder_common::{
    conntrack::{FLAG_REPLY, FLAG_SNAT},
    counters::Reason,
    csum,
    icmp::{ICMP_FRAG_NEEDED, Quoted, quotes_a_packet, translated},
    maps::{FlowEntry, FlowKey, PROTO_TCP, PROTO_UDP},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    conntrack::{self, Table},
    datapath::{self, Hook, Verdict},
    fwd::{self, Query},
    lb,
    parse::{IP_FRAGMENT_BITS, IP_OFFSET_BITS, IPV4_NO_OPTIONS},
    stats,
};

pub const PROTO_ICMP: u8 = 1;

/// Offsets from the start of the frame, with neither IP header carrying
/// options (errors about packets with options are left alone).
const ICMP_AT: usize = EthHdr::LEN + Ipv4Hdr::LEN;
const ICMP_CHECK_AT: usize = ICMP_AT + 2;
const QUOTED_IP_AT: usize = ICMP_AT + 8;
const QUOTED_L4_AT: usize = QUOTED_IP_AT + Ipv4Hdr::LEN;
const QUOTED_UDP_CHECK_AT: usize = QUOTED_L4_AT + 6;
const QUOTED_TCP_CHECK_AT: usize = QUOTED_L4_AT + 16;
/// The shortest error translated: IP, ICMP, quoted IP header, 8 bytes of
/// the quoted L4 header (its ports; RFC 792's minimum).
const MIN_IP_LEN: usize = Ipv4Hdr::LEN + 8 + Ipv4Hdr::LEN + 8;
/// The bytes that must be in the linear area: up to the quoted TCP
/// checksum, which is rewritten only when quoted.
pub const PULL_LEN: u32 = (QUOTED_TCP_CHECK_AT + 2) as u32;

/// The lowest next-hop MTU a client may report to a node in snat mode.
const SHARED_MTU_FLOOR: u16 = 1280;

/// An ICMP error the datapath may translate: pointers into the frame,
/// bounds-checked.
struct Error {
    eth: *mut EthHdr,
    outer: *mut Ipv4Hdr,
    icmp_check: *mut [u8; 2],
    quoted: *mut Ipv4Hdr,
    ports: *mut [u8; 4],
    /// The quoted L4 checksum, when quoted.
    l4_check: Option<*mut [u8; 2]>,
    proto: u8,
    ip_len: u16,
    /// ICMP code and, for fragmentation needed, the next-hop MTU.
    code: u8,
    mtu: u16,
}

#[inline(always)]
fn at<T>(data: usize, data_end: usize, offset: usize) -> Option<*mut T> {
    let start = data + offset;
    (start + core::mem::size_of::<T>() <= data_end).then_some(start as *mut T)
}

/// The ICMP error in the frame, if it is one worth translating; `Err`
/// with the reason it is passed otherwise.
#[inline(always)]
fn parse<H: Hook>(hook: &H) -> Result<Error, Reason> {
    let (data, data_end) = (hook.data(), hook.data_end());
    let outer: *mut Ipv4Hdr = at(data, data_end, EthHdr::LEN).ok_or(Reason::PassMalformed)?;
    // SAFETY: bounds-checked above; the same holds for every read below.
    let (vihl, proto, frags) = unsafe { ((*outer).vihl, (*outer).proto, (*outer).frags) };
    if proto != PROTO_ICMP {
        return Err(Reason::PassNotTcpUdp);
    }
    if vihl != IPV4_NO_OPTIONS || u16::from_ne_bytes(frags) & IP_FRAGMENT_BITS != 0 {
        return Err(Reason::PassIcmpNoFlow);
    }
    let icmp_type: u8 = unsafe { *at::<u8>(data, data_end, ICMP_AT).ok_or(Reason::PassMalformed)? };
    if !quotes_a_packet(icmp_type) {
        return Err(Reason::PassNotTcpUdp);
    }
    let ip_len = u16::from_be_bytes(unsafe { (*outer).tot_len });
    if (ip_len as usize) < MIN_IP_LEN || EthHdr::LEN + ip_len as usize > hook.frame_len() {
        return Err(Reason::PassMalformed);
    }
    let quoted: *mut Ipv4Hdr = at(data, data_end, QUOTED_IP_AT).ok_or(Reason::PassMalformed)?;
    let ports: *mut [u8; 4] = at(data, data_end, QUOTED_L4_AT).ok_or(Reason::PassMalformed)?;
    let (quoted_vihl, quoted_proto, quoted_frags) =
        unsafe { ((*quoted).vihl, (*quoted).proto, (*quoted).frags) };
    // A later fragment quotes no ports; options move them.
    if quoted_vihl != IPV4_NO_OPTIONS
        || !matches!(quoted_proto, PROTO_TCP | PROTO_UDP)
        || u16::from_ne_bytes(quoted_frags) & IP_OFFSET_BITS != 0
    {
        return Err(Reason::PassIcmpNoFlow);
    }
    let check_at = if quoted_proto == PROTO_TCP { QUOTED_TCP_CHECK_AT } else { QUOTED_UDP_CHECK_AT };
    let l4_check =
        if ip_len as usize >= check_at + 2 - EthHdr::LEN { at(data, data_end, check_at) } else { None };
    let code: u8 = unsafe { *at::<u8>(data, data_end, ICMP_AT + 1).ok_or(Reason::PassMalformed)? };
    let mtu: [u8; 2] = unsafe { *at::<[u8; 2]>(data, data_end, ICMP_AT + 6).ok_or(Reason::PassMalformed)? };
    Ok(Error {
        code,
        mtu: u16::from_be_bytes(mtu),
        eth: at(data, data_end, 0).ok_or(Reason::PassMalformed)?,
        outer,
        icmp_check: at(data, data_end, ICMP_CHECK_AT).ok_or(Reason::PassMalformed)?,
        quoted,
        ports,
        l4_check,
        proto: quoted_proto,
        ip_len,
    })
}

/// The cheap checks before `Hook::pull`, which copies a cloned skb: an
/// ICMP type that quotes a packet. Within what `tc::run_all` pulled.
#[inline(always)]
fn worth_a_look<H: Hook>(hook: &H) -> Result<(), Reason> {
    let (data, data_end) = (hook.data(), hook.data_end());
    let outer: *mut Ipv4Hdr = at(data, data_end, EthHdr::LEN).ok_or(Reason::PassMalformed)?;
    // SAFETY: bounds-checked above, and the type just below.
    if unsafe { (*outer).proto } != PROTO_ICMP {
        return Err(Reason::PassNotTcpUdp);
    }
    match at::<u8>(data, data_end, ICMP_AT) {
        Some(icmp_type) if quotes_a_packet(unsafe { *icmp_type }) => Ok(()),
        Some(_) => Err(Reason::PassNotTcpUdp),
        None => Err(Reason::PassMalformed),
    }
}

/// Whether an error about the packets of `entry`'s peer (keyed `key`)
/// arrived on the interface those packets left by, when known: a host on
/// the other side cannot pose as a router on this one.
#[inline(always)]
fn from_where_it_went(table: Table, key: &FlowKey, entry: &FlowEntry, ingress: u32) -> bool {
    match conntrack::peer(table, key, entry) {
        Some(peer) => peer.hop_ifindex == 0 || peer.hop_ifindex == ingress,
        None => true,
    }
}

#[inline(always)]
fn word(p: *const [u8; 2]) -> u16 {
    // SAFETY: callers pass bounds-checked fields.
    u16::from_ne_bytes(unsafe { *p })
}

/// Translates and forwards an ICMP error about a tracked connection, or
/// says why the packet is passed.
#[inline(always)]
pub fn translate<H: Hook>(hook: &H) -> Result<Verdict, Reason> {
    worth_a_look(hook)?;
    hook.pull(PULL_LEN);
    let err = parse(hook)?;
    // SAFETY: every pointer in `err` was bounds-checked by `parse`.
    let (outer_src, outer_dst, ttl, tos) = unsafe {
        (
            u32::from_ne_bytes((*err.outer).src_addr),
            u32::from_ne_bytes((*err.outer).dst_addr),
            (*err.outer).ttl,
            (*err.outer).tos,
        )
    };
    let ports = unsafe { *err.ports };
    let quoted = Quoted {
        src: u32::from_ne_bytes(unsafe { (*err.quoted).src_addr }),
        dst: u32::from_ne_bytes(unsafe { (*err.quoted).dst_addr }),
        sport: u16::from_ne_bytes([ports[0], ports[1]]),
        dport: u16::from_ne_bytes([ports[2], ports[3]]),
        ip_check: u16::from_ne_bytes(unsafe { (*err.quoted).check }),
        l4_check: err.l4_check.map(|check| word(check)),
        udp: err.proto == PROTO_UDP,
    };
    // The flow of the error's direction: the quoted packet's answer.
    let key = FlowKey::new(quoted.dst, quoted.src, quoted.dport, quoted.sport, err.proto);
    let (table, entry) = match conntrack::get(&key) {
        Some(found) if outer_dst == quoted.src => found,
        _ => return Err(Reason::PassIcmpNoFlow),
    };
    let ingress = hook.ingress_ifindex();
    if conntrack::expired(table, &key, &entry, conntrack::now_ns())
        || !from_where_it_went(table, &key, &entry, ingress)
    {
        return Err(Reason::PassIcmpNoFlow);
    }
    if entry.flags & FLAG_REPLY == 0 {
        // Towards a node: only from where the service takes clients, and
        // in snat mode no path MTU below IPv6's minimum, which the node
        // would apply to the SNAT address every client shares.
        let service = lb::service(&FlowKey::new(outer_src, quoted.src, 0, quoted.sport, err.proto));
        if service.is_some_and(|service| !lb::source_allowed(&service, outer_src)) {
            return Err(Reason::DropSourceNotAllowed);
        }
        if entry.flags & FLAG_SNAT != 0 && err.code == ICMP_FRAG_NEEDED && err.mtu < SHARED_MTU_FLOOR {
            return Err(Reason::PassIcmpNoFlow);
        }
    }
    if ttl <= 1 {
        return Err(Reason::PassTtlExpired);
    }
    // The sender of the quoted packet's answer becomes the answer's
    // translated source; a router on the way keeps its own address.
    let new_src = if outer_src == quoted.dst { entry.new_src } else { outer_src };
    let new_dst = entry.new_dst;
    let query =
        Query { proto: PROTO_ICMP, tos, src: new_src, dst: new_dst, sport: 0, dport: 0, len: err.ip_len };
    let route = fwd::lookup(hook.ctx(), ingress, &query)?;
    // SAFETY: `eth` was bounds-checked by `parse`.
    let verdict = unsafe { datapath::leave::<H>(route, err.eth, ingress)? };
    if let Verdict::HandToNeighHook = verdict {
        return Ok(verdict);
    }
    // The quoted packet as its sender sent it: the answer's destination
    // and port are its source, the answer's source its destination.
    let sums = translated(&quoted, entry.new_dst, entry.new_src, entry.new_dport, entry.new_sport);
    // SAFETY: as above. Every checksum stays valid, so a `CHECKSUM_COMPLETE`
    // sum over the packet stays right too: direct writes serve both hooks.
    unsafe {
        let outer = &mut *err.outer;
        let outer_delta = csum::combine(
            csum::addrs_delta(outer_src, outer_dst, new_src, new_dst),
            csum::TTL_DECREMENT_DELTA,
        );
        outer.src_addr = new_src.to_ne_bytes();
        outer.dst_addr = new_dst.to_ne_bytes();
        outer.ttl -= 1;
        outer.check = csum::apply(u16::from_ne_bytes(outer.check), outer_delta).to_ne_bytes();
        let quoted_ip = &mut *err.quoted;
        quoted_ip.src_addr = entry.new_dst.to_ne_bytes();
        quoted_ip.dst_addr = entry.new_src.to_ne_bytes();
        quoted_ip.check = sums.ip_check.to_ne_bytes();
        let [s0, s1] = entry.new_dport.to_ne_bytes();
        let [d0, d1] = entry.new_sport.to_ne_bytes();
        *err.ports = [s0, s1, d0, d1];
        if let (Some(at), Some(check)) = (err.l4_check, sums.l4_check) {
            *at = check.to_ne_bytes();
        }
        *err.icmp_check = csum::apply(word(err.icmp_check), sums.icmp_delta).to_ne_bytes();
    }
    stats::reason(Reason::IcmpTranslated);
    Ok(verdict)
}
