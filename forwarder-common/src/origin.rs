//! Half-open connections' original direction, without an entry of its own.
//!
//! A connection not answered yet has one entry in the `HALF_OPEN` LRU map,
//! its *reply* entry, keyed by what the node sends back: inserting it is
//! what claims the reply tuple (the SNAT port), atomically. The original
//! direction (what the client sends) is found through `ORIGINS`, an array
//! indexed by a keyed hash of the client's tuple, whose slot names the
//! reply entry and keeps the original direction's own state (TCP bits,
//! last packet, cached next hop). Writing a slot allocates nothing, so a
//! new connection costs one map allocation, not two, and a SYN flood fills
//! the half-open table half as fast. When the connection is answered both
//! entries go to the established table, the original built from the slot
//! ([`Origin::entry`]).
//!
//! A slot is shared by every tuple that hashes to it: a newer connection
//! overwrites an older one's. The older connection's client packets then
//! find nothing and start it again (same backend, and its reply entry is
//! still its own, so the same SNAT port). Slots are plain memory, written
//! by any CPU: a reader trusts one only if its key is the packet's, its
//! check matches its contents (so a slot torn by two writers is not used)
//! and the reply entry it names translates back to that key.
//!
//! A SYN to a preserve-mode service, or a datagram of a UDP flow no node
//! has answered, makes no entry at all: it is forwarded on its Maglev
//! pick, and its slot, indexed by the hash of the *reply* tuple and marked
//! `FLAG_PENDING`, is all that is kept. The node's answer finds it by its
//! own tuple ([`Origin::awaits`]) and only then makes the connection (its
//! reply entry, and a slot of its client tuple as above). So a flood of
//! spoofed SYNs costs one slot write each and takes no entry from any
//! table; connections are made for what a node answered. (Not in snat
//! mode: a SNAT port must be claimed before the SYN leaves.)

use crate::{
    conntrack::FLAG_PENDING,
    hash::mix64,
    maps::{FlowEntry, FlowKey, NextHop},
};

/// `ORIGINS` value: the original direction of a half-open connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The client's tuple (client -> VIP), as its packets arrive.
    pub key: FlowKey,
    /// The key of the connection's reply entry in `HALF_OPEN`.
    pub reply: FlowKey,
    /// The next hop of the client's translated packets (interface 0: none yet).
    pub hop: NextHop,
    /// Last packet from the client (refreshed about once a second).
    pub last_seen_ns: u64,
    /// [`Origin::check_of`] its key, reply and next hop.
    pub check: u32,
    /// The IPv4 total length `hop` was looked up for (see `FlowEntry::hop_len`).
    pub hop_len: u16,
    /// `conntrack::SEEN_*` of the client's direction.
    pub seen: u8,
    /// The original entry's `conntrack::FLAG_*` (`FLAG_SNAT`).
    pub flags: u8,
}

const _: () = assert!(size_of::<Origin>() == 64);

/// The `ORIGINS` slot of a client tuple whose flow hash is `hash`, under
/// the host's `secret` (so slot collisions cannot be chosen from outside),
/// in an array of `mask + 1` slots (a power of two).
///
/// ```
/// use forwarder_common::origin::origin_slot;
/// assert!(origin_slot(7, 0xdead_beef, 1023) <= 1023);
/// assert_ne!(origin_slot(7, 0xdead_beef, u32::MAX), origin_slot(8, 0xdead_beef, u32::MAX));
/// ```
#[inline(always)]
#[must_use]
pub const fn origin_slot(secret: u64, hash: u32, mask: u32) -> u32 {
    (mix64(secret ^ (hash as u64) ^ 0x6f72_6967_696e_0000) as u32) & mask
}

impl Origin {
    /// A slot for the client tuple `key` whose reply entry is keyed
    /// `reply`, with original-entry `flags`, first seen at `now` with
    /// `seen` bits, no next hop yet.
    #[inline(always)]
    #[must_use]
    pub const fn new(key: FlowKey, reply: FlowKey, flags: u8, seen: u8, now: u64) -> Self {
        let hop = NextHop { ifindex: 0, src_mac: [0; 6], dst_mac: [0; 6] };
        Self {
            key,
            reply,
            hop,
            last_seen_ns: now,
            check: Self::check_of(&key, &reply, &hop),
            hop_len: 0,
            seen,
            flags,
        }
    }

    /// A checksum of what a reader must not see half-written.
    #[inline(always)]
    #[must_use]
    pub const fn check_of(key: &FlowKey, reply: &FlowKey, hop: &NextHop) -> u32 {
        // Word by word, no array: the BPF stack has no room for one.
        const fn mac(m: &[u8; 6]) -> u64 {
            (m[0] as u64)
                | (m[1] as u64) << 8
                | (m[2] as u64) << 16
                | (m[3] as u64) << 24
                | (m[4] as u64) << 32
                | (m[5] as u64) << 40
        }
        // Rotate-and-xor each word in, then mix once: a half-written
        // field changes the sum, and it is cheap in registers.
        let mut sum = (key.src as u64) << 32 | key.dst as u64;
        sum = sum.rotate_left(23) ^ ((key.sport as u64) << 32 | (key.dport as u64) << 16 | key.proto as u64);
        sum = sum.rotate_left(23) ^ ((reply.src as u64) << 32 | reply.dst as u64);
        sum = sum.rotate_left(23)
            ^ ((reply.sport as u64) << 32 | (reply.dport as u64) << 16 | reply.proto as u64);
        sum = sum.rotate_left(23) ^ ((hop.ifindex as u64) << 48 ^ mac(&hop.src_mac));
        sum = mix64(sum.rotate_left(23) ^ mac(&hop.dst_mac));
        (sum >> 32) as u32
    }

    /// Whether this slot is whole and describes the client tuple `key`
    /// of a half-open connection (not a SYN waiting for its answer).
    #[inline(always)]
    #[must_use]
    pub fn describes(&self, key: &FlowKey) -> bool {
        self.key == *key && self.flags & FLAG_PENDING == 0 && self.whole()
    }

    /// Whether this slot is whole and is that of a SYN forwarded without
    /// state, whose node answers with the tuple `reply` (see the module's
    /// documentation).
    #[inline(always)]
    #[must_use]
    pub fn awaits(&self, reply: &FlowKey) -> bool {
        // The answer goes back to the client the key names (preserve mode
        // translates destinations only): a slot torn by two writers whose
        // check still adds up (it is made from what was written) is
        // trusted only if both halves name one client address and port.
        self.reply == *reply
            && self.flags & FLAG_PENDING != 0
            && self.key.src == reply.dst
            && self.key.sport == reply.dport
            && self.key.proto == reply.proto
            && self.whole()
    }

    #[inline(always)]
    fn whole(&self) -> bool {
        self.check == Self::check_of(&self.key, &self.reply, &self.hop)
    }

    /// Records `hop`, looked up for a packet of IPv4 length `len`, in the
    /// slot of the connection `key` whose reply entry is keyed `reply`
    /// (as the caller read them): the check is made from those, not from
    /// the slot, so that a slot another CPU rewrote for another
    /// connection meanwhile becomes untrusted rather than gets this hop.
    #[inline(always)]
    pub fn set_hop(&mut self, key: &FlowKey, reply: &FlowKey, hop: &NextHop, len: u16) {
        self.hop = *hop;
        self.hop_len = len;
        self.check = Self::check_of(key, reply, hop);
    }

    /// The original-direction entry this slot stands for, with `reply`,
    /// the connection's reply entry (which must pair with `self.key`):
    /// what the established table gets when the connection is answered,
    /// and what the client's packets are translated with meanwhile.
    #[inline(always)]
    #[must_use]
    pub const fn entry(&self, reply: &FlowEntry) -> FlowEntry {
        let mut entry = FlowEntry::rewriting(
            &self.key,
            &self.reply.reversed(),
            reply.service_id,
            reply.backend_id,
            self.flags,
            reply.created_ns,
        );
        entry.last_seen_ns = self.last_seen_ns;
        entry.seen = self.seen;
        entry.hop = self.hop;
        entry.hop_len = self.hop_len;
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        conntrack::{FLAG_REPLY, FLAG_SNAT, SEEN_PACKET, SEEN_SYN},
        maps::PROTO_TCP,
    };

    fn pair() -> (FlowKey, FlowKey, FlowEntry) {
        let client = FlowKey::new(10, 20, 1000, 80, PROTO_TCP);
        let to = FlowKey::new(5, 30, 2000, 30080, PROTO_TCP);
        let original = FlowEntry::rewriting(&client, &to, 3, 4, FLAG_SNAT, 77);
        let reply =
            FlowEntry::rewriting(&to.reversed(), &client.reversed(), 3, 4, FLAG_REPLY | FLAG_SNAT, 77);
        (client, original.peer_key(PROTO_TCP), reply)
    }

    #[test]
    fn the_slot_stands_for_the_original_entry_it_replaces() {
        let (client, reply_key, reply) = pair();
        let to = reply_key.reversed();
        let mut want = FlowEntry::rewriting(&client, &to, 3, 4, FLAG_SNAT, 77);
        want.seen = SEEN_PACKET | SEEN_SYN;
        want.last_seen_ns = 99;
        let slot = Origin::new(client, reply_key, FLAG_SNAT, SEEN_PACKET | SEEN_SYN, 99);
        assert_eq!(slot.entry(&reply), want);
        assert!(reply.pairs_with(&client), "the reply entry translates back to the client");
        assert_eq!(want.peer_key(PROTO_TCP), reply_key);
    }

    #[test]
    fn a_torn_or_foreign_slot_is_not_trusted() {
        let (client, reply_key, _) = pair();
        let mut slot = Origin::new(client, reply_key, FLAG_SNAT, SEEN_PACKET, 1);
        assert!(slot.describes(&client));
        assert!(!slot.describes(&FlowKey::new(11, 20, 1000, 80, PROTO_TCP)), "another tuple");
        let hop = NextHop { ifindex: 4, src_mac: [2, 0, 0, 0, 0, 1], dst_mac: [2, 0, 0, 0, 0, 2] };
        slot.set_hop(&client, &reply_key, &hop, 1500);
        assert!(slot.describes(&client), "a recorded next hop keeps it whole");
        let mut rewritten = Origin::new(FlowKey::new(11, 20, 1000, 80, PROTO_TCP), reply_key, 0, 0, 2);
        rewritten.set_hop(&client, &reply_key, &hop, 1500);
        assert!(
            !rewritten.describes(&FlowKey::new(11, 20, 1000, 80, PROTO_TCP)),
            "a hop recorded for another connection's key leaves the slot untrusted"
        );
        let mut torn = slot;
        torn.hop.dst_mac[5] = 9;
        assert!(!torn.describes(&client), "half of another writer's next hop");
        let mut torn = slot;
        torn.reply.sport ^= 1;
        assert!(!torn.describes(&client), "half of another writer's reply key");
    }

    #[test]
    fn a_pending_slot_is_found_by_its_answer_only() {
        let client = FlowKey::new(10, 20, 1000, 80, PROTO_TCP);
        let reply_key = FlowKey::new(30, 10, 30080, 1000, PROTO_TCP);
        let pending = Origin::new(client, reply_key, FLAG_PENDING, SEEN_PACKET | SEEN_SYN, 1);
        assert!(pending.awaits(&reply_key));
        assert!(!pending.describes(&client), "no half-open connection for the client's packets");
        assert!(!pending.awaits(&client));
        let mut other = reply_key;
        other.dport ^= 1;
        assert!(!pending.awaits(&other), "another client port");
        let made = Origin::new(client, reply_key, 0, SEEN_PACKET | SEEN_SYN, 1);
        assert!(!made.awaits(&reply_key), "a half-open connection's slot waits for nothing");
        let mut torn = pending;
        torn.key.src ^= 1;
        assert!(!torn.awaits(&reply_key), "half of another writer's client tuple");
        let mut other_client = Origin::new(client, reply_key, FLAG_PENDING, SEEN_PACKET | SEEN_SYN, 1);
        other_client.key.src = 11;
        other_client.check = Origin::check_of(&other_client.key, &other_client.reply, &other_client.hop);
        assert!(!other_client.awaits(&reply_key), "whole, but its halves name two clients");
    }

    #[test]
    fn slots_spread_and_depend_on_the_secret() {
        let mut used = [0u32; 256];
        for hash in 0..25_600u32 {
            used[origin_slot(42, hash.wrapping_mul(2_654_435_761), 255) as usize] += 1;
        }
        assert!(used.iter().all(|&n| (60..140).contains(&n)), "{used:?}");
        let differ = (0..1000u32).filter(|&h| origin_slot(1, h, 1023) != origin_slot(2, h, 1023)).count();
        assert!(differ > 990, "{differ}");
    }
}
