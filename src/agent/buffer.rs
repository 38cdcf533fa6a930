//! A bounded buffer for telemetry that waits for the database: when full, the oldest entry
//! goes (and is counted), so an outage costs old rows, never memory.

use std::collections::VecDeque;

/// A first-in-first-out buffer of at most `capacity` items.
#[derive(Debug)]
pub struct Bounded<T> {
    items: VecDeque<T>,
    capacity: usize,
    dropped: u64,
}

impl<T> Bounded<T> {
    /// An empty buffer holding at most `capacity` (at least 1) items.
    pub fn new(capacity: usize) -> Self {
        Self {
            items: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
        }
    }

    /// Appends an item, dropping the oldest when full.
    pub fn push(&mut self, item: T) {
        if self.items.len() >= self.capacity {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(item);
    }

    /// The oldest `n` items, without removing them (for a write that may fail).
    pub fn front(&self, n: usize) -> impl Iterator<Item = &T> {
        self.items.iter().take(n)
    }

    /// Removes the oldest `n` items (after they were written).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.items.len());
        self.items.drain(..n);
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Items dropped because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_oldest_and_counts() {
        let mut b = Bounded::new(3);
        for i in 0..5 {
            b.push(i);
        }
        assert_eq!(b.front(10).copied().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!(b.dropped(), 2);
        b.consume(2);
        assert_eq!(b.front(10).copied().collect::<Vec<_>>(), vec![4]);
        b.consume(9);
        assert!(b.is_empty());
    }
}
