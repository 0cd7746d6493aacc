//! The change transaction: edit -> validate -> apply -> persist. Every way
//! the running configuration changes (a CLI verb, `apply`, a reload, a
//! health transition) goes through [`Daemon::apply`], and a change that
//! cannot be made whole changes nothing.

use std::path::PathBuf;

use tracing::{debug, info, warn};

use super::{Daemon, health::Transition};
use crate::{
    config::{
        ConfigError, ServiceFile,
        edit::{EditError, Editor},
    },
    control::Persist,
    files::write_atomically,
    state::{ApplyError, Summary},
};

/// Why a change was refused; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("{}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error("{}: {error}", path.display())]
    Edit { path: PathBuf, error: EditError },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("writing {}: {error}; change reverted", path.display())]
    WriteReverted { path: PathBuf, error: std::io::Error },
    #[error("writing {}: {error}; reverting the change also failed ({revert}): restart the daemon", path.display())]
    WriteNotReverted { path: PathBuf, error: std::io::Error, revert: ApplyError },
}

impl Daemon {
    /// Makes `next` the running configuration (health on top), or changes
    /// nothing and says why.
    pub(super) async fn apply(&mut self, next: ServiceFile) -> Result<Summary, ApplyError> {
        let summary = self.table.apply(&self.checks.effective(&next), &mut self.kernel.maps)?;
        self.desired = next;
        self.checks.reconcile(&self.desired);
        if let Some(vips) = self.host.vips.as_mut() {
            vips.reconcile(&self.desired).await;
        }
        self.host.unreachable.reconcile(&self.desired).await;
        if !summary.is_empty() {
            self.save();
        }
        Ok(summary)
    }

    /// Re-applies the current configuration after health changes: every
    /// transition queued is recorded first, then one apply (and one write
    /// of the record) covers them all, so a node dying under a thousand
    /// checked services costs one change, not a thousand.
    pub(super) async fn on_health(&mut self, transitions: Vec<Transition>) {
        let mut changed = 0;
        for transition in &transitions {
            if !self.checks.record(transition) {
                continue;
            }
            changed += 1;
            let Transition { probe, up, detail, .. } = transition;
            let (target, backends) = (probe.target, self.checks.users_of(probe));
            if *up {
                info!(%target, backends, "backend healthy: back in rotation");
            } else {
                warn!(%target, backends, %detail, "backend unhealthy: out of rotation");
            }
        }
        if changed == 0 {
            return;
        }
        let desired = self.desired.clone();
        match self.apply(desired).await {
            Ok(summary) => debug!(transitions = changed, changed = summary.changed.len(), "health applied"),
            Err(err) => warn!("applying a health change: {err}"),
        }
    }

    /// Re-reads the service file and applies it if it is valid.
    pub(super) async fn reload(&mut self, cause: &str) {
        let file = match ServiceFile::load(&self.services_path) {
            Ok(file) => file,
            Err(err) => {
                warn!(%cause, "reload rejected, configuration unchanged: {err}");
                return;
            }
        };
        if file == self.desired {
            debug!(%cause, "reload: no change");
            return;
        }
        match self.apply(file).await {
            Ok(Summary { added, changed, removed }) => info!(%cause, ?added, ?changed, ?removed, "reloaded"),
            Err(err) => warn!(%cause, "reload failed, configuration unchanged: {err}"),
        }
    }

    /// Applies an edit of the service file (or, runtime-only, of the running
    /// configuration) after validating the result like any service file.
    pub(super) async fn change(
        &mut self,
        persist: Persist,
        edit: impl FnOnce(&mut Editor) -> Result<(), EditError>,
    ) -> Result<Summary, ChangeError> {
        let (mut editor, path) = match persist {
            Persist::File => {
                let path = self.services_path.clone();
                let text = std::fs::read_to_string(&path)
                    .map_err(|error| ChangeError::Read { path: path.clone(), error })?;
                let editor =
                    Editor::parse(&text).map_err(|error| ChangeError::Edit { path: path.clone(), error })?;
                (editor, path)
            }
            Persist::RuntimeOnly => (Editor::render(&self.desired), PathBuf::from("(running configuration)")),
        };
        edit(&mut editor).map_err(|error| ChangeError::Edit { path: path.clone(), error })?;
        let text = editor.text();
        let next = ServiceFile::parse(&path, &text)?;
        self.commit(next, persist, &text).await
    }

    /// Applies `next` and, unless runtime-only, writes `text` as the
    /// service file; a failed write is reverted.
    pub(super) async fn commit(
        &mut self,
        next: ServiceFile,
        persist: Persist,
        text: &str,
    ) -> Result<Summary, ChangeError> {
        let previous = self.desired.clone();
        let summary = self.apply(next).await?;
        if persist == Persist::File
            && let Err(error) = write_atomically(&self.services_path, text.as_bytes())
        {
            let path = self.services_path.clone();
            return Err(match self.apply(previous).await {
                Ok(_) => ChangeError::WriteReverted { path, error },
                Err(revert) => ChangeError::WriteNotReverted { path, error, revert },
            });
        }
        info!(added = ?summary.added, changed = ?summary.changed, removed = ?summary.removed, ?persist, "changed from the command line");
        Ok(summary)
    }
}
