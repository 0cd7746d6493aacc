use std::path::{Path, PathBuf};

use clap::Args;

use crate::{
    host::{Neighbours, PinDir, Record, Sysctls, UnreachableVips, Vips, daemon_running, places},
    kernel::{self, pins_remove_all},
};

/// Remove everything the forwarder left on this host: detach its programs,
/// delete its pinned maps (and so its connection table), withdraw announced
/// VIPs and the VIPs' unreachable routes, remove managed neighbour entries
/// and restore forwarding sysctls.
/// Refuses while a daemon is running.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// The bpffs directory the daemon pinned its state in (default: as for
    /// `run`).
    #[arg(long, value_name = "DIR")]
    pin_dir: Option<PathBuf>,
}

impl DownArgs {
    pub fn execute(self, run_dir: &Path) -> anyhow::Result<()> {
        let Self { pin_dir } = self;
        if daemon_running(run_dir) {
            anyhow::bail!(
                "a forwarder daemon is running: stop it first (SIGTERM), then run `forwarder down`"
            );
        }
        let record = Record::load(run_dir)?.unwrap_or_default();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            let mut ifaces: Vec<&String> = record.announced.iter().map(|(iface, _)| iface).collect();
            ifaces.sort();
            ifaces.dedup();
            for iface in ifaces {
                if let Ok(index) = kernel::ifindex(iface) {
                    let vips = record.announced.iter().filter(|(i, _)| i == iface).map(|(_, vip)| *vip);
                    Vips::new(handle.clone(), iface.clone(), index, vips.collect::<Vec<_>>()).undo().await;
                }
            }
            Neighbours::new(handle.clone(), record.neighbours.clone()).undo().await;
            UnreachableVips::new(handle, record.unreachable.clone()).undo().await;
            anyhow::Ok(())
        })?;
        Sysctls::new(record.forwarding.clone()).undo();
        // The default directory may be reachable only through a handle
        // into another mount namespace: `shown` is what the record names.
        let pin_dir = match pin_dir {
            Some(dir) => Some(PinDir::at_existing(&dir)),
            None => PinDir::find_default(&places::state_name()),
        };
        let mut removed = match &pin_dir {
            Some(dir) => pins_remove_all(&dir.path)?,
            None => Vec::new(),
        };
        let recorded = &record.pin_dir;
        if pin_dir.as_ref().is_none_or(|dir| &dir.shown != recorded) && !recorded.as_os_str().is_empty() {
            removed.extend(pins_remove_all(recorded)?);
        }
        Record::remove(run_dir)?;
        println!(
            "removed {} pinned objects, {} VIPs, {} unreachable routes, {} neighbour entries; restored {} sysctls",
            removed.len(),
            record.announced.len(),
            record.unreachable.len(),
            record.neighbours.len(),
            record.forwarding.len()
        );
        Ok(())
    }
}
