//! Loading the eBPF object, attaching it, and typed handles to its maps.
//!
//! With a [`Pins`] layout the maps are pinned in bpffs and a later load
//! adopts them, connection table included ([`attach`] does the same for the
//! XDP and TC links), so the daemon can restart or be upgraded while
//! connections continue.

mod attach;
pub(crate) mod batch;
mod features;
mod pins;

pub use attach::{AttachChoice, Attachment, Hook, Plan, XdpMode};
pub use features::Features;
pub use pins::{PinError, Pins, remove_all as pins_remove_all};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, LpmTrie, Map, MapData, PerCpuArray},
    programs::{SchedClassifier, Xdp},
};
use forwarder_common::{
    counters::Traffic,
    maps::{
        Backend, BackendKey, FlowEntry, FlowKey, ORIGINS_MASK_GLOBAL, REPLY_PORT_WORDS, ServiceEntry,
        ServiceKey, Settings, backend_entries, names, origin_slots, programs, reply_port_bit,
    },
    origin::Origin,
    snat::SnatPool,
};
use tracing::warn;

/// The datapath object, built by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forwarder"));

/// The benchmark's programs (`forwarder-ebpf/src/bench.rs`).
#[cfg(feature = "bench")]
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));

/// A BPF object holding the datapath's maps, and its entry points.
#[derive(Clone, Copy, Debug)]
pub struct Object {
    pub bytes: &'static [u8],
    pub xdp: &'static str,
    /// The TC programs beside XDP and instead of it.
    pub tc: Option<TcPrograms>,
}

/// The names of an object's two TC programs.
#[derive(Clone, Copy, Debug)]
pub struct TcPrograms {
    pub handed_over: &'static str,
    pub all: &'static str,
}

/// The forwarder's own object.
pub const DATAPATH: Object = Object {
    bytes: EBPF_OBJECT,
    xdp: programs::XDP,
    tc: Some(TcPrograms { handed_over: programs::TC, all: programs::TC_ALL }),
};

/// The benchmark's object, whose `bench_forward` runs the same XDP path
/// behind a frame rewrite (see `forwarder-ebpf/src/bench.rs`).
#[cfg(feature = "bench")]
pub const BENCH_FORWARD: Object = Object { bytes: BENCH_OBJECT, xdp: "bench_forward", tc: None };

/// Table sizes, fixed when the object is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub max_services: u32,
    pub max_backends: u32,
    /// Distinct Maglev tables (services on the same nodes share one).
    pub max_tables: u32,
    /// Flow-table entries; each connection takes two.
    pub max_flow_entries: u32,
    /// Half-open table entries: connections not answered yet, one each
    /// (`ORIGINS` gets twice as many slots).
    pub max_half_open_entries: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        use forwarder_common::maps::{
            DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOW_ENTRIES, DEFAULT_MAX_HALF_OPEN_ENTRIES,
            DEFAULT_MAX_SERVICES, DEFAULT_MAX_TABLES,
        };
        Self {
            max_services: DEFAULT_MAX_SERVICES,
            max_backends: DEFAULT_MAX_BACKENDS,
            max_tables: DEFAULT_MAX_TABLES,
            max_flow_entries: DEFAULT_MAX_FLOW_ENTRIES,
            max_half_open_entries: DEFAULT_MAX_HALF_OPEN_ENTRIES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("adding to the redirect map: {0}")]
    Egress(String),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("attaching to {iface}: {source}")]
    Attach {
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("interface {0:?} does not exist")]
    NoSuchInterface(String),
    #[error("drawing the SNAT port secret: {0}")]
    Secret(std::io::Error),
    #[error(transparent)]
    Pins(#[from] PinError),
    #[error("pinning the {kind} link of {iface}: {message}")]
    PinLink { kind: &'static str, iface: String, message: String },
}

/// Typed handles to every map.
pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceEntry>,
    pub backends: HashMap<MapData, BackendKey, Backend>,
    /// The hash of Maglev tables, kept untyped: updates go in batches.
    pub maglev: Map,
    /// Established connections.
    pub flows: HashMap<MapData, FlowKey, FlowEntry>,
    /// Connections not answered yet.
    pub half_open: HashMap<MapData, FlowKey, FlowEntry>,
    pub service_traffic: PerCpuArray<MapData, Traffic>,
    pub backend_traffic: PerCpuArray<MapData, Traffic>,
    pub reasons: PerCpuArray<MapData, u64>,
    pub egress: DevMapHash<MapData>,
    pub settings: Array<MapData, Settings>,
    /// Allowed client prefixes of services with `source_ranges`.
    pub sources: LpmTrie<MapData, [u8; 8], u8>,
    /// The host's SNAT port secret (see `forwarder_common::snat`).
    pub secret: Array<MapData, u64>,
    /// Half-open connections' client direction (see `forwarder_common::origin`).
    pub origins: Array<MapData, Origin>,
    /// The SNAT address pool (see `forwarder_common::snat::SnatPool`).
    pub snat_pool: Array<MapData, SnatPool>,
    /// Ports half-open reply entries may come from (see
    /// `forwarder_common::maps::reply_port_bit`).
    pub reply_ports: Array<MapData, u64>,
}

/// The loaded datapath. Dropping it detaches every program whose link is
/// not pinned; see [`Kernel::detach`] and [`Kernel::hand_over`].
pub struct Kernel {
    ebpf: Ebpf,
    object: Object,
    pub maps: Maps,
    pins: Option<Pins>,
    /// Whether the maps were adopted from an earlier daemon.
    adopted: bool,
    links: Vec<attach::Attached>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}

impl Kernel {
    /// Loads the datapath with the given capacities and `log_level` for
    /// its own (rare) log records. With `pins`, maps already pinned there
    /// are adopted and new ones pinned.
    pub fn load(
        capacity: Capacity,
        log_level: aya_log::Level,
        pins: Option<Pins>,
    ) -> Result<Self, KernelError> {
        Self::load_object(DATAPATH, capacity, log_level, pins)
    }

    /// Loads `object` (see [`Kernel::load`]).
    pub fn load_object(
        object: Object,
        capacity: Capacity,
        log_level: aya_log::Level,
        pins: Option<Pins>,
    ) -> Result<Self, KernelError> {
        Self::load_for(object, capacity, Features::probe(), log_level, pins)
    }

    /// Loads `object` for a kernel with `features` (tests force the
    /// fallbacks of kernels they do not run on).
    pub fn load_for(
        object: Object,
        capacity: Capacity,
        features: Features,
        log_level: aya_log::Level,
        pins: Option<Pins>,
    ) -> Result<Self, KernelError> {
        let Features { xdp_metadata } = features;
        let xdp_metadata = u8::from(xdp_metadata);
        let Capacity { max_services, max_backends, max_tables, max_flow_entries, max_half_open_entries } =
            capacity;
        let level = log_level as u8;
        let mut loader = EbpfLoader::new();
        let (adopted, pinned_origins) = match &pins {
            Some(pins) => {
                let adopted = pins.check_adoptable(capacity)?;
                for name in names::PINNED {
                    loader.map_pin_path(name, pins.map(name));
                }
                (adopted, pins.origin_slots()?)
            }
            None => (false, None),
        };
        let origin_slots = pinned_origins.unwrap_or(origin_slots(max_half_open_entries));
        let mut ebpf = loader
            .map_max_entries(names::SERVICES, max_services)
            .map_max_entries(names::MAGLEV, max_tables)
            .map_max_entries(names::SERVICE_TRAFFIC, max_services)
            .map_max_entries(names::BACKENDS, backend_entries(max_backends))
            .map_max_entries(names::BACKEND_TRAFFIC, max_backends)
            .map_max_entries(names::FIRST_HOPS, max_backends)
            .map_max_entries(names::FLOWS, max_flow_entries)
            .map_max_entries(names::HALF_OPEN, max_half_open_entries)
            .map_max_entries(names::ORIGINS, origin_slots)
            .override_global(ORIGINS_MASK_GLOBAL, &(origin_slots - 1), true)
            .override_global(aya_log::LEVEL, &level, false)
            .override_global(forwarder_common::maps::XDP_METADATA_GLOBAL, &xdp_metadata, true)
            .load(object.bytes)?;
        // Programs first: they hold their maps from then on, so the
        // user-space handles taken below may come and go.
        let tc = object.tc.map(|tc| [tc.handed_over, tc.all]);
        for name in std::iter::once(object.xdp).chain(tc.into_iter().flatten()) {
            let program = ebpf
                .program_mut(name)
                .ok_or(KernelError::Program { name, source: aya::programs::ProgramError::NotLoaded })?;
            let result = match program {
                aya::programs::Program::Xdp(p) => p.load(),
                aya::programs::Program::SchedClassifier(p) => p.load(),
                _ => unreachable!("the object defines XDP and TC programs only"),
            };
            result.map_err(|source| KernelError::Program { name, source })?;
        }
        warn_of_idle_half_open_shares(max_half_open_entries);
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => spawn_log_reader(logger),
            Err(err) => warn!("datapath log records unavailable: {err}"),
        }
        let maps = Maps {
            services: take(&mut ebpf, names::SERVICES)?,
            backends: take(&mut ebpf, names::BACKENDS)?,
            maglev: ebpf.take_map(names::MAGLEV).ok_or(KernelError::MissingMap(names::MAGLEV))?,
            flows: take(&mut ebpf, names::FLOWS)?,
            half_open: take(&mut ebpf, names::HALF_OPEN)?,
            service_traffic: take(&mut ebpf, names::SERVICE_TRAFFIC)?,
            backend_traffic: take(&mut ebpf, names::BACKEND_TRAFFIC)?,
            reasons: take(&mut ebpf, names::REASONS)?,
            egress: take(&mut ebpf, names::EGRESS)?,
            settings: take(&mut ebpf, names::SETTINGS)?,
            sources: take(&mut ebpf, names::SOURCES)?,
            secret: take(&mut ebpf, names::SECRET)?,
            origins: take(&mut ebpf, names::ORIGINS)?,
            snat_pool: take(&mut ebpf, names::SNAT_POOL)?,
            reply_ports: take(&mut ebpf, names::REPLY_PORTS)?,
        };
        let mut kernel = Self { ebpf, object, maps, pins, adopted, links: Vec::new() };
        kernel.keep_or_make_secret()?;
        if adopted {
            kernel.mark_adopted_reply_ports()?;
        }
        Ok(kernel)
    }

    /// The SNAT port secret: the pinned one when adopted, else a new
    /// random one, written before any program is attached.
    fn keep_or_make_secret(&mut self) -> Result<(), KernelError> {
        let map_error = |source| KernelError::Map { name: names::SECRET, source };
        if self.maps.secret.get(&0, 0).map_err(map_error)? != 0 {
            return Ok(());
        }
        let mut secret = 0u64;
        while secret == 0 {
            let mut bytes = [0u8; 8];
            // SAFETY: fills the 8 bytes of a local buffer; a short read
            // (never, for 8 bytes) leaves zeros and is retried.
            let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
            if filled == bytes.len() as isize {
                secret = u64::from_ne_bytes(bytes);
            } else if filled < 0 {
                return Err(KernelError::Secret(std::io::Error::last_os_error()));
            }
        }
        self.maps.secret.set(0, secret, 0).map_err(map_error)
    }

    /// Marks in `REPLY_PORTS`, before any program of this load is
    /// attached, the ports of the adopted half-open entries and of the
    /// backends the running datapath may still create entries for. The
    /// pinned map may be new (a release without it made the others), or
    /// miss ports (a release without it ran in between, or a start was
    /// killed while filling it): bits are added to what is there.
    fn mark_adopted_reply_ports(&mut self) -> Result<(), KernelError> {
        let map_error = |name| move |source| KernelError::Map { name, source };
        let mut ports = Vec::new();
        for key in self.maps.half_open.keys() {
            ports.push(key.map_err(map_error(names::HALF_OPEN))?.sport);
        }
        for backend in self.maps.backends.iter() {
            ports.push(backend.map_err(map_error(names::BACKENDS))?.1.port);
        }
        let mut words = vec![0u64; REPLY_PORT_WORDS as usize];
        for port in ports {
            let (word, bit) = reply_port_bit(port);
            words[word as usize] |= bit;
        }
        for (word, bits) in (0..).zip(words) {
            let marked = self.maps.reply_ports.get(&word, 0).map_err(map_error(names::REPLY_PORTS))?;
            if bits & !marked != 0 {
                self.maps.reply_ports.set(word, marked | bits, 0).map_err(map_error(names::REPLY_PORTS))?;
            }
        }
        Ok(())
    }

    /// Whether packets the datapath does not translate may be routed on by
    /// the kernel (`--route-other`); see `SETTING_ROUTE_OTHER`.
    pub fn route_other(&mut self, on: bool) -> Result<(), KernelError> {
        let flags = if on { forwarder_common::maps::SETTING_ROUTE_OTHER } else { 0 };
        self.maps
            .settings
            .set(0, Settings { flags }, 0)
            .map_err(|source| KernelError::Map { name: names::SETTINGS, source })
    }

    /// The SNAT port secret in use.
    pub fn snat_secret(&self) -> Result<u64, KernelError> {
        self.maps.secret.get(&0, 0).map_err(|source| KernelError::Map { name: names::SECRET, source })
    }

    /// The whole object, for the benchmark's extra maps and programs.
    #[cfg(feature = "bench")]
    pub fn object_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Whether the maps (and their connections) came from an earlier daemon.
    #[must_use]
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The XDP program, for `test_run` and attaching.
    pub fn xdp(&mut self) -> &mut Xdp {
        match self.ebpf.program_mut(self.object.xdp) {
            Some(aya::programs::Program::Xdp(p)) => p,
            _ => unreachable!("loaded in Kernel::load"),
        }
    }

    /// The TC program beside XDP, for `test_run` and attaching.
    pub fn tc(&mut self) -> &mut SchedClassifier {
        let name = self.object.tc.expect("attach and test only objects with TC programs").handed_over;
        self.classifier(name)
    }

    /// The TC program instead of XDP, for `test_run` and attaching.
    pub fn tc_all(&mut self) -> &mut SchedClassifier {
        let name = self.object.tc.expect("attach and test only objects with TC programs").all;
        self.classifier(name)
    }

    fn classifier(&mut self, name: &str) -> &mut SchedClassifier {
        match self.ebpf.program_mut(name) {
            Some(aya::programs::Program::SchedClassifier(p)) => p,
            _ => unreachable!("loaded in Kernel::load"),
        }
    }
}

/// The index of interface `name`.
pub fn ifindex(name: &str) -> Result<u32, KernelError> {
    nix::net::if_::if_nametoindex(name).map_err(|_| KernelError::NoSuchInterface(name.to_owned()))
}

/// Forwards the datapath's log records to `tracing` (through `log`).
fn spawn_log_reader(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return; // Not in the daemon (a test): records stay in the ring buffer.
    };
    handle.spawn(async move {
        // SAFETY: the logger owns its ring buffer's fd, which stays open and
        // unchanged until the logger (moved into the AsyncFd) is dropped.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        };
        let Ok(mut fd) = registered else { return };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else { return };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

/// `BPF_F_NO_COMMON_LRU` (linux/bpf.h): the half-open table's LRU lists
/// are per CPU (see `forwarder_ebpf::maps::HalfOpenTable`).
pub(crate) const NO_COMMON_LRU: u32 = 1 << 1;

/// The capacity the kernel gives a half-open table asked for `requested`
/// entries: a multiple of the possible CPUs, so that each has an equal
/// share (up, or down where up would overflow).
pub(crate) fn half_open_entries(requested: u32) -> u32 {
    let Ok(cpus) = aya::util::nr_cpus() else { return requested };
    shared_out(requested, cpus as u32)
}

/// `entries` rounded to a multiple of `cpus` as the kernel does for a map
/// with per-CPU LRU lists.
fn shared_out(entries: u32, cpus: u32) -> u32 {
    entries.div_ceil(cpus).checked_mul(cpus).unwrap_or(entries / cpus * cpus)
}

/// The half-open table is shared out evenly among all possible CPUs (see
/// `forwarder_ebpf::maps::HalfOpenTable`): where some cannot be online (a
/// VM sized for CPUs it may be given later), their shares go unused.
fn warn_of_idle_half_open_shares(entries: u32) {
    let (Ok(possible), Ok(online)) = (aya::util::nr_cpus(), aya::util::online_cpus()) else { return };
    let online = online.len();
    if possible > online {
        let usable = u64::from(entries) * online as u64 / possible as u64;
        warn!(
            "the half-open table is shared among {possible} possible CPUs, {online} online: \
             {usable} of its {entries} entries are usable (raise --max-half-open to make up)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::shared_out;

    #[test]
    fn per_cpu_lru_capacity_is_rounded_up_to_whole_shares_or_down_at_the_top() {
        assert_eq!(shared_out(65_536, 2), 65_536);
        assert_eq!(shared_out(65_536, 6), 65_538);
        assert_eq!(shared_out(1, 4), 4);
        assert_eq!(shared_out(u32::MAX, 2), u32::MAX - 1);
    }
}
