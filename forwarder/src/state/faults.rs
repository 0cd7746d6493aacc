//! A point of failure in the map writer, for tests only: the write path
//! that must leave nothing half-applied is otherwise reached only by a
//! kernel that runs out of memory.

use super::ApplyError;

/// Where an injected failure is due; inert unless built with the
/// `fault-injection` feature and armed.
#[derive(Debug, Default)]
pub(super) struct Faults {
    /// Map writes left before the one that fails.
    #[cfg(feature = "fault-injection")]
    fail_after: Option<usize>,
}

impl Faults {
    /// Called before every map write of a commit.
    pub(super) fn before_write(&mut self, map: &'static str) -> Result<(), ApplyError> {
        #[cfg(feature = "fault-injection")]
        if let Some(left) = self.fail_after.as_mut() {
            if *left == 0 {
                self.fail_after = None;
                return Err(ApplyError::Injected { map });
            }
            *left -= 1;
        }
        #[cfg(not(feature = "fault-injection"))]
        let _ = (self, map);
        Ok(())
    }
}

#[cfg(feature = "fault-injection")]
impl super::ServiceTable {
    /// Makes the commit's map write number `after` (from 0) fail once;
    /// writes that put the last good table back are never failed.
    pub fn fail_map_write(&mut self, after: usize) {
        self.faults.fail_after = Some(after);
    }

    /// Whether an armed failure is still to come (the last apply made
    /// fewer writes than it waited for).
    #[must_use]
    pub fn failure_pending(&self) -> bool {
        self.faults.fail_after.is_some()
    }
}
