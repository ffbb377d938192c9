//! Doubly linked list over zone indices: the IMP_OPEN zones in order of
//! their last completed write, so the implicit close victim is found, and
//! any zone moved or removed, in O(1).
//!
//! Only the linked zones have links (a hash map), so the list costs nothing
//! per zone of the device: every IMP_OPEN zone holds an open resource, so a
//! device with an open limit links at most that many. A device without one
//! never needs a victim, and the list is then off and empty.

use std::collections::HashMap;

const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Link {
    prev: u32,
    next: u32,
}

/// List of zone indices, least recently written first.
#[derive(Debug, Clone)]
pub(crate) struct Lru {
    links: HashMap<u32, Link>,
    head: u32,
    tail: u32,
    /// Off: every operation is a no-op (no open limit, no victims needed).
    on: bool,
}

impl Lru {
    /// An empty list; `on` false makes it a no-op.
    pub(crate) fn new(on: bool) -> Self {
        Lru {
            links: HashMap::new(),
            head: NIL,
            tail: NIL,
            on,
        }
    }

    /// Whether zone `i` is in the list.
    pub(crate) fn contains(&self, i: u32) -> bool {
        self.links.contains_key(&i)
    }

    /// The least recently written zone.
    #[cfg(test)]
    pub(crate) fn front(&self) -> Option<u32> {
        (self.head != NIL).then_some(self.head)
    }

    /// The zones from least to most recently written.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        let mut c = self.head;
        std::iter::from_fn(move || {
            (c != NIL).then(|| {
                let i = c;
                c = self.links.get(&i).map_or(NIL, |l| l.next);
                i
            })
        })
    }

    /// Number of zones in the list.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u32 {
        self.links.len() as u32
    }

    /// Unlink zone `i` if it is linked.
    pub(crate) fn remove(&mut self, i: u32) {
        let Some(Link { prev: p, next: n }) = self.links.remove(&i) else {
            return;
        };
        match self.links.get_mut(&p) {
            Some(l) => l.next = n,
            None => self.head = n,
        }
        match self.links.get_mut(&n) {
            Some(l) => l.prev = p,
            None => self.tail = p,
        }
    }

    /// Put zone `i` at the most recently written end (moving it if linked).
    pub(crate) fn push_back(&mut self, i: u32) {
        if !self.on {
            return;
        }
        self.remove(i);
        let prev = self.tail;
        match self.links.get_mut(&prev) {
            Some(l) => l.next = i,
            None => self.head = i,
        }
        self.links.insert(i, Link { prev, next: NIL });
        self.tail = i;
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    fn order(l: &Lru) -> Vec<u32> {
        l.iter().collect()
    }

    #[test]
    fn push_move_remove() {
        let mut l = Lru::new(true);
        assert_eq!(l.front(), None);
        l.push_back(3);
        l.push_back(1);
        l.push_back(4);
        assert_eq!(order(&l), vec![3, 1, 4]);
        l.push_back(3);
        assert_eq!(order(&l), vec![1, 4, 3]);
        l.remove(4);
        assert_eq!(order(&l), vec![1, 3]);
        assert!(!l.contains(4));
        l.remove(4);
        assert_eq!(l.len(), 2);
        l.remove(1);
        l.remove(3);
        assert_eq!(l.front(), None);
        assert_eq!(l.len(), 0);
        l.push_back(0);
        assert_eq!(order(&l), vec![0]);
    }
}
