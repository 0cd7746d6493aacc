//! SNAT source ports: the range, and which ports a new flow tries.
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

#[cfg(test)]
mod tests {
    use super::*;

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
