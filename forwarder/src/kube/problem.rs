//! What went wrong with one object: reported (as a log line, a Kubernetes
//! Event, or a line of `forwarder kube render`'s stderr) without stopping
//! the translation of the others.

use std::fmt;

/// A Service, by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { namespace, name } = self;
        write!(f, "{namespace}/{name}")
    }
}

/// The object a problem is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Subject {
    Service(ServiceKey),
    Node { name: String },
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Service(key) => write!(f, "Service {key}"),
            Subject::Node { name } => write!(f, "Node {name}"),
        }
    }
}

/// One problem, phrased for a human; `reason` is the Event's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub subject: Subject,
    /// A CamelCase word, as Kubernetes Events have.
    pub reason: &'static str,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { subject, reason, message } = self;
        write!(f, "{subject}: {reason}: {message}")
    }
}
