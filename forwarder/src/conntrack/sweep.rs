//! The periodic sweep: removes expired connections (both entries) and
//! counts the live ones per service and backend, for `stats`.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;
use tracing::debug;

use super::{FlowMap, now_ns, open, scan};

/// How often the sweep runs.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// What a sweep found.
#[derive(Clone, Debug)]
pub struct Sweep {
    pub at: Instant,
    pub connections: u64,
    pub by_service: HashMap<u32, u64>,
    pub by_backend: HashMap<u32, u64>,
    pub removed: u64,
}

impl Default for Sweep {
    fn default() -> Self {
        Self {
            at: Instant::now(),
            connections: 0,
            by_service: HashMap::new(),
            by_backend: HashMap::new(),
            removed: 0,
        }
    }
}

/// Removes expired connections (both entries) and counts the live ones.
pub fn sweep(flows: &mut FlowMap) -> Sweep {
    let now = now_ns();
    let mut result = Sweep::default();
    for conn in scan(flows) {
        if conn.expired(now) {
            let _ = flows.remove(&conn.key);
            if !conn.orphan {
                let _ = flows.remove(&conn.original.peer_key(conn.key.proto));
            }
            result.removed += 1;
        } else if !conn.orphan {
            result.connections += 1;
            *result.by_service.entry(conn.original.service_id).or_default() += 1;
            *result.by_backend.entry(conn.original.backend_id).or_default() += 1;
        }
    }
    result.at = Instant::now();
    result
}

/// Sweeps the pinned table at `pin` every [`INTERVAL`] on a blocking
/// thread; each result is published on the returned channel.
pub fn spawn(pin: PathBuf) -> anyhow::Result<watch::Receiver<Arc<Sweep>>> {
    let mut map = open(&pin)?;
    let (publish, receiver) = watch::channel(Arc::new(Sweep::default()));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(INTERVAL);
        loop {
            ticker.tick().await;
            let Ok((returned, result)) = tokio::task::spawn_blocking(move || {
                let result = sweep(&mut map);
                (map, result)
            })
            .await
            else {
                return;
            };
            map = returned;
            if result.removed > 0 {
                debug!(removed = result.removed, "expired connections swept");
            }
            if publish.send(Arc::new(result)).is_err() {
                return;
            }
        }
    });
    Ok(receiver)
}
