//! Id pools: service, backend and table ids index maps and counters.

use std::collections::{HashSet, VecDeque};

/// Ids handed out oldest-freed first, so a freed id (whose old flows may
/// still be counted against it for a while) is reused as late as possible.
#[derive(Clone, Debug)]
pub struct IdPool {
    free: VecDeque<u32>,
    capacity: u32,
}

impl IdPool {
    /// A pool whose `used` ids are taken.
    #[must_use]
    pub fn without(capacity: u32, used: impl IntoIterator<Item = u32>) -> Self {
        let used: HashSet<u32> = used.into_iter().collect();
        Self { free: (0..capacity).filter(|id| !used.contains(id)).collect(), capacity }
    }

    pub fn take(&mut self) -> Option<u32> {
        self.free.pop_front()
    }

    pub fn give_back(&mut self, id: u32) {
        self.free.push_back(id);
    }

    #[must_use]
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_ids_come_back_last() {
        let mut pool = IdPool::without(4, [1]);
        assert_eq!(pool.take(), Some(0));
        pool.give_back(0);
        assert_eq!([pool.take(), pool.take(), pool.take(), pool.take()], [Some(2), Some(3), Some(0), None]);
    }
}
