use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;

use crate::kube::controller::{self, Options};

/// Run the controller: watch Services and Nodes through the API server
/// (in-cluster credentials, else KUBECONFIG or ~/.kube/config) and keep the
/// service file and the Services' `status.loadBalancer` in step.
///
/// The file is rewritten atomically only when its text changes, so a
/// `forwarder run` watching it reloads it. Only the holder of the Lease
/// writes; other replicas wait to take over. Problems become Kubernetes
/// Events on the Service and log lines.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The service file to keep up to date (created if missing).
    #[arg(long, value_name = "FILE", default_value = "/etc/forwarder/services.toml")]
    services: PathBuf,
    #[command(flatten)]
    settings: super::SettingsArgs,
    /// Namespace of the leader-election Lease.
    #[arg(long, value_name = "NAMESPACE", env = "POD_NAMESPACE", default_value = "kube-system")]
    lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, value_name = "NAME", default_value = "forwarder-lb-controller")]
    lease_name: String,
    /// This candidate's identity in the Lease [default: host name and
    /// process id].
    #[arg(long, value_name = "ID", env = "POD_NAME")]
    identity: Option<String>,
    /// How long a Lease lasts without renewal.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// Reconcile at least this often, changes or not.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    resync: Duration,
}

impl RunArgs {
    pub fn execute(self) -> anyhow::Result<()> {
        let Self { services, settings, lease_namespace, lease_name, identity, lease_duration, resync } = self;
        crate::logging::init();
        let identity = identity.unwrap_or_else(default_identity);
        let options = Options {
            services_path: services,
            overrides: settings.overrides(),
            lease_namespace,
            lease_name,
            identity,
            lease_duration,
            resync,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("tokio runtime")?;
        runtime.block_on(controller::run(options))?;
        Ok(())
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}
