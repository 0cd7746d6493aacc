//! The forwarder's user-space half: service file, Maglev, loading the
//! datapath and keeping its maps in step with the configuration.
//! ARCHITECTURE.md at the top of the repository says what lives where.

pub mod cli;
pub mod config;
pub mod conntrack;
pub mod control;
pub mod daemon;
pub mod files;
pub mod host;
pub mod kernel;
pub mod kube;
pub mod logging;
pub mod maglev;
pub mod report;
pub mod state;
