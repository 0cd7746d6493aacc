//! IPv4 forwarding on the attached interfaces, which `bpf_fib_lookup`
//! requires: switched on where it was off, and back off when the daemon
//! stops (not when it hands over to a successor).

use std::path::{Path, PathBuf};

use tracing::warn;

use super::Owned;

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
}

/// The `forwarding` sysctls this daemon (or its predecessor) switched on.
pub struct Sysctls {
    owned: Owned<PathBuf>,
}

impl Sysctls {
    /// Owning the sysctls a predecessor switched on.
    #[must_use]
    pub fn new(inherited: Vec<PathBuf>) -> Self {
        Self { owned: Owned::inheriting(inherited) }
    }

    /// Switches forwarding on for `ifaces` where it is off.
    pub fn enable_forwarding(&mut self, ifaces: &[String]) -> Result<(), SysctlError> {
        for iface in ifaces {
            let path = Path::new("/proc/sys/net/ipv4/conf").join(iface).join("forwarding");
            let io = |error| SysctlError::Io { path: path.clone(), error };
            let current = std::fs::read_to_string(&path).map_err(io)?;
            if current.trim() == "0" {
                std::fs::write(&path, "1").map_err(io)?;
                warn!(%iface, "enabled IPv4 forwarding (the XDP route lookup needs it); restored on stop");
                self.owned.add(path);
            }
        }
        Ok(())
    }

    #[must_use]
    pub fn owned(&self) -> Vec<PathBuf> {
        self.owned.all()
    }

    /// Switches back off everything owned.
    pub fn undo(&mut self) {
        switch_off(&self.owned.take(false));
    }

    /// Switches back off what this process switched on.
    pub fn undo_own(&mut self) {
        switch_off(&self.owned.take(true));
    }
}

fn switch_off(paths: &[PathBuf]) {
    for path in paths {
        if let Err(err) = std::fs::write(path, "0") {
            warn!("restoring {}: {err}", path.display());
        }
    }
}
