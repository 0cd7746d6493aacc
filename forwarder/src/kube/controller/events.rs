//! Kubernetes Events on the Services (and Nodes) the controller acts on:
//! `kubectl describe service` shows the VIP assignment and every problem.
//!
//! A problem is published when it appears, not at every reconcile; it is
//! published again if it goes away and comes back.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client, Resource as _,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use super::status::StatusChange;
use crate::kube::{Problem, Subject, input::Cluster, translate::key_of};

/// The `reportingController` of the Events.
pub const CONTROLLER_NAME: &str = "forwarder.dev/lb-controller";

pub struct Events {
    recorder: Recorder,
    /// The problems of the last reconcile, as text.
    reported: BTreeSet<String>,
}

impl Events {
    pub fn new(client: Client, instance: &str) -> Self {
        let reporter =
            Reporter { controller: CONTROLLER_NAME.to_owned(), instance: Some(instance.to_owned()) };
        Self { recorder: Recorder::new(client, reporter), reported: BTreeSet::new() }
    }

    /// One Normal Event per status change.
    pub async fn assigned(&self, cluster: &Cluster, change: &StatusChange) {
        let Some(reference) = reference(cluster, &Subject::Service(change.key.clone())) else { return };
        let (reason, note) = match change.ips.as_slice() {
            [] => ("IPReleased", "load balancer address released".to_owned()),
            ips => ("IPAllocated", format!("assigned load balancer address {}", join(ips))),
        };
        self.publish(EventType::Normal, reason, note, &reference).await;
    }

    /// A Warning Event for each problem that is new since the last call.
    pub async fn problems(&mut self, cluster: &Cluster, problems: &[Problem]) {
        let now: BTreeSet<String> = problems.iter().map(ToString::to_string).collect();
        for problem in problems.iter().filter(|p| !self.reported.contains(&p.to_string())) {
            let Some(reference) = reference(cluster, &problem.subject) else { continue };
            self.publish(EventType::Warning, problem.reason, problem.message.clone(), &reference).await;
        }
        self.reported = now;
    }

    async fn publish(&self, type_: EventType, reason: &str, note: String, reference: &ObjectReference) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        // An Event is a report, not part of the work: a failure is logged.
        if let Err(error) = self.recorder.publish(&event, reference).await {
            tracing::warn!(%error, reason, "could not publish a Kubernetes Event");
        }
    }
}

fn reference(cluster: &Cluster, subject: &Subject) -> Option<ObjectReference> {
    match subject {
        Subject::Service(key) => {
            cluster.services.iter().find(|s| &key_of(s) == key).map(|s| s.object_ref(&()))
        }
        Subject::Node { name } => {
            cluster.nodes.iter().find(|n| n.metadata.name.as_ref() == Some(name)).map(|n| n.object_ref(&()))
        }
    }
}

fn join(ips: &[std::net::Ipv4Addr]) -> String {
    ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
