//! Loading the eBPF object, attaching it, and typed handles to its maps.

use std::ffi::CString;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, DevMapHash, HashMap, HashOfMaps, MapData, PerCpuArray},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode},
};
use forwarder_common::{
    counters::Traffic,
    maps::{Backend, FlowEntry, FlowKey, ServiceEntry, ServiceKey, Settings, names, programs},
};
use tracing::{info, warn};

/// The datapath object, built by `build.rs`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forwarder"));

/// Table sizes, fixed when the object is loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub max_services: u32,
    pub max_backends: u32,
    /// Flow-table entries; each connection takes two.
    pub max_flow_entries: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        use forwarder_common::maps::{DEFAULT_MAX_BACKENDS, DEFAULT_MAX_FLOW_ENTRIES, DEFAULT_MAX_SERVICES};
        Self {
            max_services: DEFAULT_MAX_SERVICES,
            max_backends: DEFAULT_MAX_BACKENDS,
            max_flow_entries: DEFAULT_MAX_FLOW_ENTRIES,
        }
    }
}

/// How XDP is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// The driver's XDP hook; falls back to generic (skb) XDP, with a
    /// warning, where the driver has none.
    Native,
    /// Generic XDP, for any interface (slower).
    Skb,
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
}

/// Typed handles to every map.
pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, ServiceEntry>,
    pub backends: Array<MapData, Backend>,
    pub maglev: HashOfMaps<MapData, u32>,
    pub flows: HashMap<MapData, FlowKey, FlowEntry>,
    pub service_traffic: PerCpuArray<MapData, Traffic>,
    pub backend_traffic: PerCpuArray<MapData, Traffic>,
    pub reasons: PerCpuArray<MapData, u64>,
    pub egress: DevMapHash<MapData>,
    pub settings: Array<MapData, Settings>,
}

/// The loaded datapath. Dropping it detaches every program.
pub struct Kernel {
    ebpf: Ebpf,
    pub maps: Maps,
    /// Interfaces XDP is attached to, with the mode it got.
    attached: Vec<(String, AttachMode)>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}

impl Kernel {
    /// Loads the object with the given capacities and `log_level` for the
    /// datapath's own (rare) log records.
    pub fn load(capacity: Capacity, log_level: aya_log::Level) -> Result<Self, KernelError> {
        let Capacity { max_services, max_backends, max_flow_entries } = capacity;
        let level = log_level as u8;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::SERVICES, max_services)
            .map_max_entries(names::MAGLEV, max_services)
            .map_max_entries(names::SERVICE_TRAFFIC, max_services)
            .map_max_entries(names::BACKENDS, max_backends)
            .map_max_entries(names::BACKEND_TRAFFIC, max_backends)
            .map_max_entries(names::FLOWS, max_flow_entries)
            .override_global(aya_log::LEVEL, &level, true)
            .load(EBPF_OBJECT)?;
        // Programs first: they hold their maps from then on, so the
        // user-space handles taken below may come and go.
        for name in [programs::XDP, programs::TC] {
            let program = ebpf
                .program_mut(name)
                .ok_or(KernelError::Program { name, source: aya::programs::ProgramError::NotLoaded })?;
            let result = match program {
                aya::programs::Program::Xdp(p) => p.load(),
                aya::programs::Program::SchedClassifier(p) => p.load(),
                _ => unreachable!("the object defines one XDP and one TC program"),
            };
            result.map_err(|source| KernelError::Program { name, source })?;
        }
        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => spawn_log_reader(logger),
            Err(err) => warn!("datapath log records unavailable: {err}"),
        }
        let maps = Maps {
            services: take(&mut ebpf, names::SERVICES)?,
            backends: take(&mut ebpf, names::BACKENDS)?,
            maglev: take(&mut ebpf, names::MAGLEV)?,
            flows: take(&mut ebpf, names::FLOWS)?,
            service_traffic: take(&mut ebpf, names::SERVICE_TRAFFIC)?,
            backend_traffic: take(&mut ebpf, names::BACKEND_TRAFFIC)?,
            reasons: take(&mut ebpf, names::REASONS)?,
            egress: take(&mut ebpf, names::EGRESS)?,
            settings: take(&mut ebpf, names::SETTINGS)?,
        };
        Ok(Self { ebpf, maps, attached: Vec::new() })
    }

    /// The XDP program, for `test_run` and attaching.
    pub fn xdp(&mut self) -> &mut Xdp {
        match self.ebpf.program_mut(programs::XDP) {
            Some(aya::programs::Program::Xdp(p)) => p,
            _ => unreachable!("loaded in Kernel::load"),
        }
    }

    /// The TC fallback program, for `test_run` and attaching.
    pub fn tc(&mut self) -> &mut SchedClassifier {
        match self.ebpf.program_mut(programs::TC) {
            Some(aya::programs::Program::SchedClassifier(p)) => p,
            _ => unreachable!("loaded in Kernel::load"),
        }
    }

    /// Attaches XDP (and the TC fallback on clsact ingress) to `iface` and
    /// lists it as a redirect target.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<AttachMode, KernelError> {
        let ifindex = ifindex(iface)?;
        let attach_err = |source| KernelError::Attach { iface: iface.to_owned(), source };
        let got = match mode {
            AttachMode::Skb => {
                self.xdp().attach_to_if_index(ifindex, XdpMode::Skb).map_err(attach_err)?;
                AttachMode::Skb
            }
            AttachMode::Native => match self.xdp().attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(_) => AttachMode::Native,
                Err(err) => {
                    warn!(%iface, "native XDP unavailable ({err}); falling back to generic XDP");
                    self.xdp().attach_to_if_index(ifindex, XdpMode::Skb).map_err(attach_err)?;
                    AttachMode::Skb
                }
            },
        };
        self.tc().attach(iface, TcAttachType::Ingress).map_err(attach_err)?;
        self.maps
            .egress
            .insert(ifindex, ifindex, None, 0)
            .map_err(|err| KernelError::Egress(err.to_string()))?;
        info!(%iface, ifindex, mode = ?got, "attached");
        self.attached.push((iface.to_owned(), got));
        Ok(got)
    }

    /// Interfaces attached so far.
    #[must_use]
    pub fn attached(&self) -> &[(String, AttachMode)] {
        &self.attached
    }
}

/// The index of interface `name`.
pub fn ifindex(name: &str) -> Result<u32, KernelError> {
    let c_name = CString::new(name).map_err(|_| KernelError::NoSuchInterface(name.to_owned()))?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(KernelError::NoSuchInterface(name.to_owned())),
        index => Ok(index),
    }
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
