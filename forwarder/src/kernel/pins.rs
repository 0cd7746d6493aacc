//! Where the datapath's state lives in bpffs: `PIN_DIR/vN/maps/NAME` and
//! `PIN_DIR/vN/links/{xdp,tc}-IFACE`, N being the map layout version.

use std::path::{Path, PathBuf};

use aya::maps::MapData;
use forwarder_common::{
    counters::Traffic,
    maps::{
        Backend, BackendKey, FlowEntry, FlowKey, LAYOUT_VERSION, REPLY_PORT_WORDS, ServiceEntry, ServiceKey,
        Settings, backend_entries, names, origin_slots,
    },
    origin::Origin,
    snat::SnatPool,
};
use tracing::warn;

use super::Capacity;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    #[error(
        "{} holds datapath state of another version (layout v{found}, this is v{LAYOUT_VERSION}): \
         stop that daemon and run `forwarder down` first",
        path.display()
    )]
    OtherVersion { path: PathBuf, found: String },
    #[error("pinned map {}: {message}; run `forwarder down` to start afresh", path.display())]
    Incompatible { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PinError + '_ {
    move |error| PinError::Io { path: path.to_owned(), error }
}

/// The pin layout of this build under a pin directory.
#[derive(Clone, Debug)]
pub struct Pins {
    root: PathBuf,
}

impl Pins {
    /// The layout under `pin_dir` (a directory on a bpffs, see
    /// [`crate::host::PinDir`]); refuses state left by another layout
    /// version.
    pub fn open(pin_dir: &Path) -> Result<Self, PinError> {
        for entry in std::fs::read_dir(pin_dir).map_err(io(pin_dir))? {
            let entry = entry.map_err(io(pin_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(found) = name.strip_prefix('v')
                && found != LAYOUT_VERSION.to_string()
            {
                return Err(PinError::OtherVersion { path: entry.path(), found: found.to_owned() });
            }
        }
        let root = pin_dir.join(format!("v{LAYOUT_VERSION}"));
        for dir in [root.join("maps"), root.join("links")] {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(Self { root })
    }

    #[must_use]
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join("maps").join(name)
    }

    #[must_use]
    pub fn link(&self, kind: &str, iface: &str) -> PathBuf {
        self.root.join("links").join(format!("{kind}-{iface}"))
    }

    /// Interfaces with a pinned link of `kind`.
    pub fn linked_interfaces(&self, kind: &str) -> Result<Vec<String>, PinError> {
        let dir = self.root.join("links");
        let mut ifaces = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
            let name = entry.map_err(io(&dir))?.file_name().to_string_lossy().into_owned();
            if let Some(iface) = name.strip_prefix(kind).and_then(|rest| rest.strip_prefix('-')) {
                ifaces.push(iface.to_owned());
            }
        }
        Ok(ifaces)
    }

    /// Whether there are maps to adopt, after checking each has the layout
    /// this build expects. A capacity other than the one asked for is kept
    /// (maps cannot be resized) with a warning.
    pub fn check_adoptable(&self, capacity: Capacity) -> Result<bool, PinError> {
        if !self.map(names::FLOWS).exists() {
            return Ok(false);
        }
        let expected: [(&str, usize, usize, Option<u32>); 7] = [
            (
                names::SERVICES,
                size_of::<ServiceKey>(),
                size_of::<ServiceEntry>(),
                Some(capacity.max_services),
            ),
            (
                names::BACKENDS,
                size_of::<BackendKey>(),
                size_of::<Backend>(),
                Some(backend_entries(capacity.max_backends)),
            ),
            (names::FLOWS, size_of::<FlowKey>(), size_of::<FlowEntry>(), Some(capacity.max_flow_entries)),
            (names::SERVICE_TRAFFIC, 4, size_of::<Traffic>(), None),
            (names::BACKEND_TRAFFIC, 4, size_of::<Traffic>(), None),
            (names::REASONS, 4, 8, None),
            (names::SETTINGS, 4, size_of::<Settings>(), None),
        ];
        // Pinned by a daemon that knows them; an older one's pins lack them.
        let later = [
            (
                names::HALF_OPEN,
                size_of::<FlowKey>(),
                size_of::<FlowEntry>(),
                Some(super::half_open_entries(capacity.max_half_open_entries)),
            ),
            (names::ORIGINS, 4, size_of::<Origin>(), Some(origin_slots(capacity.max_half_open_entries))),
            (names::SNAT_POOL, 4, size_of::<SnatPool>(), None),
            (names::REPLY_PORTS, 4, 8, Some(REPLY_PORT_WORDS)),
        ];
        let later = later.into_iter().filter(|(name, ..)| self.map(name).exists());
        for (name, key_size, value_size, max_entries) in expected.into_iter().chain(later) {
            let path = self.map(name);
            let info = MapData::from_pin(&path)
                .and_then(|map| map.info())
                .map_err(|err| PinError::Incompatible { path: path.clone(), message: err.to_string() })?;
            if (info.key_size() as usize, info.value_size() as usize) != (key_size, value_size) {
                return Err(PinError::Incompatible {
                    path,
                    message: format!(
                        "key/value sizes {}/{}, expected {key_size}/{value_size}",
                        info.key_size(),
                        info.value_size()
                    ),
                });
            }
            if let Some(wanted) = max_entries
                && info.max_entries() != wanted
            {
                warn!(map = name, pinned = info.max_entries(), wanted, "keeping the pinned map's capacity");
            }
            if name == names::HALF_OPEN && info.map_flags() & super::NO_COMMON_LRU == 0 {
                warn!(
                    "the pinned half-open table keeps the shared LRU list of the release that made it \
                     (new connections cost more) until `forwarder down` removes it"
                );
            }
        }
        Ok(true)
    }

    /// The slots of the pinned `ORIGINS` map, if there is one: a restarted
    /// datapath must index the map it adopts, whatever was asked for.
    pub fn origin_slots(&self) -> Result<Option<u32>, PinError> {
        let path = self.map(names::ORIGINS);
        if !path.exists() {
            return Ok(None);
        }
        let incompatible = |message: String| PinError::Incompatible { path: path.clone(), message };
        let slots = MapData::from_pin(&path)
            .and_then(|map| map.info())
            .map_err(|err| incompatible(err.to_string()))?
            .max_entries();
        if !slots.is_power_of_two() {
            return Err(incompatible(format!("{slots} slots, not a power of two")));
        }
        Ok(Some(slots))
    }
}

/// Removes every pin below `pin_dir`, of any layout version: links first
/// (which detaches their programs), then maps. Returns what was removed.
pub fn remove_all(pin_dir: &Path) -> Result<Vec<PathBuf>, PinError> {
    let mut removed = Vec::new();
    if !pin_dir.exists() {
        return Ok(removed);
    }
    for version in std::fs::read_dir(pin_dir).map_err(io(pin_dir))? {
        let version = version.map_err(io(pin_dir))?.path();
        for sub in ["links", "maps"] {
            let dir = version.join(sub);
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries {
                let path = entry.map_err(io(&dir))?.path();
                std::fs::remove_file(&path).map_err(io(&path))?;
                removed.push(path);
            }
            std::fs::remove_dir(&dir).map_err(io(&dir))?;
        }
        std::fs::remove_dir(&version).map_err(io(&version))?;
    }
    Ok(removed)
}
