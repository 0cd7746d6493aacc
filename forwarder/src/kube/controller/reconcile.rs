//! One reconcile: the cluster as the watches last saw it, translated into
//! the service file (written only when its text changes, atomically, so
//! the daemon's file watcher reloads it) and into Service statuses.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Node, Service as KubeService};
use kube::{Client, runtime::reflector::Store};

use super::{events::Events, status};
use crate::{
    config::{ConfigError, ServiceFile},
    files::write_atomically,
    kube::{
        ServiceKey,
        document::{self, DocumentError},
        input::Cluster,
        settings::{Overrides, SettingsError},
        translate,
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    /// The file on disk is invalid: nothing is written over it.
    #[error(transparent)]
    ServiceFile(#[from] ConfigError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Render(#[from] DocumentError),
    #[error("writing {}: {error}", path.display())]
    Write { path: PathBuf, error: std::io::Error },
    #[error("status of Service {key}: {error}")]
    Status { key: ServiceKey, error: kube::Error },
}

/// What stays from one reconcile to the next.
pub struct Context {
    pub client: Client,
    pub services: Store<KubeService>,
    pub nodes: Store<Node>,
    pub services_path: PathBuf,
    pub overrides: Overrides,
    pub events: Events,
}

/// What a reconcile did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub file_written: bool,
    pub generated: usize,
    pub statuses_written: usize,
    pub problems: usize,
}

pub async fn reconcile(ctx: &mut Context) -> Result<Outcome, ReconcileError> {
    let cluster = Cluster {
        services: ctx.services.state().iter().map(|s| (**s).clone()).collect(),
        nodes: ctx.nodes.state().iter().map(|n| (**n).clone()).collect(),
    };
    let base = read(&ctx.services_path)?;
    let current = ServiceFile::parse(&ctx.services_path, &base)?;
    let settings = ctx.overrides.apply(current.kube.as_ref())?;
    let translation = translate::translate(&cluster, &settings, &current.services);
    for problem in &translation.problems {
        tracing::warn!("{problem}");
    }
    ctx.events.problems(&cluster, &translation.problems).await;
    let (text, _) = document::render(&base, Some(&settings), &translation.services)?;
    let file_written = text != base;
    if file_written {
        write_atomically(&ctx.services_path, text.as_bytes())
            .map_err(|error| ReconcileError::Write { path: ctx.services_path.clone(), error })?;
        tracing::info!(path = %ctx.services_path.display(), services = translation.services.len(), "service file written");
    }
    // Status after the file: an address is published once it forwards.
    // One failed status does not hold the others back; the first failure
    // is returned so that the loop tries again soon.
    let changes = status::changes(&cluster.services, &translation, &settings);
    let mut failed = None;
    let mut statuses_written = 0;
    for change in &changes {
        match status::write(&ctx.client, change).await {
            Ok(()) => {
                tracing::info!(service = %change.key, ips = ?change.ips, "status written");
                ctx.events.assigned(&cluster, change).await;
                statuses_written += 1;
            }
            Err(error) => {
                tracing::warn!(service = %change.key, %error, "status not written");
                failed.get_or_insert(ReconcileError::Status { key: change.key.clone(), error });
            }
        }
    }
    if let Some(error) = failed {
        return Err(error);
    }
    Ok(Outcome {
        file_written,
        generated: translation.services.len(),
        statuses_written,
        problems: translation.problems.len(),
    })
}

/// The current file, or nothing yet.
fn read(path: &Path) -> Result<String, ReconcileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(error) => Err(ReconcileError::Read { path: path.to_owned(), error }),
    }
}
