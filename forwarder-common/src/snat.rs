//! SNAT source addresses and ports: the range, the address pool, and
//! which (address, port) pairs a new flow tries.
//!
//! Ports come from below the kernel's default ephemeral range
//! (32768-60999), so translated flows never collide with the host's own
//! connections from the same address.

/// Lowest SNAT source port.
pub const SNAT_PORT_MIN: u16 = 1024;
/// Highest SNAT source port.
pub const SNAT_PORT_MAX: u16 = 32767;
/// How many ports a new SNAT flow tries before it is dropped.
pub const SNAT_PORT_TRIES: u32 = 16;
/// Of those, how many it tries for a free port before it takes over one a
/// half-open connection holds: when a flood of unanswered connections
/// holds most ports, every new connection would otherwise pay for all
/// `SNAT_PORT_TRIES` tries twice over. Not fewer: a connection in its
/// handshake that is taken over loses it (see README, "snat mode"), and
/// with half the ports held, 8 held tries happen to 1 new connection in
/// 256 (with 4: 1 in 16).
pub const SNAT_FREE_TRIES: u32 = 8;
const _: () = assert!(SNAT_FREE_TRIES <= SNAT_PORT_TRIES);
/// Ports per SNAT address (and protocol, and node): concurrent
/// connections one address can carry to one NodePort.
pub const SNAT_PORTS: u32 = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u32 + 1;
/// Most addresses in a SNAT pool (`snat_ip = [..]`).
pub const MAX_SNAT_ADDRS: usize = 16;

/// `SNAT_POOL` value: the addresses SNAT connections are spread over,
/// when `snat_ip` names more than one (else `count` is 0 and each
/// backend's own SNAT address is used). Written whole by the daemon; a
/// reader racing a write may see a mix of the old and new pool, so an
/// address read as 0 is skipped (see [`snat_pool_index`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnatPool {
    pub count: u32,
    /// Network byte order, the first `count` used.
    pub addrs: [u32; MAX_SNAT_ADDRS],
}

/// The pool address (an index below `count`, which is at least 1) a new
/// flow with `hash` tries on `attempt`: consecutive attempts walk the
/// pool from an address the hash picks, so each address gets an equal
/// share of the tries and a flow whose first address is full goes on to
/// the next. The port of each attempt is [`snat_port`]'s.
///
/// ```
/// use forwarder_common::snat::snat_pool_index;
/// let tried: Vec<u32> = (0..4).map(|attempt| snat_pool_index(0x1234_5678, attempt, 2)).collect();
/// assert_eq!(tried, [0, 1, 0, 1]);
/// assert_eq!(snat_pool_index(0xdead_beef, 5, 1), 0);
/// ```
#[inline(always)]
#[must_use]
pub const fn snat_pool_index(hash: u32, attempt: u32, count: u32) -> u32 {
    if count <= 1 {
        return 0;
    }
    ((hash >> 16).wrapping_add(attempt)) % count
}

/// The SNAT port (host order) a new flow with `hash` tries on `attempt`
/// (0-based): each attempt an independent pseudo-random port, keyed by the
/// host's `secret` so that which port a client tuple gets cannot be
/// predicted from outside (a client choosing tuples that collide could
/// otherwise pin a node's ports with few connections). The secret is
/// random per host and kept in the pinned state; only new flows use it
/// (each connection stores its port), so a changed secret breaks nothing.
/// The backend pick is not keyed: every forwarder given the same file
/// picks the same backend.
///
/// Not `start + attempt`: with linear probing the LRU table keeps clusters
/// alive (each probe's lookup marks the taken entry recently used), runs
/// of taken ports grow, and a probe window of 16 fails far more often than
/// the occupancy suggests. Independent probes fail with probability
/// `occupancy ^ SNAT_PORT_TRIES`.
///
/// ```
/// use forwarder_common::snat::{SNAT_PORT_MAX, SNAT_PORT_MIN, snat_port};
/// let ports: Vec<u16> = (0..16).map(|attempt| snat_port(7, 0xdead_beef, attempt)).collect();
/// assert!(ports.iter().all(|p| (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(p)));
/// assert_eq!(snat_port(7, 0xdead_beef, 3), ports[3], "deterministic");
/// assert_ne!(snat_port(8, 0xdead_beef, 3), ports[3], "keyed");
/// ```
#[inline(always)]
#[must_use]
pub const fn snat_port(secret: u64, hash: u32, attempt: u32) -> u16 {
    const RANGE: u64 = (SNAT_PORT_MAX - SNAT_PORT_MIN) as u64 + 1;
    let mixed = crate::hash::mix64((((attempt as u64) << 32) | hash as u64) ^ secret);
    SNAT_PORT_MIN + (mixed % RANGE) as u16
}

#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]` plain data without padding.
unsafe impl aya::Pod for SnatPool {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_spread_over_the_pool_and_every_address_gets_its_share_of_tries() {
        let mut first = [0u32; 3];
        for hash in 0..30_000u32 {
            first[snat_pool_index(hash.wrapping_mul(2_654_435_761), 0, 3) as usize] += 1;
        }
        assert!(first.iter().all(|&n| (9_000..11_000).contains(&n)), "{first:?}");
        let mut tries = [0u32; 3];
        for attempt in 0..SNAT_PORT_TRIES {
            tries[snat_pool_index(77, attempt, 3) as usize] += 1;
        }
        assert!(tries.iter().all(|&n| n >= SNAT_PORT_TRIES / 3), "{tries:?}");
    }

    #[test]
    fn probes_spread_over_the_range() {
        // Consecutive attempts of one flow land far apart, and attempt 0
        // of many flows covers the range evenly.
        let probes: [u16; SNAT_PORT_TRIES as usize] =
            core::array::from_fn(|a| snat_port(99, 12345, a as u32));
        let adjacent = probes.windows(2).filter(|w| w[0].abs_diff(w[1]) < 16).count();
        assert!(adjacent <= 1, "{probes:?}");
        let mut buckets = [0u32; 31];
        for hash in 0..31_000u32 {
            buckets
                [((snat_port(99, hash.wrapping_mul(2_654_435_761), 0) - SNAT_PORT_MIN) / 1024) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| (800..1200).contains(&b)), "{buckets:?}");
    }
}
