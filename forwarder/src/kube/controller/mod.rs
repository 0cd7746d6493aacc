//! `forwarder kube run`: watches Services and Nodes, and while it holds the
//! Lease, reconciles (see [`reconcile`]) after every change, and at least
//! every `resync` in case a write was lost.
//!
//! The watches (kube-rs reflectors: list, then watch from the list's
//! resourceVersion, relisting after `410 Gone`, with backoff on errors)
//! run whether leading or not, so a new leader starts from a warm cache.

use std::{path::PathBuf, sync::Arc, time::Duration};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{Node, Service as KubeService};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, reflector, watcher},
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
    time::Instant,
};

use super::settings::Overrides;

pub mod events;
pub mod leader;
pub mod reconcile;
pub mod status;

/// Everything `forwarder kube run` is told.
#[derive(Clone, Debug)]
pub struct Options {
    pub services_path: PathBuf,
    pub overrides: Overrides,
    pub lease_namespace: String,
    pub lease_name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub resync: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// kube's message already holds its causes: not a `source`.
    #[error("Kubernetes client: {0}")]
    Client(kube::Error),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("a watch ended")]
    WatchEnded,
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(options: Options) -> Result<(), ControllerError> {
    let client = Client::try_default().await.map_err(ControllerError::Client)?;
    let changed = Arc::new(Notify::new());
    let (services, services_writer) = reflector::store::<KubeService>();
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let watch_services = watch(Api::<KubeService>::all(client.clone()), services_writer, changed.clone());
    let watch_nodes = watch(Api::<Node>::all(client.clone()), nodes_writer, changed.clone());
    let watches = tokio::spawn(async move { tokio::join!(watch_services, watch_nodes) });
    let mut terminate = signal(SignalKind::terminate()).map_err(ControllerError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ControllerError::Signal)?;
    tokio::select! {
        _ = async { tokio::join!(services.wait_until_ready(), nodes.wait_until_ready()) } => {}
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    }
    tracing::info!("watching Services and Nodes");
    let Options { services_path, overrides, lease_namespace, lease_name, identity, lease_duration, resync } =
        options;
    let lock =
        leader::LeaseLock::new(client.clone(), &lease_namespace, &lease_name, &identity, lease_duration);
    let events = events::Events::new(client.clone(), &identity);
    let mut ctx = reconcile::Context { client, services, nodes, services_path, overrides, events };
    let mut renewed: Option<Instant> = None;
    let mut last_reconcile: Option<Instant> = None;
    let mut dirty = true;
    loop {
        if renewed.is_none_or(|at| at.elapsed() >= lock.renew_interval()) {
            renewed = match lock.try_acquire_or_renew().await {
                Ok(true) => {
                    if renewed.is_none() {
                        tracing::info!(identity, lease = lease_name, "leading");
                        dirty = true;
                    }
                    Some(Instant::now())
                }
                Ok(false) => {
                    if renewed.is_some() {
                        tracing::warn!(lease = lease_name, "lost the lease; following");
                    }
                    None
                }
                Err(error) => {
                    tracing::warn!(%error, "lease not renewed; following until it is");
                    None
                }
            };
        }
        // Write only well inside the lease: a renewal older than the
        // duration may already be another candidate's.
        let leading = renewed.is_some_and(|at| at.elapsed() < lease_duration * 2 / 3);
        dirty |= last_reconcile.is_none_or(|at| at.elapsed() >= resync);
        if leading && dirty {
            // A failed reconcile is tried again at the next turn (within
            // a renewal interval).
            dirty = match reconcile::reconcile(&mut ctx).await {
                Ok(outcome) => {
                    tracing::debug!(?outcome, "reconciled");
                    false
                }
                Err(error) => {
                    tracing::error!("reconcile failed: {error}");
                    true
                }
            };
            last_reconcile = Some(Instant::now());
        }
        tokio::select! {
            () = changed.notified() => {
                // Let a burst of changes (a node list, a rollout) settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
                dirty = true;
            }
            () = tokio::time::sleep(lock.renew_interval()) => {}
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
        if watches.is_finished() {
            return Err(ControllerError::WatchEnded);
        }
    }
    if renewed.is_some()
        && let Err(error) = lock.release().await
    {
        tracing::warn!(%error, "lease not released; it expires by itself");
    }
    Ok(())
}

/// Keeps `writer`'s store in step with the API server, waking the loop on
/// every change.
async fn watch<K>(api: Api<K>, writer: reflector::store::Writer<K>, changed: Arc<Notify>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let stream = watcher(api, watcher::Config::default()).default_backoff().reflect(writer);
    futures_util::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(error) => tracing::warn!(%error, "watch failed; retrying"),
        }
    }
}
