//! IPv4 forwarding on the attached interfaces, which `bpf_fib_lookup`
//! requires: switched on where it was off, and back off when the daemon
//! stops (not when it hands over to a successor).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tracing::warn;

/// The sysctls this daemon (or its predecessor) switched on.
pub struct Forwarding {
    switched_on: Vec<PathBuf>,
}

impl Forwarding {
    /// Switches forwarding on for `ifaces`; `inherited` are the ones a
    /// predecessor switched on (still to be switched off at the end).
    pub fn enable(ifaces: &[String], inherited: Vec<PathBuf>) -> anyhow::Result<Self> {
        let mut guard = Self { switched_on: inherited };
        for iface in ifaces {
            let path = Path::new("/proc/sys/net/ipv4/conf").join(iface).join("forwarding");
            let current =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            if current.trim() == "0" {
                std::fs::write(&path, "1")
                    .with_context(|| format!("enabling forwarding: {}", path.display()))?;
                warn!(%iface, "enabled IPv4 forwarding (the XDP route lookup needs it); restored on stop");
                guard.switched_on.push(path);
            }
        }
        Ok(guard)
    }

    #[must_use]
    pub fn switched_on(&self) -> &[PathBuf] {
        &self.switched_on
    }

    /// Switches back off what was switched on.
    pub fn restore(mut self) {
        restore(&std::mem::take(&mut self.switched_on));
    }

    /// Leaves forwarding on, for a successor daemon.
    pub fn keep(mut self) {
        self.switched_on.clear();
    }
}

impl Drop for Forwarding {
    /// A daemon that fails while starting puts things back.
    fn drop(&mut self) {
        restore(&std::mem::take(&mut self.switched_on));
    }
}

pub fn restore(paths: &[PathBuf]) {
    for path in paths {
        if let Err(err) = std::fs::write(path, "0") {
            warn!("restoring {}: {err}", path.display());
        }
    }
}
