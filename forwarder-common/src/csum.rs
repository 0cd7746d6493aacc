//! Incremental update of Internet checksums (RFC 1071, RFC 1624).
//!
//! A rewrite that changes some 16-bit words of a checksummed region is
//! summarised by a *delta*: the one's-complement sum of `!old + new` over
//! the changed words. [`apply`] folds a delta into an existing checksum
//! field (RFC 1624, equation 3). The forwarder computes a flow's deltas once,
//! when the flow is created, so every later packet costs one addition per
//! checksum.
//!
//! The one's-complement sum does not depend on byte order as long as words
//! are read and written the same way, so every function here works on words
//! as read natively from packet memory ("wire order").
//!
//! ```
//! use forwarder_common::csum;
//! // IPv4 header checksum after changing the destination address.
//! let old_dst = u32::from_ne_bytes([203, 0, 113, 10]);
//! let new_dst = u32::from_ne_bytes([198, 18, 2, 11]);
//! let delta = csum::addr_delta(old_dst, new_dst);
//! let updated = csum::apply(0x1c46, delta);
//! assert_ne!(updated, 0x1c46);
//! ```

/// Adds two partial sums and folds the carries back in (end-around carry).
#[inline(always)]
#[must_use]
pub const fn fold(sum: u64) -> u16 {
    let sum = (sum & 0xffff_ffff) + (sum >> 32);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The delta for one 16-bit word changing from `old` to `new`.
#[inline(always)]
#[must_use]
pub const fn word_delta(old: u16, new: u16) -> u64 {
    (!old) as u64 + new as u64
}

/// The delta for a 32-bit field (an IPv4 address) changing from `old` to `new`.
#[inline(always)]
#[must_use]
pub const fn addr_delta(old: u32, new: u32) -> u16 {
    fold(word_delta(old as u16, new as u16) + word_delta((old >> 16) as u16, (new >> 16) as u16))
}

/// The delta of an IPv4 packet's addresses changing from `from_src, from_dst`
/// to `to_src, to_dst`: what the IP header and the L4 pseudo-header see.
#[inline(always)]
#[must_use]
pub const fn addrs_delta(from_src: u32, from_dst: u32, to_src: u32, to_dst: u32) -> u16 {
    combine(addr_delta(from_src, to_src), addr_delta(from_dst, to_dst))
}

/// The delta of a TCP or UDP header's ports changing (wire order): the
/// part of an L4 checksum change outside the pseudo-header.
#[inline(always)]
#[must_use]
pub const fn ports_delta(from_sport: u16, from_dport: u16, to_sport: u16, to_dport: u16) -> u16 {
    fold(word_delta(from_sport, to_sport) + word_delta(from_dport, to_dport))
}

/// Combines two deltas.
#[inline(always)]
#[must_use]
pub const fn combine(a: u16, b: u16) -> u16 {
    fold(a as u64 + b as u64)
}

/// The delta of decrementing the IPv4 TTL by one.
///
/// TTL is the first byte of the 16-bit word `[ttl, protocol]`; subtracting
/// one from it subtracts the word `[1, 0]`, whose one's-complement negation
/// is this delta whatever the host byte order.
pub const TTL_DECREMENT_DELTA: u16 = !u16::from_ne_bytes([1, 0]);

/// Applies a delta to a checksum field: `HC' = ~(~HC + delta)` (RFC 1624, eq. 3).
#[inline(always)]
#[must_use]
pub const fn apply(check: u16, delta: u16) -> u16 {
    !fold((!check) as u64 + delta as u64)
}

/// Applies a delta to a UDP checksum field.
///
/// A UDP checksum of 0 means "no checksum" and stays 0; a computed checksum
/// of 0 is sent as `0xffff` (RFC 768).
#[inline(always)]
#[must_use]
pub const fn apply_udp(check: u16, delta: u16) -> u16 {
    if check == 0 {
        return 0;
    }
    match apply(check, delta) {
        0 => 0xffff,
        sum => sum,
    }
}

/// The full checksum of `bytes` (odd lengths padded with a zero byte), as a
/// field value in wire order. For tests and slow paths, not the datapath.
#[must_use]
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u64;
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u64::from(u16::from_ne_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_ne_bytes([*last, 0]));
    }
    !fold(sum)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use etherparse::{Ipv4Header, PacketBuilder, SlicedPacket, TransportSlice};
    use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

    use super::*;

    /// Builds a random IPv4 TCP or UDP packet (no Ethernet) with valid checksums.
    fn random_packet(rng: &mut SmallRng, tcp: bool) -> Vec<u8> {
        let builder = PacketBuilder::ipv4(rng.random(), rng.random(), rng.random_range(2..=255));
        let payload: Vec<u8> = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
        let mut out = Vec::new();
        if tcp {
            builder
                .tcp(rng.random(), rng.random(), rng.random(), rng.random())
                .write(&mut out, &payload)
                .unwrap();
        } else {
            builder.udp(rng.random(), rng.random()).write(&mut out, &payload).unwrap();
        }
        out
    }

    fn rd16(p: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([p[at], p[at + 1]])
    }
    fn rd32(p: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
    }
    fn wr16(p: &mut [u8], at: usize, v: u16) {
        p[at..at + 2].copy_from_slice(&v.to_ne_bytes());
    }
    fn wr32(p: &mut [u8], at: usize, v: u32) {
        p[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }

    /// Rewrites addresses, ports and TTL incrementally, the way the datapath
    /// does, then checks every checksum against a full recomputation.
    #[test]
    fn incremental_matches_full_recomputation() {
        let mut rng = SmallRng::seed_from_u64(0x5eed);
        for round in 0..20_000 {
            let tcp = round % 2 == 0;
            let mut p = random_packet(&mut rng, tcp);
            let l4 = 20;
            let check_at = l4 + if tcp { 16 } else { 6 };
            if !tcp && round % 7 == 1 {
                wr16(&mut p, check_at, 0); // "no checksum" must stay 0.
            }
            let (new_src, new_dst): (u32, u32) = (rng.random(), rng.random());
            let (new_sport, new_dport): (u16, u16) = (rng.random(), rng.random());
            let (old_src, old_dst) = (rd32(&p, 12), rd32(&p, 16));
            let (old_sport, old_dport) = (rd16(&p, l4), rd16(&p, l4 + 2));

            let addrs = combine(addr_delta(old_src, new_src), addr_delta(old_dst, new_dst));
            let ip_delta = combine(addrs, TTL_DECREMENT_DELTA);
            let ports = fold(word_delta(old_sport, new_sport) + word_delta(old_dport, new_dport));
            let l4_delta = combine(addrs, ports);

            wr32(&mut p, 12, new_src);
            wr32(&mut p, 16, new_dst);
            p[8] -= 1;
            let ip_check = apply(rd16(&p, 10), ip_delta);
            wr16(&mut p, 10, ip_check);
            wr16(&mut p, l4, new_sport);
            wr16(&mut p, l4 + 2, new_dport);
            let old_check = rd16(&p, check_at);
            let new_check = if tcp { apply(old_check, l4_delta) } else { apply_udp(old_check, l4_delta) };
            wr16(&mut p, check_at, new_check);

            let (ip, _) = Ipv4Header::from_slice(&p).unwrap();
            assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "round {round}");
            let sliced = SlicedPacket::from_ip(&p).unwrap();
            let payload = &p[l4 + if tcp { 20 } else { 8 }..];
            match sliced.transport.unwrap() {
                TransportSlice::Tcp(t) => {
                    let want = t.to_header().calc_checksum_ipv4(&ip, payload).unwrap();
                    assert_eq!(t.checksum(), want, "round {round}");
                }
                TransportSlice::Udp(u) if old_check == 0 => assert_eq!(u.checksum(), 0),
                TransportSlice::Udp(u) => {
                    let want = u.to_header().calc_checksum_ipv4(&ip, payload).unwrap();
                    assert_eq!(u.checksum(), want, "round {round}");
                }
                other => panic!("unexpected transport {other:?}"),
            }
        }
    }

    #[test]
    fn full_checksum_validates_ipv4_header() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..1000 {
            let p = random_packet(&mut rng, true);
            assert_eq!(checksum(&p[..20]), 0, "a valid header sums to zero");
        }
    }

    #[test]
    fn udp_zero_result_is_sent_as_ffff() {
        // Find a delta that maps a checksum to 0 and check it becomes 0xffff.
        let check = 0x1234;
        let delta = check; // ~check + check == 0xffff, whose complement is 0
        assert_eq!(apply(check, delta), 0);
        assert_eq!(apply_udp(check, delta), 0xffff);
    }
}
