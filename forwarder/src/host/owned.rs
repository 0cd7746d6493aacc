//! The bookkeeping every host change shares: what was inherited from a
//! predecessor, and what this process added itself.

use std::collections::BTreeSet;

/// Things of one kind this daemon owns on the host.
#[derive(Clone, Debug)]
pub struct Owned<T> {
    inherited: BTreeSet<T>,
    added: BTreeSet<T>,
}

impl<T: Ord + Clone> Owned<T> {
    /// Owning what a predecessor recorded.
    #[must_use]
    pub fn inheriting(inherited: impl IntoIterator<Item = T>) -> Self {
        Self { inherited: inherited.into_iter().collect(), added: BTreeSet::new() }
    }

    #[must_use]
    pub fn contains(&self, item: &T) -> bool {
        self.inherited.contains(item) || self.added.contains(item)
    }

    /// Records that this process added `item`.
    pub fn add(&mut self, item: T) {
        if !self.inherited.contains(&item) {
            self.added.insert(item);
        }
    }

    /// Forgets `item` (it was removed from the host).
    pub fn forget(&mut self, item: &T) {
        self.inherited.remove(item);
        self.added.remove(item);
    }

    /// Everything owned, inherited first.
    #[must_use]
    pub fn all(&self) -> Vec<T> {
        let mut all: BTreeSet<T> = self.inherited.clone();
        all.extend(self.added.iter().cloned());
        all.into_iter().collect()
    }

    /// Empties the set: everything, or (`own_only`) what this process added.
    pub fn take(&mut self, own_only: bool) -> Vec<T> {
        let added = std::mem::take(&mut self.added);
        if own_only {
            return added.into_iter().collect();
        }
        let mut all = std::mem::take(&mut self.inherited);
        all.extend(added);
        all.into_iter().collect()
    }
}

impl<T> Default for Owned<T> {
    fn default() -> Self {
        Self { inherited: BTreeSet::new(), added: BTreeSet::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undoing_own_changes_keeps_inherited_ones() {
        let mut owned = Owned::inheriting([1, 2]);
        owned.add(2); // already inherited: stays inherited
        owned.add(3);
        assert_eq!(owned.all(), [1, 2, 3]);
        assert_eq!(owned.take(true), [3]);
        assert_eq!(owned.all(), [1, 2]);
        assert_eq!(owned.take(false), [1, 2]);
        assert!(owned.all().is_empty());
    }
}
