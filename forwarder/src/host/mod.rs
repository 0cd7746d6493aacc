//! What the daemon changes on the host besides its BPF objects, and must
//! either undo (a stop, `forwarder down`) or leave for a successor to adopt
//! (a hand-over, a crash): managed neighbour entries, announced VIPs,
//! forwarding sysctls, unreachable routes for VIPs, the bpffs mount and
//! the state record that lists them all. `routes`, `ports` and `interfaces` only ask the host questions.
//!
//! Each change is a small type with the same verbs, used the same way by
//! `run`, by restarts and by `down`:
//!
//! * `new(.., inherited)`: take over what a predecessor's record lists;
//! * the change itself (`ensure`, `reconcile`, `enable`, `mount`), which
//!   only ever adds to what the type [`Owned`];
//! * `owned()`: everything it owns now, for the state record;
//! * `undo()`: remove all of it (a stop, or `forwarder down`, which builds
//!   each type from the record alone);
//! * `undo_own()`: remove only what this process added, leaving what it
//!   inherited (a start that failed after a predecessor's datapath was
//!   adopted must leave that datapath working).
//!
//! Handing over is dropping without undoing: nothing here undoes itself on
//! drop, so what happens to the host is always an explicit call.

mod bpffs;
pub mod interfaces;
mod neighbours;
mod owned;
pub mod places;
pub mod ports;
mod record;
mod record_v0;
pub mod routes;
mod sysctl;
mod unreachable;
mod vips;

pub use self::{
    bpffs::{BpfFsError, PinDir},
    neighbours::{NeighError, Neighbour, Neighbours},
    owned::Owned,
    record::{Record, RecordError, RunDir, daemon_running},
    sysctl::{SysctlError, Sysctls},
    unreachable::UnreachableVips,
    vips::Vips,
};
