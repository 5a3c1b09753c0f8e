//! The in-memory index: 16 bytes a slot, key hash to record location.
//!
//! Each shard is an open-addressing table with linear probing over a plain
//! `Vec` of `[hash, word]` pairs (hash 0 marks an empty slot). Its size is
//! not a power of two: it grows by 1.6× when it is 7/8 full, so a table is
//! never less than 55% full once it has grown, and a slot never costs more
//! than 16 / 0.55 ≈ 29 bytes per entry. Deletion shifts the following slots
//! back, so there are no tombstones. The full key is not kept: a hit checks
//! it against the record it reads.
//!
//! A word packs where the record is: the low 22 bits of its segment id (the
//! live segments always span fewer than 2^22 ids), its byte offset (28 bits:
//! segments up to 256 MiB), its length in 64-byte units rounded up (13 bits,
//! 0 when over 512 KiB: read the head first), and one bit saying it was hit
//! since it was written (for reinsertion on eviction).

use parking_lot::Mutex;

const SHARDS: usize = 64;
const SEG_BITS: u32 = 22;
const OFF_BITS: u32 = 28;
const LEN_BITS: u32 = 13;
pub(crate) const SEG_MASK: u64 = (1 << SEG_BITS) - 1;
const OFF_MASK: u64 = (1 << OFF_BITS) - 1;
const LEN_MASK: u64 = (1 << LEN_BITS) - 1;
const HIT_BIT: u64 = 1 << 63;
/// The bits that say where a record is (segment and offset).
const LOC_MASK: u64 = (1 << (SEG_BITS + OFF_BITS)) - 1;
/// The largest segment a word can address.
pub(crate) const MAX_SEGMENT_BYTES: u64 = OFF_MASK + 1;
/// The longest record whose length a word holds.
pub(crate) const MAX_HINTED_LEN: u64 = LEN_MASK * 64;

/// Where a record is, as the index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot(u64);

impl Slot {
    /// The slot of the record at `offset` of segment `segment`, `len` long.
    pub(crate) fn new(segment: u64, offset: u64, len: u64) -> Slot {
        debug_assert!(offset <= OFF_MASK);
        let units = if len <= MAX_HINTED_LEN {
            len.div_ceil(64)
        } else {
            0
        };
        Slot((segment & SEG_MASK) | offset << SEG_BITS | units << (SEG_BITS + OFF_BITS))
    }

    /// The low bits of the segment id.
    pub(crate) fn segment_low(self) -> u64 {
        self.0 & SEG_MASK
    }

    pub(crate) fn offset(self) -> u64 {
        self.0 >> SEG_BITS & OFF_MASK
    }

    /// How many bytes to read to get the whole record (it may be shorter,
    /// by less than 64 bytes); `None` when it is too long to say.
    pub(crate) fn read_len(self) -> Option<u64> {
        let units = self.0 >> (SEG_BITS + OFF_BITS) & LEN_MASK;
        (units > 0).then_some(units * 64)
    }

    pub(crate) fn was_hit(self) -> bool {
        self.0 & HIT_BIT != 0
    }

    /// Same record, whether or not it was hit since.
    pub(crate) fn same_record(self, other: Slot) -> bool {
        self.0 & LOC_MASK == other.0 & LOC_MASK
    }
}

#[derive(Debug, Default)]
struct Table {
    slots: Vec<[u64; 2]>,
    len: usize,
}

fn mix(hash: u64) -> u64 {
    hash.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Table {
    fn home(&self, hash: u64) -> usize {
        ((mix(hash) as u128 * self.slots.len() as u128) >> 64) as usize
    }

    /// The slot holding `hash`, or the empty slot where it would go.
    fn probe(&self, hash: u64) -> (usize, bool) {
        let cap = self.slots.len();
        let mut i = self.home(hash);
        loop {
            let h = self.slots[i][0];
            if h == hash {
                return (i, true);
            }
            if h == 0 {
                return (i, false);
            }
            i += 1;
            if i == cap {
                i = 0;
            }
        }
    }

    fn get(&self, hash: u64) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        match self.probe(hash) {
            (i, true) => Some(self.slots[i][1]),
            _ => None,
        }
    }

    fn get_mut(&mut self, hash: u64) -> Option<&mut u64> {
        if self.len == 0 {
            return None;
        }
        match self.probe(hash) {
            (i, true) => Some(&mut self.slots[i][1]),
            _ => None,
        }
    }

    fn grow(&mut self) {
        let cap = self.slots.len();
        let new_cap = (cap * 8 / 5).max(16);
        let old = std::mem::replace(&mut self.slots, vec![[0, 0]; new_cap]);
        self.len = 0;
        for [h, w] in old {
            if h != 0 {
                self.insert(h, w);
            }
        }
    }

    fn insert(&mut self, hash: u64, word: u64) -> Option<u64> {
        if (self.len + 1) * 8 > self.slots.len() * 7 {
            self.grow();
        }
        let (i, found) = self.probe(hash);
        if found {
            return Some(std::mem::replace(&mut self.slots[i][1], word));
        }
        self.slots[i] = [hash, word];
        self.len += 1;
        None
    }

    fn remove(&mut self, hash: u64) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let (mut i, found) = self.probe(hash);
        if !found {
            return None;
        }
        let removed = self.slots[i][1];
        let cap = self.slots.len();
        // Shift back every following slot that may move into the gap.
        let mut j = i;
        loop {
            j = if j + 1 == cap { 0 } else { j + 1 };
            let h = self.slots[j][0];
            if h == 0 {
                break;
            }
            let home = self.home(h);
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.slots[i] = self.slots[j];
                i = j;
            }
        }
        self.slots[i] = [0, 0];
        self.len -= 1;
        Some(removed)
    }
}

/// The sharded index.
#[derive(Debug)]
pub(crate) struct Index {
    shards: Box<[Mutex<Table>]>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            shards: (0..SHARDS).map(|_| Mutex::new(Table::default())).collect(),
        }
    }
}

/// Hash 0 marks an empty slot; a key whose hash is 0 is stored as 1 (a
/// collision there is checked against the full key like any other).
fn stored(hash: u64) -> u64 {
    hash.max(1)
}

impl Index {
    fn shard(&self, hash: u64) -> &Mutex<Table> {
        &self.shards[(hash >> 58) as usize % SHARDS]
    }

    /// Where `hash`'s record is, marking it hit.
    pub(crate) fn touch(&self, hash: u64) -> Option<Slot> {
        let hash = stored(hash);
        let mut shard = self.shard(hash).lock();
        let word = shard.get_mut(hash)?;
        *word |= HIT_BIT;
        Some(Slot(*word))
    }

    pub(crate) fn get(&self, hash: u64) -> Option<Slot> {
        let hash = stored(hash);
        self.shard(hash).lock().get(hash).map(Slot)
    }

    /// Point `hash` at `slot`; the slot it replaces, if any.
    pub(crate) fn insert(&self, hash: u64, slot: Slot) -> Option<Slot> {
        let hash = stored(hash);
        self.shard(hash).lock().insert(hash, slot.0).map(Slot)
    }

    /// Remove `hash` if it still points at the record of `expected`, under
    /// the shard's lock, running `then` there (the eviction listener's
    /// contract: nothing else sees the entry gone first).
    pub(crate) fn remove_if(
        &self,
        hash: u64,
        expected: Slot,
        then: impl FnOnce(Slot),
    ) -> Option<Slot> {
        let hash = stored(hash);
        let mut shard = self.shard(hash).lock();
        match shard.get(hash).map(Slot) {
            Some(now) if now.same_record(expected) => {
                then(now);
                shard.remove(hash);
                Some(now)
            }
            _ => None,
        }
    }

    pub(crate) fn remove(&self, hash: u64) -> Option<Slot> {
        let hash = stored(hash);
        self.shard(hash).lock().remove(hash).map(Slot)
    }

    /// Forget every entry.
    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            *shard.lock() = Table::default();
        }
    }

    /// Entries indexed.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len).sum()
    }

    /// Heap bytes the index holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().slots.capacity() * std::mem::size_of::<[u64; 2]>())
            .sum::<usize>()
            + self.shards.len() * std::mem::size_of::<Mutex<Table>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn a_slot_keeps_where_the_record_is() {
        let s = Slot::new(0x1234_5678, 8 * 1000 + 3, 4500);
        assert_eq!(s.segment_low(), 0x1234_5678 & SEG_MASK);
        assert_eq!(s.offset(), 8003);
        assert_eq!(s.read_len(), Some(4544));
        assert!(!s.was_hit());
        assert_eq!(Slot::new(1, 64, MAX_HINTED_LEN + 1).read_len(), None);
        assert!(s.same_record(Slot(s.0 | HIT_BIT)));
        assert!(!s.same_record(Slot::new(0x1234_5678, 8 * 1001, 4500)));
    }

    #[test]
    fn a_full_index_costs_at_most_32_bytes_an_entry() {
        for n in [1_000u64, 100_000, 1_000_000] {
            let index = Index::default();
            for i in 1..=n {
                index.insert(mix(i), Slot::new(1, 64, 100));
            }
            assert_eq!(index.len() as u64, n);
            let per_entry = index.heap_bytes() as f64 / n as f64;
            assert!(
                per_entry <= 32.0,
                "{per_entry:.1} bytes an entry at {n} entries"
            );
        }
    }

    #[test]
    fn touch_marks_a_hit_until_the_slot_is_replaced() {
        let index = Index::default();
        index.insert(7, Slot::new(1, 64, 100));
        assert!(index.touch(7).expect("there").was_hit());
        assert!(index.get(7).expect("there").was_hit());
        index.insert(7, Slot::new(2, 64, 100));
        assert!(!index.get(7).expect("there").was_hit());
        assert_eq!(index.touch(8), None);
    }

    #[test]
    fn remove_if_removes_only_the_record_expected() {
        let index = Index::default();
        let a = Slot::new(1, 64, 100);
        index.insert(0, a);
        assert_eq!(index.remove_if(0, Slot::new(1, 72, 100), |_| {}), None);
        let mut ran = false;
        assert!(index.remove_if(0, a, |_| ran = true).is_some());
        assert!(ran);
        assert_eq!(index.get(0), None);
    }

    proptest! {
        #[test]
        fn behaves_like_a_hash_map(ops in proptest::collection::vec((0u8..3, 0u64..64, 0u64..1000), 0..400)) {
            let index = Index::default();
            let mut model = HashMap::new();
            for (op, key, val) in ops {
                // Few distinct keys, all in one shard: long probe runs and
                // wrap-arounds.
                let hash = key + 1;
                let slot = Slot::new(1, val * 8, 64);
                match op {
                    0 => { prop_assert_eq!(index.insert(hash, slot), model.insert(hash, slot)); }
                    1 => { prop_assert_eq!(index.remove(hash), model.remove(&hash)); }
                    _ => { prop_assert_eq!(index.get(hash), model.get(&hash).copied()); }
                }
            }
            prop_assert_eq!(index.len(), model.len());
            for (hash, slot) in &model {
                prop_assert_eq!(index.get(*hash), Some(*slot));
            }
        }
    }
}
