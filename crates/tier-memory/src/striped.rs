//! A counter split over cache lines, so that cores counting hits at once do
//! not bounce one line between them.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const STRIPES: usize = 16;

/// One counter on a cache line of its own (128 bytes covers adjacent-line
/// prefetching on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// A relaxed counter whose increments from different threads land on
/// different cache lines; reading sums the stripes.
#[derive(Debug, Default)]
pub(crate) struct StripedCounter {
    stripes: [Padded; STRIPES],
}

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn my_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    STRIPE.with(|stripe| {
        let mut idx = stripe.get();
        if idx == usize::MAX {
            idx = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            stripe.set(idx);
        }
        idx
    })
}

impl StripedCounter {
    #[inline]
    pub(crate) fn incr(&self) {
        self.stripes[my_stripe()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_increments_from_many_threads() {
        let counter = StripedCounter::default();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| (0..1000).for_each(|_| counter.incr()));
            }
        });
        assert_eq!(counter.sum(), 8000);
    }
}
