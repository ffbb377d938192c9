//! Intrusive doubly linked list over zone indices: the IMP_OPEN zones in
//! order of their last completed write, so the implicit close victim is
//! found, and any zone moved or removed, in O(1).

const NIL: u32 = u32::MAX;

/// List of zone indices, least recently written first.
#[derive(Debug, Clone)]
pub(crate) struct Lru {
    prev: Vec<u32>,
    next: Vec<u32>,
    linked: Vec<bool>,
    head: u32,
    tail: u32,
    len: u32,
}

impl Lru {
    /// An empty list able to hold zones `0..n`.
    pub(crate) fn new(n: u32) -> Self {
        Lru {
            prev: vec![NIL; n as usize],
            next: vec![NIL; n as usize],
            linked: vec![false; n as usize],
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    /// Whether zone `i` is in the list.
    pub(crate) fn contains(&self, i: u32) -> bool {
        self.linked[i as usize]
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
                c = self.next[i as usize];
                i
            })
        })
    }

    /// Number of zones in the list.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u32 {
        self.len
    }

    /// Unlink zone `i` if it is linked.
    pub(crate) fn remove(&mut self, i: u32) {
        if !self.linked[i as usize] {
            return;
        }
        let (p, n) = (self.prev[i as usize], self.next[i as usize]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.prev[i as usize] = NIL;
        self.next[i as usize] = NIL;
        self.linked[i as usize] = false;
        self.len -= 1;
    }

    /// Put zone `i` at the most recently written end (moving it if linked).
    pub(crate) fn push_back(&mut self, i: u32) {
        self.remove(i);
        self.prev[i as usize] = self.tail;
        self.next[i as usize] = NIL;
        if self.tail == NIL {
            self.head = i;
        } else {
            self.next[self.tail as usize] = i;
        }
        self.tail = i;
        self.linked[i as usize] = true;
        self.len += 1;
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
        let mut l = Lru::new(5);
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
