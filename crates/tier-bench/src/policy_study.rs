//! A study of eviction policies for mixed object sizes, on the same traces
//! and byte budgets as the hit-ratio tables: S3-FIFO as the memory tier ran
//! it before the study, and the size-aware variants considered for it.
//!
//! Each variant is a single-threaded simulation that tracks keys and weights
//! only, so the study isolates the policy from the tier's sharding and
//! locking; the hit-ratio tables then measure the tier itself.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::hit_ratio::{LenOf, Ratios, Tally, Trace};

/// The knobs of one simulated S3-FIFO variant.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// What the variant is, for the table.
    pub label: &'static str,
    /// The probationary queue's share of the bytes, in percent.
    pub small_percent: usize,
    /// How an entry's stay in the probationary queue is bounded.
    pub probation: Probation,
    /// The ghost list remembers this many times as many keys as the queues hold.
    pub ghost_factor: usize,
    /// The access counter's ceiling: how many passes through main a popular
    /// entry earns (S3-FIFO: 3).
    pub max_freq: u8,
    /// Split into shards as the tier did before the study (one per 16 MiB,
    /// each its own S3-FIFO, a write evicting from its own shard first), or
    /// one S3-FIFO over all the bytes.
    pub sharded: bool,
}

/// How long a new entry stays on probation before its first request decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probation {
    /// Until the queue's bytes exceed its share (S3-FIFO's rule): an entry
    /// larger than the share leaves at the next eviction, usually before
    /// its second request.
    QueueBytes,
    /// Entries larger than the share skip probation and enter main.
    LargeToMain,
    /// Until the share's worth of bytes has entered probation after it, the
    /// same time for every size (the queue may exceed its share by the
    /// entry that is waiting).
    BytesSince,
}

/// The variants compared, the tier's rule of before the study first.
pub const VARIANTS: [Variant; 14] = [
    Variant {
        label: "S3-FIFO, probation 5%, one per 16 MiB shard (the tier before)",
        small_percent: 5,
        probation: Probation::QueueBytes,
        ghost_factor: 1,
        max_freq: 3,
        sharded: true,
    },
    Variant {
        label: "S3-FIFO, probation 5% of bytes, one over all shards",
        small_percent: 5,
        probation: Probation::QueueBytes,
        ghost_factor: 1,
        max_freq: 3,
        sharded: false,
    },
    Variant {
        label: "S3-FIFO, probation 10% of bytes (the paper's)",
        small_percent: 10,
        probation: Probation::QueueBytes,
        ghost_factor: 1,
        max_freq: 3,
        sharded: false,
    },
    Variant {
        label: "5%, objects larger than probation enter main",
        small_percent: 5,
        probation: Probation::LargeToMain,
        ghost_factor: 1,
        max_freq: 3,
        sharded: false,
    },
    Variant {
        label: "5%, probation lasts 5% of bytes written, any size",
        small_percent: 5,
        probation: Probation::BytesSince,
        ghost_factor: 1,
        max_freq: 3,
        sharded: false,
    },
    Variant {
        label: "10%, probation lasts 10% of bytes written, any size",
        small_percent: 10,
        probation: Probation::BytesSince,
        ghost_factor: 1,
        max_freq: 3,
        sharded: false,
    },
    Variant {
        label: "5%, ghost of 4x the resident keys",
        small_percent: 5,
        probation: Probation::QueueBytes,
        ghost_factor: 4,
        max_freq: 3,
        sharded: false,
    },
    Variant {
        label: "5%, large to main, ghost 4x",
        small_percent: 5,
        probation: Probation::LargeToMain,
        ghost_factor: 4,
        max_freq: 3,
        sharded: false,
    },
    Variant {
        label: "probation 2% of bytes",
        small_percent: 2,
        probation: Probation::QueueBytes,
        ghost_factor: 1,
        max_freq: 3,
        sharded: false,
    },
    Variant {
        label: "probation 3% of bytes",
        small_percent: 3,
        probation: Probation::QueueBytes,
        ghost_factor: 1,
        max_freq: 3,
        sharded: false,
    },
    Variant {
        label: "5%, counter up to 7",
        small_percent: 5,
        probation: Probation::QueueBytes,
        ghost_factor: 1,
        max_freq: 7,
        sharded: false,
    },
    Variant {
        label: "3%, counter up to 7",
        small_percent: 3,
        probation: Probation::QueueBytes,
        ghost_factor: 1,
        max_freq: 7,
        sharded: false,
    },
    Variant {
        label: "probation 2%, counter up to 7 (the tier now)",
        small_percent: 2,
        probation: Probation::QueueBytes,
        ghost_factor: 1,
        max_freq: 7,
        sharded: false,
    },
    Variant {
        label: "3%, counter up to 15",
        small_percent: 3,
        probation: Probation::QueueBytes,
        ghost_factor: 1,
        max_freq: 15,
        sharded: false,
    },
];

#[derive(Debug, Clone, Copy)]
struct Item {
    key: u64,
    weight: usize,
    /// Probation bytes written before this item entered probation.
    entered_at: u64,
}

/// One simulated S3-FIFO cache.
#[derive(Debug)]
struct Sim {
    variant: Variant,
    capacity: usize,
    used: usize,
    /// Access counters of resident keys, 0 to 3.
    freq: HashMap<u64, u8>,
    small: VecDeque<Item>,
    small_bytes: usize,
    /// Bytes ever written to probation.
    small_clock: u64,
    main: VecDeque<Item>,
    ghost_order: VecDeque<u64>,
    ghost: HashSet<u64>,
}

impl Sim {
    fn new(variant: Variant, capacity: usize) -> Self {
        Sim {
            variant,
            capacity,
            used: 0,
            freq: HashMap::new(),
            small: VecDeque::new(),
            small_bytes: 0,
            small_clock: 0,
            main: VecDeque::new(),
            ghost_order: VecDeque::new(),
            ghost: HashSet::new(),
        }
    }

    fn small_target(&self) -> usize {
        self.capacity * self.variant.small_percent / 100
    }

    /// A request: whether it hit; a miss inserts the key.
    fn access(&mut self, key: u64, weight: usize) -> bool {
        if self.hit(key) {
            return true;
        }
        if weight > self.capacity {
            return false;
        }
        while self.used + weight > self.capacity {
            if self.evict_one().is_none() {
                break;
            }
        }
        self.insert(key, weight);
        false
    }

    fn hit(&mut self, key: u64) -> bool {
        match self.freq.get_mut(&key) {
            Some(f) => {
                *f = (*f + 1).min(self.variant.max_freq);
                true
            }
            None => false,
        }
    }

    fn insert(&mut self, key: u64, weight: usize) {
        let item = Item {
            key,
            weight,
            entered_at: self.small_clock,
        };
        let to_main = self.ghost.remove(&key)
            || (self.variant.probation == Probation::LargeToMain && weight > self.small_target());
        if to_main {
            self.main.push_back(item);
        } else {
            self.small.push_back(item);
            self.small_bytes += weight;
            self.small_clock += weight as u64;
        }
        self.used += weight;
        self.freq.insert(key, 0);
    }

    /// Whether the oldest probationary entry has served its time.
    fn small_due(&self) -> bool {
        let target = self.small_target();
        match self.variant.probation {
            Probation::QueueBytes | Probation::LargeToMain => self.small_bytes > target,
            Probation::BytesSince => self.small.front().is_some_and(|item| {
                self.small_clock - item.entered_at >= target as u64 + item.weight as u64
            }),
        }
    }

    /// Evict one entry, returning its weight.
    fn evict_one(&mut self) -> Option<usize> {
        loop {
            let from_small = self.small_due() || self.main.is_empty();
            let item = if from_small {
                match self.small.pop_front() {
                    Some(item) => {
                        self.small_bytes -= item.weight;
                        item
                    }
                    None if self.main.is_empty() => return None,
                    None => continue,
                }
            } else {
                match self.main.pop_front() {
                    Some(item) => item,
                    None => continue,
                }
            };
            let f = self.freq.get(&item.key).copied().unwrap_or(0);
            if f > 0 {
                let left = if from_small { 0 } else { f - 1 };
                self.freq.insert(item.key, left);
                self.main.push_back(item);
                continue;
            }
            self.freq.remove(&item.key);
            self.used -= item.weight;
            if from_small {
                let cap = 256.max(self.variant.ghost_factor * (self.small.len() + self.main.len()));
                if self.ghost.insert(item.key) {
                    self.ghost_order.push_back(item.key);
                }
                while self.ghost_order.len() > cap {
                    if let Some(old) = self.ghost_order.pop_front() {
                        self.ghost.remove(&old);
                    }
                }
            }
            return Some(item.weight);
        }
    }
}

/// S3-FIFO split over shards as the tier did before the study: each shard
/// its own queues with its share of the probation bytes, one byte bound over
/// all, and a write evicting from its own shard first, then from the others
/// in turn.
#[derive(Debug)]
struct Sharded {
    shards: Vec<Sim>,
    capacity: usize,
    used: usize,
    cursor: usize,
}

impl Sharded {
    fn new(variant: Variant, capacity: usize) -> Self {
        let n = (capacity >> 24).clamp(1, 64).next_power_of_two();
        Sharded {
            shards: (0..n).map(|_| Sim::new(variant, capacity / n)).collect(),
            capacity,
            used: 0,
            cursor: 0,
        }
    }

    fn access(&mut self, key: u64, weight: usize) -> bool {
        // The tier's shard is the top bits of the key's hash.
        let n = self.shards.len();
        let home = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % n;
        if self.shards[home].hit(key) {
            return true;
        }
        if weight > self.capacity {
            return false;
        }
        while self.used + weight > self.capacity {
            self.cursor += 1;
            let order = std::iter::once(home).chain((0..n).map(|i| (self.cursor + i) % n));
            let freed = order.into_iter().find_map(|s| self.shards[s].evict_one());
            match freed {
                Some(w) => self.used -= w,
                None => break,
            }
        }
        self.shards[home].insert(key, weight);
        self.used += weight;
        false
    }
}

/// A variant's ratios on `trace` with `capacity` bytes.
pub fn run(
    variant: Variant,
    trace: &Trace,
    capacity: usize,
    weight: LenOf<'_>,
    len: LenOf<'_>,
) -> Ratios {
    let mut tally = Tally::default();
    if variant.sharded {
        let mut sim = Sharded::new(variant, capacity);
        for &k in trace.keys.iter() {
            let hit = sim.access(k, weight(k));
            tally.record(hit, len(k));
        }
    } else {
        let mut sim = Sim::new(variant, capacity);
        for &k in trace.keys.iter() {
            let hit = sim.access(k, weight(k));
            tally.record(hit, len(k));
        }
    }
    tally.ratios()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn trace(keys: Vec<u64>) -> Trace {
        Trace {
            label: String::new(),
            keys: Arc::new(keys),
        }
    }

    fn variant(probation: Probation, sharded: bool) -> Variant {
        Variant {
            label: "",
            small_percent: 10,
            probation,
            ghost_factor: 1,
            max_freq: 3,
            sharded,
        }
    }

    #[test]
    fn a_large_object_outlives_probation_only_when_it_skips_it() {
        // A cache of 60 bytes whose probation holds 6: one 50-byte object,
        // then 20 one-byte keys, then the object again.
        let mut keys = vec![1000];
        keys.extend(0..20);
        keys.push(1000);
        let weight = |k: u64| if k == 1000 { 50 } else { 1 };
        let hits = |probation| {
            run(
                variant(probation, false),
                &trace(keys.clone()),
                60,
                &weight,
                &weight,
            )
            .hit
        };
        assert_eq!(hits(Probation::QueueBytes), 0.0);
        assert!(hits(Probation::LargeToMain) > 0.0);
    }

    #[test]
    fn one_shard_is_the_unsharded_policy() {
        // Under 16 MiB the tier had one shard: the two simulations must agree.
        let keys: Vec<u64> = (0..20_000u64).map(|i| (i * i * 7919) % 3000).collect();
        let weight = |k: u64| 100 + (k as usize % 7) * 300;
        let t = trace(keys);
        for capacity in [10_000, 100_000, 1_000_000] {
            let one = run(
                variant(Probation::QueueBytes, false),
                &t,
                capacity,
                &weight,
                &weight,
            );
            let split = run(
                variant(Probation::QueueBytes, true),
                &t,
                capacity,
                &weight,
                &weight,
            );
            assert_eq!(one.hit, split.hit);
            assert_eq!(one.byte_hit, split.byte_hit);
            assert!(one.hit > 0.0);
        }
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity() {
        let keys: Vec<u64> = (0..2000).map(|i| (i * 7919) % 300).collect();
        let weight = |k: u64| 1 + (k as usize % 40);
        for v in VARIANTS {
            let mut sim = Sim::new(v, 500);
            for &k in &keys {
                sim.access(k, weight(k));
                assert!(sim.used <= 500, "{}", v.label);
                let counted: usize = sim.small.iter().chain(&sim.main).map(|i| i.weight).sum();
                assert_eq!(counted, sim.used, "{}", v.label);
            }
        }
    }
}
