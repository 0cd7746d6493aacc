//! ICMP errors about a translated connection: which messages quote a
//! packet, and the checksums once the quoted packet is translated.
//!
//! An ICMP error (RFC 792) carries the IP header of the packet it is
//! about and at least its first 8 bytes (the ports; Linux quotes up to
//! 576 bytes in all, so a TCP checksum is often there too). Translating it
//! rewrites the quoted addresses and ports as the connection's other
//! direction would, which changes the quoted IP checksum, the quoted L4
//! checksum (when quoted) and, through all of these words, the ICMP
//! checksum, which has no pseudo-header.

use crate::csum::{addrs_delta, apply, apply_udp, combine, fold, ports_delta, word_delta};

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// Destination unreachable, code "fragmentation needed and DF set".
pub const ICMP_FRAG_NEEDED: u8 = 4;

/// Whether an ICMP type is an error that quotes the packet it is about
/// and is worth delivering to the other side (parameter problem and the
/// obsolete source quench are not).
#[inline(always)]
#[must_use]
pub const fn quotes_a_packet(icmp_type: u8) -> bool {
    matches!(icmp_type, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED)
}

/// The words of a quoted packet's headers a translation changes, as read
/// from the packet (wire order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub ip_check: u16,
    /// The quoted L4 checksum, `None` when the quote ends before it.
    pub l4_check: Option<u16>,
    /// UDP, whose zero checksum means "none" and stays zero.
    pub udp: bool,
}

/// What a translation writes besides the new addresses and ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checksums {
    pub ip_check: u16,
    pub l4_check: Option<u16>,
    /// To fold into the ICMP checksum with [`apply`].
    pub icmp_delta: u16,
}

/// The checksums of `old` once its addresses and ports are `src, dst,
/// sport, dport`.
#[inline(always)]
#[must_use]
pub fn translated(old: &Quoted, src: u32, dst: u32, sport: u16, dport: u16) -> Checksums {
    let addrs = addrs_delta(old.src, old.dst, src, dst);
    let ports = ports_delta(old.sport, old.dport, sport, dport);
    let l4_delta = combine(addrs, ports);
    let ip_check = apply(old.ip_check, addrs);
    let l4_check = match old.l4_check {
        Some(check) if old.udp => Some(apply_udp(check, l4_delta)),
        Some(check) => Some(apply(check, l4_delta)),
        None => None,
    };
    let mut icmp = u64::from(l4_delta) + word_delta(old.ip_check, ip_check);
    if let (Some(before), Some(after)) = (old.l4_check, l4_check) {
        icmp += word_delta(before, after);
    }
    Checksums { ip_check, l4_check, icmp_delta: fold(icmp) }
}

/// What an ICMP error the datapath sends quotes of the packet it is
/// about: its IP header and the 8 bytes after it (RFC 792's minimum: the
/// ports, and TCP's sequence number, which Linux checks).
pub const QUOTE_LEN: usize = 20 + 8;
/// The length of the IP header and ICMP header before the quote.
pub const ERROR_HEADERS_LEN: usize = 20 + 8;
/// TOS of the errors sent: "internetwork control", as Linux sends ICMP errors.
const ERROR_TOS: u8 = 0xc0;
const ERROR_TTL: u8 = 64;

/// Writes into `out` the IPv4 and ICMP headers of a "fragmentation
/// needed" error from `src` to `dst` (wire order) reporting next-hop MTU
/// `mtu`, about the packet whose first bytes are `quote`: both checksums
/// computed. Field by field, from scalars: in the datapath `out` is packet
/// memory, and a header assembled on the BPF stack would be copied with
/// stores the verifier refuses as misaligned.
#[inline(always)]
pub fn write_frag_needed(
    out: &mut [u8; ERROR_HEADERS_LEN],
    src: u32,
    dst: u32,
    mtu: u16,
    quote: &[u8; QUOTE_LEN],
) {
    const PROTO_ICMP: u8 = 1;
    let [t0, t1] = ((ERROR_HEADERS_LEN + QUOTE_LEN) as u16).to_be_bytes();
    let [m0, m1] = mtu.to_be_bytes();
    let ([s0, s1, s2, s3], [d0, d1, d2, d3]) = (src.to_ne_bytes(), dst.to_ne_bytes());
    let word = |a: u8, b: u8| u64::from(u16::from_ne_bytes([a, b]));
    let ip_sum = word(0x45, ERROR_TOS)
        + word(t0, t1)
        + word(ERROR_TTL, PROTO_ICMP)
        + word(s0, s1)
        + word(s2, s3)
        + word(d0, d1)
        + word(d2, d3);
    let [c0, c1] = (!fold(ip_sum)).to_ne_bytes();
    let icmp_sum = word(ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED) + word(m0, m1) + sum_words(quote);
    let [i0, i1] = (!fold(icmp_sum)).to_ne_bytes();
    *out = [
        0x45,
        ERROR_TOS,
        t0,
        t1,
        0,
        0,
        0,
        0,
        ERROR_TTL,
        PROTO_ICMP,
        c0,
        c1,
        s0,
        s1,
        s2,
        s3,
        d0,
        d1,
        d2,
        d3,
        ICMP_DEST_UNREACH,
        ICMP_FRAG_NEEDED,
        i0,
        i1,
        0,
        0,
        m0,
        m1,
    ];
}

/// The one's-complement sum (unfolded) of an even number of bytes.
#[inline(always)]
fn sum_words<const N: usize>(bytes: &[u8; N]) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i + 1 < N {
        sum += u64::from(u16::from_ne_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use etherparse::{Icmpv4Header, Icmpv4Type, PacketBuilder, icmpv4::DestUnreachableHeader};
    use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

    use super::*;
    use crate::csum::checksum;

    fn word(bytes: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([bytes[at], bytes[at + 1]])
    }

    fn quoted(packet: &[u8], tcp: bool, quote_len: usize) -> Quoted {
        let check_at = if tcp { 36 } else { 26 };
        Quoted {
            src: u32::from_ne_bytes(packet[12..16].try_into().unwrap()),
            dst: u32::from_ne_bytes(packet[16..20].try_into().unwrap()),
            sport: word(packet, 20),
            dport: word(packet, 22),
            ip_check: word(packet, 10),
            l4_check: (quote_len >= check_at + 2).then(|| word(packet, check_at)),
            udp: !tcp,
        }
    }

    fn packet(rng: &mut SmallRng, tcp: bool, src: [u8; 4], dst: [u8; 4], ports: (u16, u16)) -> Vec<u8> {
        let builder = PacketBuilder::ipv4(src, dst, 64);
        let payload: Vec<u8> = (0..rng.random_range(0..600)).map(|_| rng.random()).collect();
        let mut out = Vec::new();
        if tcp {
            builder.tcp(ports.0, ports.1, rng.random(), 64240).write(&mut out, &payload).unwrap();
        } else {
            builder.udp(ports.0, ports.1).write(&mut out, &payload).unwrap();
        }
        out
    }

    /// An ICMP error quoting the first `quote_len` bytes of `quote`, its
    /// checksum computed from scratch.
    fn error(quote: &[u8], quote_len: usize) -> Vec<u8> {
        let quote = &quote[..quote_len.min(quote.len())];
        let kind = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
            next_hop_mtu: 1400,
        });
        let mut out = Vec::new();
        Icmpv4Header::with_checksum(kind, quote).write(&mut out).unwrap();
        out.extend_from_slice(quote);
        out
    }

    /// Incremental updates of every checksum equal the checksums of the
    /// error quoting the translated packet, computed from scratch, for
    /// quotes that stop before, inside and after the L4 checksum.
    #[test]
    fn incremental_checksums_match_a_full_recomputation() {
        let mut rng = SmallRng::seed_from_u64(9);
        for round in 0..2000 {
            let tcp = round % 2 == 0;
            let (a, b, c, d): ([u8; 4], [u8; 4], [u8; 4], [u8; 4]) =
                (rng.random(), rng.random(), rng.random(), rng.random());
            let (p, q, r, s): (u16, u16, u16, u16) = (rng.random(), rng.random(), rng.random(), rng.random());
            let seed = rng.random();
            let before = packet(&mut SmallRng::seed_from_u64(seed), tcp, a, b, (p, q));
            let after = packet(&mut SmallRng::seed_from_u64(seed), tcp, c, d, (r, s));
            let quote_len = [28, 36, 40, 576][rng.random_range(0..4)];
            let old = quoted(&before, tcp, quote_len);
            let new = quoted(&after, tcp, quote_len);
            let sums = translated(&old, new.src, new.dst, new.sport, new.dport);
            assert_eq!(sums.ip_check, new.ip_check, "round {round}");
            assert_eq!(sums.l4_check, new.l4_check, "round {round}, quote {quote_len}");
            let (old_error, new_error) = (error(&before, quote_len), error(&after, quote_len));
            assert_eq!(apply(word(&old_error, 2), sums.icmp_delta), word(&new_error, 2), "round {round}");
            assert_eq!(checksum(&new_error), 0, "a from-scratch checksum sums to zero");
        }
    }

    #[test]
    fn only_unreachable_and_time_exceeded_are_translated() {
        let translated: Vec<u8> = (0..=255u8).filter(|t| quotes_a_packet(*t)).collect();
        assert_eq!(translated, [ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED]);
    }

    /// The headers match an error etherparse builds and checksums itself.
    #[test]
    fn frag_needed_headers_match_a_from_scratch_build() {
        let mut rng = SmallRng::seed_from_u64(4);
        for _ in 0..200 {
            let (src, dst): ([u8; 4], [u8; 4]) = (rng.random(), rng.random());
            let mtu: u16 = rng.random_range(68..9000);
            let quote: [u8; QUOTE_LEN] = core::array::from_fn(|_| rng.random());
            let mut got = [0u8; ERROR_HEADERS_LEN];
            write_frag_needed(&mut got, u32::from_ne_bytes(src), u32::from_ne_bytes(dst), mtu, &quote);
            let kind = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: mtu,
            });
            let icmp = Icmpv4Header::with_checksum(kind, &quote);
            let mut ip = etherparse::Ipv4Header::new(
                (icmp.header_len() + QUOTE_LEN) as u16,
                64,
                etherparse::IpNumber::ICMP,
                src,
                dst,
            )
            .unwrap();
            ip.dont_fragment = false;
            ip.dscp = etherparse::Ipv4Dscp::try_new(0xc0 >> 2).unwrap();
            ip.header_checksum = ip.calc_header_checksum();
            let mut want = Vec::new();
            ip.write_raw(&mut want).unwrap();
            icmp.write(&mut want).unwrap();
            assert_eq!(got.to_vec(), want);
        }
    }
}
