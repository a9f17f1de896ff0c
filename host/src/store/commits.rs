//! How far a store's writes have got, for a store whose `set` and `delete` return
//! before the write is durable. Every accepted write takes the next number; a commit
//! *settles* every write up to a number, durable or lost. The output gate reads the two
//! numbers without a lock (whether anything is unsettled) and is told of each
//! settlement; [`Commits::wait`] blocks until a write is settled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

use super::StoreError;

/// The number of an accepted write: 1 for the first, 0 for "none yet".
pub type WriteNumber = u64;

/// What is told of each settlement.
pub trait Settled: Send + Sync {
    /// Every write numbered up to `through` is settled: durable if `outcome` is `Ok`,
    /// lost (never written) otherwise, and so is everything unsettled below it.
    fn settled(&self, through: WriteNumber, outcome: Result<(), &StoreError>);
}

/// How many lost ranges [`Commits::wait`] can still tell apart: a waiter that slept
/// through more failures than this is told of the oldest it can see.
const FAILURES_KEPT: usize = 16;

/// The numbers of a store's writes: accepted, settled, lost.
#[derive(Default)]
pub struct Commits {
    accepted: AtomicU64,
    settled: AtomicU64,
    /// Ranges of lost writes, `(after, through]`, the newest last.
    failures: Mutex<VecDeque<(WriteNumber, WriteNumber, StoreError)>>,
    /// Wakes [`Commits::wait`].
    changed: Condvar,
    listeners: Mutex<Vec<Weak<dyn Settled>>>,
}

impl Commits {
    /// A tracker with nothing accepted.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// The number of the newest accepted write.
    pub fn accepted(&self) -> WriteNumber {
        self.accepted.load(Ordering::Acquire)
    }

    /// Every write up to this number is settled.
    pub fn settled_through(&self) -> WriteNumber {
        self.settled.load(Ordering::Acquire)
    }

    /// Whether some accepted write is not settled yet.
    pub fn unsettled(&self) -> bool {
        self.settled_through() < self.accepted()
    }

    /// Notes that write `number` was accepted. The store calls it in increasing order,
    /// under the lock that gives out the numbers.
    pub fn accept(&self, number: WriteNumber) {
        self.accepted.store(number, Ordering::Release);
    }

    /// Settles every write through `through`, and tells the listeners, then the waiters.
    pub fn settle(&self, through: WriteNumber, outcome: Result<(), StoreError>) {
        if let Err(error) = &outcome {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            failures.push_back((self.settled_through(), through, error.clone()));
            if failures.len() > FAILURES_KEPT {
                failures.pop_front();
            }
        }
        self.settled.fetch_max(through, Ordering::AcqRel);
        let listeners: Vec<_> = {
            let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            listeners.retain(|listener| listener.strong_count() > 0);
            listeners.iter().filter_map(Weak::upgrade).collect()
        };
        for listener in listeners {
            listener.settled(through, outcome.as_ref().map(|_| ()));
        }
        // Under the lock [`Commits::wait`] checks under: no wake-up is missed.
        let _failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
    }

    /// Tells `listener` of every settlement from now on, for as long as it lives.
    pub fn listen(&self, listener: Weak<dyn Settled>) {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner()).push(listener);
    }

    /// Blocks until write `number` is settled: `Ok` if it is durable.
    pub fn wait(&self, number: WriteNumber) -> Result<(), StoreError> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        while self.settled_through() < number {
            failures = self.changed.wait(failures).unwrap_or_else(|p| p.into_inner());
        }
        match failures
            .iter()
            .find(|(after, through, _)| (*after + 1..=*through).contains(&number))
        {
            Some((.., error)) => Err(error.clone()),
            None if failures.front().is_some_and(|(after, ..)| number <= *after) && failures.len() == FAILURES_KEPT => {
                // Too old to tell: say so rather than claim it is durable.
                Err(StoreError::Unavailable("the write's outcome is no longer known".into()))
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Told(Mutex<Vec<(WriteNumber, bool)>>);

    impl Settled for Told {
        fn settled(&self, through: WriteNumber, outcome: Result<(), &StoreError>) {
            self.0.lock().unwrap().push((through, outcome.is_ok()));
        }
    }

    #[test]
    fn waits_end_with_the_outcome_of_the_range_that_settled_them() {
        let commits = Commits::new();
        let told = Arc::new(Told::default());
        commits.listen(Arc::downgrade(&told) as Weak<dyn Settled>);
        for n in 1..=5 {
            commits.accept(n);
        }
        assert!(commits.unsettled());
        commits.settle(2, Ok(()));
        commits.settle(4, Err(StoreError::Unavailable("disk full".into())));
        assert!(commits.unsettled(), "5 is still open");
        commits.settle(5, Ok(()));
        assert!(!commits.unsettled());
        assert_eq!(commits.wait(1), Ok(()));
        assert_eq!(commits.wait(2), Ok(()));
        assert!(commits.wait(3).is_err());
        assert!(commits.wait(4).is_err());
        assert_eq!(commits.wait(5), Ok(()));
        assert_eq!(*told.0.lock().unwrap(), [(2, true), (4, false), (5, true)]);
        drop(told);
        commits.settle(5, Ok(())); // a listener gone is simply forgotten
    }

    #[test]
    fn a_waiter_wakes_when_its_write_settles() {
        let commits = Commits::new();
        commits.accept(1);
        let waiter = std::thread::spawn({
            let commits = commits.clone();
            move || commits.wait(1)
        });
        commits.settle(1, Ok(()));
        assert_eq!(waiter.join().unwrap(), Ok(()));
    }
}
