//! Counters that every message moves, kept so that counting shares nothing between
//! threads: each thread adds into a shard of its own, and a scrape sums the shards.
//!
//! A shard has one writer, so adding is a plain load and store (no locked
//! instruction), and the shards sit on cache lines of their own, so two threads
//! counting the same route never contend. Threads past the first [`OWNED`] share one
//! last shard, with atomic additions: correct, only slower. A scrape reads each cell
//! once; it may miss an addition made meanwhile, never half of one.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Threads that get a shard of their own (a runtime's workers and the plugins' threads
/// come first; a thread is given one at its first addition).
const OWNED: usize = 16;

/// One thread's cells, alone on its cache lines (128 bytes: two lines, as adjacent
/// lines are fetched in pairs).
#[repr(align(128))]
struct Shard<const N: usize>([AtomicU64; N]);

/// `N` counters, sharded by thread.
pub struct Sharded<const N: usize> {
    shards: Box<[Shard<N>]>,
}

impl<const N: usize> Default for Sharded<N> {
    fn default() -> Self {
        Self {
            shards: (0..=OWNED)
                .map(|_| Shard(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }
}

/// The calling thread's cells of a [`Sharded`].
pub struct Cells<'a, const N: usize> {
    cells: &'a [AtomicU64; N],
    owned: bool,
}

impl<const N: usize> Cells<'_, N> {
    /// Adds `n` to counter `i`.
    #[inline]
    pub fn add(&self, i: usize, n: u64) {
        let cell = &self.cells[i];
        if self.owned {
            cell.store(cell.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
        } else {
            cell.fetch_add(n, Ordering::Relaxed);
        }
    }
}

impl<const N: usize> Sharded<N> {
    /// The calling thread's cells, to add to.
    #[inline]
    pub fn here(&self) -> Cells<'_, N> {
        let shard = this_thread();
        Cells {
            cells: &self.shards[shard].0,
            owned: shard < OWNED,
        }
    }

    /// Counter `i`: the sum of every thread's additions.
    pub fn get(&self, i: usize) -> u64 {
        self.shards
            .iter()
            .fold(0u64, |sum, shard| sum.wrapping_add(shard.0[i].load(Ordering::Relaxed)))
    }
}

/// The calling thread's shard: its own, given at its first call, or the shared last one.
#[inline]
fn this_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|shard| {
        if shard.get() == usize::MAX {
            // Never given twice: a shard's one writer is what makes its plain adds safe.
            shard.set(NEXT.fetch_add(1, Ordering::Relaxed).min(OWNED));
        }
        shard.get()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn additions_from_more_threads_than_shards_all_count() {
        let counters = std::sync::Arc::new(Sharded::<2>::default());
        let threads: Vec<_> = (0..OWNED * 2)
            .map(|_| {
                let counters = counters.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let cells = counters.here();
                        cells.add(0, 1);
                        cells.add(1, 3);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let n = (OWNED * 2 * 10_000) as u64;
        assert_eq!((counters.get(0), counters.get(1)), (n, 3 * n));
    }
}
