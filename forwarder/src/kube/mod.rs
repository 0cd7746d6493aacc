//! Kubernetes: LoadBalancer Services turned into entries of the service
//! file.
//!
//! The translation is pure: Services and Nodes (as the API server returns
//! them) plus the `[kube]` settings in, the complete service file text out,
//! with the problems of single objects collected rather than fatal.
//! `forwarder kube render` runs it offline on `kubectl get -o json` output.

pub mod allocate;
pub mod controller;
pub mod document;
pub mod input;
pub mod names;
pub mod nodes;
pub mod problem;
pub mod settings;
pub mod translate;

#[cfg(test)]
mod tests;

pub use problem::{Problem, ServiceKey, Subject};
