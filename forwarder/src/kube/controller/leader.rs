//! Leader election on a `coordination.k8s.io/v1` Lease, so that two
//! controllers never write the service file or Service status at once.
//!
//! The holder renews `spec.renewTime` every third of the lease duration; a
//! candidate takes the Lease only once the holder's renewal is older than
//! the duration. Every write goes through the API server's optimistic
//! concurrency (the Lease's `resourceVersion`): of two candidates updating
//! the same version, one gets `409 Conflict` and stays a follower.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt as _},
};

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lease {name}: {error}")]
    Api { name: String, error: kube::Error },
}

/// One candidate for one Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaseLock {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
        }
    }

    /// How often the holder renews.
    #[must_use]
    pub fn renew_interval(&self) -> Duration {
        self.duration / 3
    }

    /// Takes or renews the Lease: `true` when this candidate holds it now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaderError> {
        let now = MicroTime(Timestamp::now());
        let seconds = i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.name).await.map_err(|e| self.error(e))? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return self.settle(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.take().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if holder.is_some() && !ours && !expired(&spec, now.0) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(seconds),
            acquire_time: if ours { spec.acquire_time.clone() } else { Some(now.clone()) },
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..spec
        });
        // `replace` sends the resourceVersion read above: a concurrent
        // change makes it fail with 409 instead of overwriting.
        self.settle(self.api.replace(&lease.name_any(), &PostParams::default(), &lease).await)
    }

    /// Gives the Lease up at a clean stop, so another candidate need not
    /// wait for it to expire.
    pub async fn release(&self) -> Result<(), LeaderError> {
        let Some(mut lease) = self.api.get_opt(&self.name).await.map_err(|e| self.error(e))? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        self.settle(self.api.replace(&self.name, &PostParams::default(), &lease).await).map(|_| ())
    }

    /// A conflict means another candidate won the race.
    fn settle(&self, result: Result<Lease, kube::Error>) -> Result<bool, LeaderError> {
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(self.error(error)),
        }
    }

    fn error(&self, error: kube::Error) -> LeaderError {
        LeaderError::Api { name: self.name.clone(), error }
    }
}

/// Whether the holder's last renewal is older than the lease duration.
fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else { return true };
    let seconds = spec.lease_duration_seconds.unwrap_or(0).max(1);
    renewed.0.checked_add(SignedDuration::from_secs(i64::from(seconds))).is_ok_and(|end| end < now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(renewed: &str, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some("a".to_owned()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(renewed.parse().unwrap())),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_expires_one_duration_after_its_renewal() {
        let now: Timestamp = "2026-12-02T06:00:15Z".parse().unwrap();
        assert!(!expired(&spec("2026-12-02T06:00:00Z", 15), now), "exactly at the end: still held");
        assert!(expired(&spec("2026-12-02T05:59:59Z", 15), now));
        assert!(!expired(&spec("2026-12-02T06:00:10Z", 15), now));
        assert!(expired(&LeaseSpec::default(), now), "never renewed");
    }
}
