use std::path::{Path, PathBuf};

use clap::Args;

use crate::{daemon, kernel::pins_remove_all, neigh};

/// Remove everything the forwarder left on this host: detach its programs,
/// delete its pinned maps (and so its connection table), withdraw announced
/// VIPs, remove managed neighbour entries and restore forwarding sysctls.
/// Refuses while a daemon is running.
#[derive(Debug, Args)]
pub struct DownArgs {
    /// The bpffs directory the daemon pinned its state in.
    #[arg(long, value_name = "DIR", default_value = crate::kernel::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

impl DownArgs {
    pub fn execute(self, run_dir: &Path) -> anyhow::Result<()> {
        let Self { pin_dir } = self;
        if daemon::daemon_running(run_dir) {
            anyhow::bail!(
                "a forwarder daemon is running: stop it first (SIGTERM), then run `forwarder down`"
            );
        }
        let record = daemon::load_record(run_dir)?.unwrap_or_default();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            for (iface, vip) in &record.announced {
                if let Ok(index) = crate::kernel::ifindex(iface) {
                    daemon::withdraw_vip(&handle, index, *vip).await;
                }
            }
            neigh::remove(&handle, &record.neighbours).await;
            anyhow::Ok(())
        })?;
        daemon::restore_forwarding(&record.forwarding);
        let mut removed = pins_remove_all(&pin_dir)?;
        if record.pin_dir != pin_dir && !record.pin_dir.as_os_str().is_empty() {
            removed.extend(pins_remove_all(&record.pin_dir)?);
        }
        daemon::remove_record(run_dir)?;
        println!(
            "removed {} pinned objects, {} VIPs, {} neighbour entries; restored {} sysctls",
            removed.len(),
            record.announced.len(),
            record.neighbours.len(),
            record.forwarding.len()
        );
        Ok(())
    }
}
