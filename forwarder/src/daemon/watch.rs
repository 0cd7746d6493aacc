//! Watching the service file: its directory is watched (editors replace
//! files by renaming), and any event naming the file is passed on.

use std::path::Path;

use notify::{EventKind, RecursiveMode, Watcher as _};
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
            let relevant =
                matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_))
                    && event.paths.iter().any(|p| p.file_name() == name.as_deref());
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
