//! Every map the datapath uses. Capacities here are defaults; the daemon
//! sets the real ones at load time.

use crate::fwd::FirstHop;
use aya_ebpf::{
    Global,
    btf_maps::{Array, DevMapHash, HashMap, HashOfMaps, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use forwarder_common::{
    counters::{REASON_COUNT, Traffic},
    maps::{
        BPF_F_NO_PREALLOC, Backend, BackendKey, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOW_ENTRIES,
        DEFAULT_MAX_SERVICES, DEFAULT_MAX_TABLES, FlowEntry, FlowKey, FragmentEntry, FragmentKey,
        MAGLEV_INNER_FLAGS, MAGLEV_TEMPLATE_LEN, MAX_FRAGMENTED_DATAGRAMS, MAX_SOURCE_PREFIXES,
        REPLY_PORT_WORDS, ServiceEntry, ServiceKey, Settings, backend_entries, origin_slots,
    },
    origin::Origin,
    snat::SnatPool,
};

const MAX_SERVICES: usize = DEFAULT_MAX_SERVICES as usize;
const MAX_BACKENDS: usize = DEFAULT_MAX_BACKENDS as usize;
const MAX_TABLES: usize = DEFAULT_MAX_TABLES as usize;
const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;
const MAX_FLOWS: usize = DEFAULT_MAX_FLOW_ENTRIES as usize;
const MAX_INTERFACES: usize = 64;

/// (VIP, port, protocol) -> service.
#[btf_map]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry, MAX_SERVICES, NO_PREALLOC> = HashMap::new();

/// (service, bank, index) -> backend; `BACKEND_BANKS` banks per service.
#[btf_map]
pub static BACKENDS: HashMap<
    BackendKey,
    Backend,
    { backend_entries(DEFAULT_MAX_BACKENDS) as usize },
    NO_PREALLOC,
> = HashMap::new();

/// Table id -> Maglev table (slot -> index in the service's backend list).
/// User space builds each table in a new map before any service uses it.
#[btf_map]
pub static MAGLEV: HashOfMaps<
    u32,
    Array<u32, { MAGLEV_TEMPLATE_LEN as usize }, { MAGLEV_INNER_FLAGS as usize }>,
    MAX_TABLES,
> = HashOfMaps::new();

/// A table of connections, two entries each (see `forwarder_common::conntrack`).
pub type FlowTable = LruHashMap<FlowKey, FlowEntry, MAX_FLOWS>;

/// Established connections: only answered ones enter (see `conntrack`).
#[btf_map]
pub static FLOWS: FlowTable = LruHashMap::new();

/// Connections waiting for their answer, evicted among themselves: their
/// reply entries (see `forwarder_common::origin`).
#[btf_map]
pub static HALF_OPEN: HalfOpenTable = LruHashMap::new();

/// The half-open table's LRU lists are per CPU (`BPF_F_NO_COMMON_LRU`): each
/// CPU allocates from, and evicts within, its own share of the entries.
/// The kernel's common LRU moves every entry between a CPU's list and the
/// global one under a lock several times in its life, which measured 80-100
/// ns of a new connection's cost; and a flood arriving on one CPU then
/// evicts only that CPU's half-open connections. Lookups and deletions
/// still see the whole table. Not for the established table, whose
/// connections must not be evicted while another CPU's share has room.
pub type HalfOpenTable =
    LruHashMap<FlowKey, FlowEntry, MAX_FLOWS, { aya_ebpf::bindings::BPF_F_NO_COMMON_LRU as usize }>;

/// Ports that half-open reply entries may come from: a bit for every port
/// a backend has had (see `forwarder_common::maps::reply_port_bit`).
#[btf_map]
pub static REPLY_PORTS: Array<u64, { REPLY_PORT_WORDS as usize }> = Array::new();

const MAX_ORIGINS: usize = origin_slots(forwarder_common::maps::DEFAULT_MAX_HALF_OPEN_ENTRIES) as usize;

/// The original direction of half-open connections, by a keyed hash of
/// the client's tuple (see `forwarder_common::origin`).
#[btf_map]
pub static ORIGINS: Array<Origin, MAX_ORIGINS> = Array::new();

/// The SNAT address pool, when `snat_ip` names several (see
/// `forwarder_common::snat::SnatPool`).
#[btf_map]
pub static SNAT_POOL: Array<SnatPool, 1> = Array::new();

/// First fragments translated, for their datagrams' later fragments (see `frag`).
#[btf_map]
pub static FRAGMENTS: LruHashMap<FragmentKey, FragmentEntry, { MAX_FRAGMENTED_DATAGRAMS as usize }> =
    LruHashMap::new();

#[btf_map]
pub static SERVICE_TRAFFIC: PerCpuArray<Traffic, MAX_SERVICES> = PerCpuArray::new();

#[btf_map]
pub static BACKEND_TRAFFIC: PerCpuArray<Traffic, MAX_BACKENDS> = PerCpuArray::new();

/// Backend id -> the next hop this CPU's last new connection to it found
/// (see `fwd::first_hop`).
#[btf_map]
pub static FIRST_HOPS: PerCpuArray<FirstHop, MAX_BACKENDS> = PerCpuArray::new();

/// Indexed by `forwarder_common::counters::Reason`.
#[btf_map]
pub static REASONS: PerCpuArray<u64, { REASON_COUNT as usize }> = PerCpuArray::new();

/// ifindex -> ifindex, for XDP_REDIRECT.
#[btf_map]
pub static EGRESS: DevMapHash<MAX_INTERFACES> = DevMapHash::new();

#[btf_map]
pub static SETTINGS: Array<Settings, 1> = Array::new();

/// The host's secret in the hash that picks SNAT ports (0 until the
/// daemon has written one; see `forwarder_common::snat`).
#[btf_map]
pub static SECRET: Array<u64, 1> = Array::new();

/// (service id, client prefix) -> 1: who may open connections to services
/// with `SERVICE_SOURCES_LIMITED` (see `maps::source_key_data`).
#[btf_map]
pub static SOURCES: LpmTrie<[u8; 8], u8, { MAX_SOURCE_PREFIXES as usize }> = LpmTrie::new();

/// Whether XDP may tag the packets it hands to TC with metadata (see
/// `forwarder_common::maps::XDP_METADATA_GLOBAL`); set by the loader.
#[unsafe(no_mangle)]
pub static XDP_METADATA: Global<u8> = Global::new(1);

/// Per-CPU room for connection entries, which the 512-byte stack has
/// none to spare for: the entry a packet is translated with
/// ([`SCRATCH_PACKET`]) and one being built ([`SCRATCH_BUILD`]). A CPU
/// runs one program at a time, start to end.
#[btf_map]
pub static SCRATCH: PerCpuArray<FlowEntry, 2> = PerCpuArray::new();
pub const SCRATCH_PACKET: u32 = 0;
pub const SCRATCH_BUILD: u32 = 1;

/// The start of the TCP options of the SYN or FIN this CPU is processing,
/// and its timestamp value (see `tcp_ts`).
#[btf_map]
pub static TCP_OPTIONS: PerCpuArray<crate::tcp_ts::Options, 1> = PerCpuArray::new();

/// `ORIGINS` slots minus one; set by the loader from the map it uses.
#[unsafe(no_mangle)]
pub static ORIGINS_MASK: Global<u32> = Global::new(MAX_ORIGINS as u32 - 1);
