//! Watching the service file: its directory is watched (editors replace
//! files by renaming), and events that mean the file is complete are
//! passed on: renamed into place, removed, or closed after writing. A
//! file written in place is applied when its writer closes it, never as
//! the part written so far, however slowly it is written (a valid prefix
//! would remove the services after it for a moment); a file created in
//! place is likewise empty until closed. A symlink swapped in is complete
//! when created.

use std::path::Path;

use notify::{
    EventKind, RecursiveMode, Watcher as _,
    event::{AccessKind, AccessMode, CreateKind, ModifyKind},
};
use tokio::sync::mpsc;
use tracing::warn;

/// Sends `()` on `changed` whenever `path` may have changed. The returned
/// watcher stops watching when dropped.
pub fn watch(path: &Path, changed: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let path = std::path::absolute(path)?;
    let dir = path.parent().map(Path::to_owned).unwrap_or_else(|| "/".into());
    let name = path.file_name().map(ToOwned::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        Ok(event) => {
            let ours = event.paths.iter().find(|p| p.file_name() == name.as_deref());
            let complete = match event.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(_))
                | EventKind::Remove(_) => true,
                EventKind::Create(CreateKind::File | CreateKind::Any | CreateKind::Other) => {
                    ours.is_some_and(|p| p.symlink_metadata().is_ok_and(|m| m.is_symlink()))
                }
                _ => false,
            };
            let relevant = complete && ours.is_some();
            if relevant {
                // A full channel already holds a pending reload.
                let _ = changed.try_send(());
            }
        }
        Err(err) => warn!("watching the service file: {err}"),
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}
