//! The forwarder's user-space half: service file, Maglev, loading the
//! datapath and keeping its maps in step with the configuration.

pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod kernel;
pub mod kube;
pub mod logging;
pub mod maglev;
pub mod neigh;
pub mod report;
pub mod state;
