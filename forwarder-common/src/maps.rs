//! Keys and values of the BPF maps, as laid out in kernel memory.
//!
//! Longer than most files on purpose: this is the whole contract between
//! the datapath and user space (every key, value, flag and map name), and
//! it reads best, and is reviewed best, in one place.
//!
//! Addresses and ports are in wire order (the packet's bytes read as a native
//! integer); see [`wire_addr`] and [`wire_port`].

use core::net::Ipv4Addr;

use crate::csum;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Map names, shared so user space finds what the eBPF object defines.
pub mod names {
    pub const SERVICES: &str = "SERVICES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const MAGLEV: &str = "MAGLEV";
    pub const FLOWS: &str = "FLOWS";
    pub const HALF_OPEN: &str = "HALF_OPEN";
    pub const SERVICE_TRAFFIC: &str = "SERVICE_TRAFFIC";
    pub const BACKEND_TRAFFIC: &str = "BACKEND_TRAFFIC";
    pub const REASONS: &str = "REASONS";
    pub const EGRESS: &str = "EGRESS";
    pub const SETTINGS: &str = "SETTINGS";
    pub const SOURCES: &str = "SOURCES";
    pub const SECRET: &str = "SECRET";
    pub const ORIGINS: &str = "ORIGINS";
    pub const SNAT_POOL: &str = "SNAT_POOL";
    /// Per CPU, not pinned: a cache a new daemon starts empty.
    pub const FIRST_HOPS: &str = "FIRST_HOPS";
    pub const REPLY_PORTS: &str = "REPLY_PORTS";

    /// The maps pinned in bpffs so a restarted daemon adopts them. A map
    /// added later (SOURCES, SECRET, HALF_OPEN) is created and pinned by the first
    /// daemon that knows it, so adding one needs no layout version.
    pub const PINNED: [&str; 15] = [
        SERVICES,
        BACKENDS,
        MAGLEV,
        FLOWS,
        HALF_OPEN,
        SERVICE_TRAFFIC,
        BACKEND_TRAFFIC,
        REASONS,
        EGRESS,
        SETTINGS,
        SOURCES,
        SECRET,
        ORIGINS,
        SNAT_POOL,
        REPLY_PORTS,
    ];
}

/// Version of the layout of every pinned map. A daemon only adopts pins of
/// its own version; bump it whenever a key, value or map changes.
pub const LAYOUT_VERSION: u32 = 3;

/// Program names in the eBPF object.
pub mod programs {
    pub const XDP: &str = "forwarder_xdp";
    /// Beside XDP: what XDP hands over.
    pub const TC: &str = "forwarder_tc";
    /// Instead of XDP: every packet.
    pub const TC_ALL: &str = "forwarder_tc_all";
}

/// Default capacity of the service table.
pub const DEFAULT_MAX_SERVICES: u32 = 4096;
/// Default capacity of the backend table (all services together). The
/// `BACKENDS` map holds [`BACKEND_BANKS`] times this.
pub const DEFAULT_MAX_BACKENDS: u32 = 16384;
/// Banks of `BACKENDS` entries per service: a changed backend list is
/// written into the bank not in use, then the service entry switches.
pub const BACKEND_BANKS: u32 = 2;

/// Entries of the `BACKENDS` map for a backend capacity of `max_backends`.
#[must_use]
pub const fn backend_entries(max_backends: u32) -> u32 {
    max_backends.saturating_mul(BACKEND_BANKS)
}

/// The bank a service switches to from `bank`.
#[must_use]
pub const fn other_bank(bank: u8) -> u8 {
    (bank + 1) % BACKEND_BANKS as u8
}
/// Default number of distinct Maglev tables (services with the same nodes
/// and weights share one).
pub const DEFAULT_MAX_TABLES: u32 = 1024;
/// `BPF_F_NO_PREALLOC`: elements are allocated on update and freed after
/// an RCU grace period, so a reader never sees an element reused for
/// another key (preallocated hash maps recycle them at once).
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// Default capacity of the flow table, in entries (two per connection).
pub const DEFAULT_MAX_FLOW_ENTRIES: u32 = 1 << 19;
/// Default capacity of the half-open table, in entries (one per
/// connection: its reply entry; see `origin`): where connections wait for
/// their answer, apart from the established ones a SYN flood must not evict.
pub const DEFAULT_MAX_HALF_OPEN_ENTRIES: u32 = 1 << 16;

/// `REPLY_PORTS` words: one bit for each of the 65,536 ports.
pub const REPLY_PORT_WORDS: u32 = 1 << 10;

/// The `REPLY_PORTS` word and bit of `port` (wire order, as keys hold it).
/// A bit is set for every port a backend has ever had, before the backend
/// is published: every half-open reply entry's key has one as its source
/// port, so a packet from a port whose bit is clear has none (most
/// packets, from clients' ephemeral ports) and skips that lookup.
#[must_use]
pub const fn reply_port_bit(port: u16) -> (u32, u64) {
    ((port >> 6) as u32, 1 << (port & 63))
}

/// `ORIGINS` slots for a half-open table of `half_open_entries`: twice as
/// many, a power of two, so that few live connections share a slot.
#[must_use]
pub const fn origin_slots(half_open_entries: u32) -> u32 {
    let wanted = if half_open_entries > 1 << 30 { 1 << 31 } else { 2 * half_open_entries };
    wanted.next_power_of_two()
}

/// The datapath's load-time constant (a `.rodata` global): `ORIGINS`
/// slots minus one (they are a power of two). Set from the map actually
/// used, which an adopted pin may size differently from what was asked.
pub const ORIGINS_MASK_GLOBAL: &str = "ORIGINS_MASK";
/// Default Maglev table length: prime, above 100 x the backends of a
/// typical service, as Katran and Cilium size theirs.
pub const DEFAULT_MAGLEV_LEN: u32 = 16381;
/// The Maglev inner-map template length. Inner maps are created with
/// `BPF_F_INNER_MAP`, so each table may have its own length.
pub const MAGLEV_TEMPLATE_LEN: u32 = DEFAULT_MAGLEV_LEN;
/// Flags of every Maglev inner map: lengths may differ between services;
/// user space fills a new table through `mmap` before swapping it in.
pub const MAGLEV_INNER_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_F_INNER_MAP: u32 = 1 << 12;
/// A Maglev slot with no backend (every backend drained). Other slots hold
/// an index into the service's backend list (see [`BackendKey`]).
pub const NO_BACKEND: u32 = u32::MAX;

/// Magic in the XDP metadata of a packet XDP hands to the TC fallback.
pub const META_NEEDS_NEIGH: u32 = 0x4657_4e31; // "FWN1"

/// The datapath's load-time constant (a `.rodata` global) saying whether
/// XDP may tag packets with metadata: 1, or 0 where the kernel refuses
/// `bpf_xdp_adjust_meta` to XDP programs. With 0 the verifier prunes the
/// call, and the TC program beside XDP looks at everything XDP passed.
pub const XDP_METADATA_GLOBAL: &str = "XDP_METADATA";

/// Converts an address to wire order.
#[inline]
#[must_use]
pub const fn wire_addr(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// Converts a wire-order address back.
#[inline]
#[must_use]
pub const fn addr_from_wire(addr: u32) -> Ipv4Addr {
    let [a, b, c, d] = addr.to_ne_bytes();
    Ipv4Addr::new(a, b, c, d)
}

/// Converts a port to wire order.
#[inline]
#[must_use]
pub const fn wire_port(port: u16) -> u16 {
    port.to_be()
}

/// Converts a wire-order port back.
#[inline]
#[must_use]
pub const fn port_from_wire(port: u16) -> u16 {
    u16::from_be(port)
}

/// How a service translates its flows (`ServiceEntry::mode`).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatMode {
    /// Destination to the backend, source to the forwarder's SNAT address.
    Snat = 0,
    /// Destination to the backend only; the backend sees the client.
    Preserve = 1,
}

/// `SERVICES` key: what a packet is for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub vip: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// `SERVICES` value. Replaced whole, so a packet sees a service's table,
/// bank and mode from one moment.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Index into `SERVICE_TRAFFIC`; first part of its `BACKENDS` keys.
    pub id: u32,
    /// Key of its Maglev table in `MAGLEV` (tables are shared by services
    /// with the same nodes and weights).
    pub maglev_table: u32,
    /// Length of that table.
    pub maglev_len: u32,
    /// A [`NatMode`] as `u8`.
    pub mode: u8,
    /// Which of the service's two banks of `BACKENDS` entries is current.
    pub bank: u8,
    /// `SERVICE_*` flags.
    pub flags: u8,
    pub _pad: u8,
}

/// Service flag: only clients whose address matches one of the service's
/// prefixes in `SOURCES` may open connections.
pub const SERVICE_SOURCES_LIMITED: u8 = 1 << 0;

/// Capacity of `SOURCES`: allowed client prefixes, all services together.
pub const MAX_SOURCE_PREFIXES: u32 = 65536;

/// `SOURCES` key data: a service id and a client address (wire order).
/// The trie matches the service id's 32 bits first, then the prefix, so a
/// key's prefix length is 32 plus the prefix's own.
///
/// ```
/// use forwarder_common::maps::source_key_data;
/// assert_eq!(source_key_data(1, u32::from_ne_bytes([10, 0, 0, 7])), [0, 0, 0, 1, 10, 0, 0, 7]);
/// ```
#[inline(always)]
#[must_use]
pub const fn source_key_data(service_id: u32, addr: u32) -> [u8; 8] {
    let [i0, i1, i2, i3] = service_id.to_be_bytes();
    let [a0, a1, a2, a3] = addr.to_ne_bytes();
    [i0, i1, i2, i3, a0, a1, a2, a3]
}

/// `BACKENDS` key: a service's backend by its index in the service's list
/// (the value Maglev slots hold), in one of two banks. A changed backend
/// list is written to the other bank, then the service entry switches.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub service_id: u32,
    pub bank: u8,
    pub _pad: u8,
    pub index: u16,
}

/// `BACKENDS` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: u32,
    /// Source address of SNATed flows to this backend (snat mode): the
    /// configured SNAT address, or the forwarder's address towards it.
    pub snat_addr: u32,
    pub port: u16,
    pub _pad: u16,
    /// Index into `BACKEND_TRAFFIC`, stable while the backend stays.
    pub id: u32,
}

/// `FRAGMENTS` capacity: datagrams whose later fragments are awaited at
/// once. An LRU: a flood of first fragments displaces the oldest.
pub const MAX_FRAGMENTED_DATAGRAMS: u32 = 8192;
/// How long a first fragment's translation waits for the rest (Linux's
/// `ipfrag_time`): later ones are passed untouched.
pub const FRAGMENT_TIMEOUT_NS: u64 = 30_000_000_000;

/// `FRAGMENTS` key: what the fragments of one datagram share (RFC 791),
/// as they arrive, in wire order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: u32,
    pub dst: u32,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// `FRAGMENTS` value: the translation the first fragment got, for the
/// later ones (which carry no ports), and whose traffic they are.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentEntry {
    pub new_src: u32,
    pub new_dst: u32,
    /// The IPv4 header checksum delta: addresses and TTL.
    pub ip_csum_delta: u16,
    /// The flags of the connection's entry (`FLAG_REPLY`: the direction).
    pub flags: u8,
    pub _pad: u8,
    pub service_id: u32,
    pub backend_id: u32,
    /// The interface the first fragment came in on: later ones must too.
    pub ingress: u32,
    pub created_ns: u64,
}

const _: () = assert!(size_of::<FragmentKey>() == 12 && size_of::<FragmentEntry>() == 32);

/// `FLOWS` key: a packet's 5-tuple as it arrives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    // Two fields, not `[u8; 3]`: zeroing them is two stores, where the
    // array became a call to `memset` in the BPF program.
    pub _pad: u8,
    pub _pad2: u16,
}

impl FlowKey {
    #[inline(always)]
    #[must_use]
    pub const fn new(src: u32, dst: u32, sport: u16, dport: u16, proto: u8) -> Self {
        Self { src, dst, sport, dport, proto, _pad: 0, _pad2: 0 }
    }

    /// The tuple of a packet going the other way.
    #[inline(always)]
    #[must_use]
    pub const fn reversed(&self) -> Self {
        Self::new(self.dst, self.src, self.dport, self.sport, self.proto)
    }
}

/// `FLOWS` value: how to translate packets matching the key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    /// The 5-tuple written into matching packets.
    pub new_src: u32,
    pub new_dst: u32,
    pub new_sport: u16,
    pub new_dport: u16,
    /// Checksum deltas of the rewrite (see `csum`); the IPv4 one includes
    /// the TTL decrement.
    pub ip_csum_delta: u16,
    pub l4_csum_delta: u16,
    pub service_id: u32,
    pub backend_id: u32,
    /// `bpf_ktime_get_coarse_ns` when the connection was created.
    pub created_ns: u64,
    /// Last packet in this entry's direction (refreshed about once a second).
    pub last_seen_ns: u64,
    /// `conntrack::FLAG_*`.
    pub flags: u8,
    /// `conntrack::SEEN_*` for this entry's direction.
    pub seen: u8,
    /// The IPv4 total length of the packet `hop` was looked up for: the
    /// route lookup also checks the egress MTU, so a longer packet looks
    /// the route up again rather than trust the cache.
    pub hop_len: u16,
    /// The next hop of translated packets, from the last route lookup
    /// (redone when `last_seen_ns` is refreshed, about once a second);
    /// interface 0 until the first.
    pub hop: NextHop,
    /// In a reply entry with `conntrack::SEEN_CLIENT_FIN`, the TCP
    /// timestamp value (TSval) of the client's last FIN; 0 if none was
    /// found in it. A node that closed first holds the tuple in TIME_WAIT
    /// and takes a new SYN on it if its timestamp is newer (see
    /// `conntrack::node_takes_syn`). Kept with the node's direction so
    /// that the SNAT port search judges a port by the one entry it finds.
    /// In what was the struct's tail padding: the entry keeps its size; an
    /// older release's entries may hold anything here, and are not judged
    /// by it (that release never sets `SEEN_CLIENT_FIN`).
    pub fin_tsval: u32,
}

/// Where translated packets of a flow go: interface and Ethernet addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl FlowEntry {
    /// The entry that rewrites packets arriving as `from` so they leave as
    /// `to` (same protocol), with the checksum deltas of that rewrite.
    #[inline(always)]
    #[must_use]
    pub const fn rewriting(
        from: &FlowKey,
        to: &FlowKey,
        service_id: u32,
        backend_id: u32,
        flags: u8,
        now_ns: u64,
    ) -> Self {
        let addrs = csum::addrs_delta(from.src, from.dst, to.src, to.dst);
        let ports = csum::ports_delta(from.sport, from.dport, to.sport, to.dport);
        Self {
            new_src: to.src,
            new_dst: to.dst,
            new_sport: to.sport,
            new_dport: to.dport,
            ip_csum_delta: csum::combine(addrs, csum::TTL_DECREMENT_DELTA),
            l4_csum_delta: csum::combine(addrs, ports),
            service_id,
            backend_id,
            created_ns: now_ns,
            last_seen_ns: now_ns,
            flags,
            seen: 0,
            hop_len: 0,
            hop: NextHop { ifindex: 0, src_mac: [0; 6], dst_mac: [0; 6] },
            fin_tsval: 0,
        }
    }

    /// The key of the other direction's entry of the same connection.
    ///
    /// The other direction's packets carry this entry's translated tuple,
    /// swapped.
    #[inline(always)]
    #[must_use]
    pub const fn peer_key(&self, proto: u8) -> FlowKey {
        FlowKey::new(self.new_dst, self.new_src, self.new_dport, self.new_sport, proto)
    }

    /// Whether this entry is the other half of the connection whose entry
    /// is keyed `key`: it translates back to `key`, swapped. Entries are
    /// evicted one at a time, so the key a peer had may since hold another
    /// connection's entry, which fails this.
    #[inline(always)]
    #[must_use]
    pub const fn pairs_with(&self, key: &FlowKey) -> bool {
        self.new_src == key.dst
            && self.new_dst == key.src
            && self.new_sport == key.dport
            && self.new_dport == key.sport
    }
}

/// `SETTINGS` value (single entry): switches read by the datapath.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// `SETTING_*` bits.
    pub flags: u32,
}

/// The TC program beside XDP translates every packet itself, not only
/// those XDP hands over (for tests of the TC path).
pub const SETTING_TC_TRANSLATES_ALL: u32 = 1 << 0;
/// Packets the datapath does not translate may be routed by the kernel
/// to another interface (`--route-other`); without it they are dropped
/// (`drop_not_translated`): the forwarder forwards only what it translates.
pub const SETTING_ROUTE_OTHER: u32 = 1 << 1;

// The layouts have no implicit padding (every byte is a named field), so
// the kernel and user space agree byte for byte; checked when building,
// as Cilium's `build_bug_on` does for its maps.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<ServiceKey>() == 8);
    assert!(size_of::<ServiceEntry>() == 16);
    assert!(size_of::<BackendKey>() == 8);
    assert!(size_of::<Backend>() == 16);
    assert!(size_of::<FlowKey>() == 16);
    assert!(size_of::<NextHop>() == 16);
    assert!(size_of::<FlowEntry>() == 64);
    assert!(size_of::<Settings>() == 4);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY (each): `#[repr(C)]` plain-old-data with explicit padding
    // fields, so any bit pattern is valid and no byte is uninitialised.
    // SAFETY: `#[repr(C)]` plain data whose padding is explicit fields.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: `#[repr(C)]` plain data whose padding is explicit fields.
    unsafe impl aya::Pod for ServiceEntry {}
    // SAFETY: `#[repr(C)]` plain data whose padding is explicit fields.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: `#[repr(C)]` plain data whose padding is explicit fields.
    unsafe impl aya::Pod for BackendKey {}
    // SAFETY: `#[repr(C)]` plain data whose padding is explicit fields.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: `#[repr(C)]` plain data whose padding is explicit fields.
    unsafe impl aya::Pod for FlowEntry {}
    // SAFETY: `#[repr(C)]` plain data whose padding is explicit fields.
    unsafe impl aya::Pod for FragmentKey {}
    // SAFETY: `#[repr(C)]` plain data whose padding is explicit fields.
    unsafe impl aya::Pod for FragmentEntry {}
    // SAFETY: `#[repr(C)]` plain data whose padding is explicit fields.
    unsafe impl aya::Pod for Settings {}
    // SAFETY: `#[repr(C)]` plain data whose padding is explicit fields.
    unsafe impl aya::Pod for crate::origin::Origin {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banks_alternate() {
        assert_eq!((other_bank(0), other_bank(1)), (1, 0));
        assert_eq!(backend_entries(3), 6);
    }

    #[test]
    fn every_port_has_a_bit_of_its_own_in_the_reply_port_words() {
        let mut words = [0u64; REPLY_PORT_WORDS as usize];
        for port in 0..=u16::MAX {
            let (word, bit) = reply_port_bit(port);
            assert_eq!(bit.count_ones(), 1);
            assert_eq!(words[word as usize] & bit, 0, "port {port} shares a bit");
            words[word as usize] |= bit;
        }
        assert!(words.iter().all(|w| *w == u64::MAX));
    }

    #[test]
    fn wire_order_round_trips() {
        let addr = Ipv4Addr::new(203, 0, 113, 10);
        assert_eq!(addr_from_wire(wire_addr(addr)), addr);
        assert_eq!(wire_addr(addr).to_ne_bytes(), [203, 0, 113, 10]);
        assert_eq!(port_from_wire(wire_port(30080)), 30080);
        assert_eq!(wire_port(80).to_ne_bytes(), [0, 80]);
    }

    #[test]
    fn peer_key_swaps_the_translated_tuple() {
        let from = FlowKey::new(10, 20, 30, 40, PROTO_TCP);
        let to = FlowKey::new(1, 2, 3, 4, PROTO_TCP);
        let entry = FlowEntry::rewriting(&from, &to, 0, 0, 0, 0);
        assert_eq!(entry.peer_key(PROTO_TCP), FlowKey::new(2, 1, 4, 3, PROTO_TCP));
        assert_eq!(entry.peer_key(PROTO_TCP), to.reversed());
    }

    #[test]
    fn identity_rewrite_changes_only_the_ttl() {
        let key = FlowKey::new(10, 20, 30, 40, PROTO_UDP);
        let entry = FlowEntry::rewriting(&key, &key, 0, 0, 0, 0);
        assert_eq!(entry.l4_csum_delta, 0xffff, "one's-complement zero");
        assert_eq!(csum::apply(0x1234, entry.l4_csum_delta), 0x1234);
        assert_eq!(csum::combine(entry.ip_csum_delta, 0), csum::TTL_DECREMENT_DELTA);
    }
}
