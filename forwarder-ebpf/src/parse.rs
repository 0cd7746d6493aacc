//! Ethernet / IPv4 / TCP or UDP parsing, with a bounds check before every read.

use core::mem::size_of;

use forwarder_common::{
    conntrack::{SEEN_ACK, SEEN_FIN, SEEN_PACKET, SEEN_RST, SEEN_SYN, tcp_seen},
    counters::Reason,
    maps::{FlowKey, PROTO_TCP, PROTO_UDP},
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

/// EtherType of IPv4, in wire order.
const ETH_P_IP: u16 = 0x0800u16.to_be();
/// The fragment offset, in wire order.
pub const IP_OFFSET_BITS: u16 = 0x1fffu16.to_be();
/// "More fragments", in wire order.
const IP_MORE_FRAGMENTS: u16 = 0x2000u16.to_be();
/// "More fragments" and the fragment offset: any fragment, in wire order.
pub const IP_FRAGMENT_BITS: u16 = IP_MORE_FRAGMENTS | IP_OFFSET_BITS;
/// "Don't fragment", in wire order.
const IP_DONT_FRAGMENT: u16 = 0x4000u16.to_be();
pub const IPV4_NO_OPTIONS: u8 = 0x45;

/// Offsets in a TCP or UDP header.
const L4_SPORT: usize = 0;
const L4_DPORT: usize = 2;
const TCP_DATA_OFFSET: usize = 12;
const TCP_FLAGS: usize = 13;
const TCP_CHECK: usize = 16;
const UDP_CHECK: usize = 6;
const TCP_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;

/// Where the IPv4 header checksum is, from the start of the frame.
pub const IP_CHECK_AT: u32 = (EthHdr::LEN + 10) as u32;
/// Where the L4 header starts, from the start of the frame.
const L4_AT: usize = EthHdr::LEN + Ipv4Hdr::LEN;

/// A parsed IPv4 TCP/UDP packet: header pointers (already bounds-checked)
/// and its 5-tuple.
pub struct Packet {
    pub eth: *mut EthHdr,
    pub ip: *mut Ipv4Hdr,
    /// Where the L4 ports start.
    pub l4: *mut u8,
    /// The L4 checksum field.
    pub l4_check: *mut [u8; 2],
    pub key: FlowKey,
    /// `SEEN_*` bits this packet contributes to its flow.
    pub seen: u8,
    /// IPv4 total length (host order), for byte counters and the MTU check.
    pub ip_len: u16,
    /// The length of the TCP (options included) or UDP header.
    pub l4_hdr_len: u16,
}

impl Packet {
    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        self.key.proto == PROTO_TCP
    }

    /// Whether this may start a connection before its node answers: a TCP
    /// SYN without ACK, RST or FIN, or any UDP datagram.
    #[inline(always)]
    pub fn opens(&self) -> bool {
        !self.is_tcp() || self.seen & (SEEN_SYN | SEEN_ACK | SEEN_RST | SEEN_FIN) == SEEN_SYN
    }

    /// Where the L4 checksum is, from the start of the frame.
    #[inline(always)]
    pub fn l4_check_at(&self) -> u32 {
        (L4_AT + if self.is_tcp() { TCP_CHECK } else { UDP_CHECK }) as u32
    }

    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        // SAFETY: `ip` was bounds-checked by `parse`.
        unsafe { (*self.ip).ttl }
    }

    /// Whether this is the first fragment of a datagram with more to come.
    #[inline(always)]
    pub fn first_fragment(&self) -> bool {
        // SAFETY: `ip` was bounds-checked by `parse`.
        u16::from_ne_bytes(unsafe { (*self.ip).frags }) & IP_MORE_FRAGMENTS != 0
    }

    /// Whether the sender forbade fragmentation (DF).
    #[inline(always)]
    pub fn dont_fragment(&self) -> bool {
        // SAFETY: as above.
        u16::from_ne_bytes(unsafe { (*self.ip).frags }) & IP_DONT_FRAGMENT != 0
    }

    #[inline(always)]
    pub fn tos(&self) -> u8 {
        // SAFETY: as above.
        unsafe { (*self.ip).tos }
    }
}

#[inline(always)]
fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Result<*mut T, Reason> {
    let start = data + offset;
    if start + size_of::<T>() > data_end {
        return Err(Reason::PassMalformed);
    }
    Ok(start as *mut T)
}

#[inline(always)]
fn read_u16(p: *const u8) -> u16 {
    // SAFETY: callers pass pointers inside a bounds-checked header.
    unsafe { u16::from_ne_bytes([*p, *p.add(1)]) }
}

/// Parses the packet whose headers are in `data..data_end`, `frame_len`
/// bytes long in all (more than `data_end - data` for an skb whose payload
/// is in pages), or says why it is not ours.
#[inline(always)]
pub fn parse(data: usize, data_end: usize, frame_len: usize) -> Result<Packet, Reason> {
    let eth: *mut EthHdr = ptr_at(data, data_end, 0)?;
    // SAFETY: bounds-checked above; the same holds for every read below.
    if unsafe { (*eth).ether_type } != ETH_P_IP {
        return Err(Reason::PassNotIpv4);
    }
    let ip: *mut Ipv4Hdr = ptr_at(data, data_end, EthHdr::LEN)?;
    let vihl = unsafe { (*ip).vihl };
    if vihl != IPV4_NO_OPTIONS {
        return Err(if vihl >> 4 == 4 && vihl & 0xf > 5 {
            Reason::PassIpOptions
        } else {
            Reason::PassMalformed
        });
    }
    let proto = unsafe { (*ip).proto };
    let (hdr_len, check_at) = match proto {
        PROTO_TCP => (TCP_HDR_LEN, TCP_CHECK),
        PROTO_UDP => (UDP_HDR_LEN, UDP_CHECK),
        _ => return Err(Reason::PassNotTcpUdp),
    };
    // A first fragment carries the ports and is translated like any
    // packet (see `frag`); later ones are `frag`'s alone.
    if u16::from_ne_bytes(unsafe { (*ip).frags }) & IP_OFFSET_BITS != 0 {
        return Err(Reason::PassFragment);
    }
    let ip_len = u16::from_be_bytes(unsafe { (*ip).tot_len });
    if EthHdr::LEN + ip_len as usize > frame_len || (ip_len as usize) < Ipv4Hdr::LEN + hdr_len {
        return Err(Reason::PassMalformed);
    }
    // Both header lengths are checked here so later offsets stay constant.
    let l4: *mut u8 = if proto == PROTO_TCP {
        ptr_at::<[u8; TCP_HDR_LEN]>(data, data_end, L4_AT)?.cast()
    } else {
        ptr_at::<[u8; UDP_HDR_LEN]>(data, data_end, L4_AT)?.cast()
    };
    let (seen, l4_hdr_len) = if proto == PROTO_TCP {
        let tcp_hdr_len = u16::from(unsafe { *l4.add(TCP_DATA_OFFSET) } >> 4) * 4;
        // A header shorter than its fixed part or longer than the packet
        // would make the GSO segment length (`Hook::wire_len`) a lie.
        if (tcp_hdr_len as usize) < TCP_HDR_LEN || (Ipv4Hdr::LEN as u16) + tcp_hdr_len > ip_len {
            return Err(Reason::PassMalformed);
        }
        (tcp_seen(unsafe { *l4.add(TCP_FLAGS) }), tcp_hdr_len)
    } else {
        (SEEN_PACKET, UDP_HDR_LEN as u16)
    };
    let key = FlowKey::new(
        u32::from_ne_bytes(unsafe { (*ip).src_addr }),
        u32::from_ne_bytes(unsafe { (*ip).dst_addr }),
        read_u16(unsafe { l4.add(L4_SPORT) }),
        read_u16(unsafe { l4.add(L4_DPORT) }),
        proto,
    );
    Ok(Packet { eth, ip, l4, l4_check: unsafe { l4.add(check_at) }.cast(), key, seen, ip_len, l4_hdr_len })
}
