//! A bound on how many of a stateless plugin's calls run at once, taken and given back
//! on every call. tokio's `Semaphore` gives a permit back under a mutex even when
//! nobody waits (1.2 % of the host's CPU in the stateless echo benchmark); here a free
//! slot costs one compare-and-swap to take and one subtraction to give back, and only a
//! call that finds every slot taken pays for waiting.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// At most `limit` holders of a [`Slot`] at once.
#[derive(Debug)]
pub struct CallSlots {
    limit: usize,
    taken: AtomicUsize,
    /// Calls waiting for a slot: a slot given back wakes one only if there are any.
    waiting: AtomicUsize,
    freed: Notify,
}

/// A slot, given back when dropped.
#[derive(Debug)]
pub struct Slot<'a>(&'a CallSlots);

impl CallSlots {
    /// `limit` slots (at least one), none taken.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            taken: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// How many slots there are.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot, if one is free now and no call waits for one (a slot given back goes
    /// to the calls that waited, not to the next to arrive).
    pub fn try_take(&self) -> Option<Slot<'_>> {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.take_free()
    }

    /// A free slot, whoever waits.
    fn take_free(&self) -> Option<Slot<'_>> {
        self.taken
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |taken| {
                (taken < self.limit).then_some(taken + 1)
            })
            .ok()
            .map(|_| Slot(self))
    }

    /// A slot, once one is free. A call that arrives while others wait waits too; the
    /// waiting are woken in turn, but any of them awake may take a slot given back.
    pub async fn take(&self) -> Slot<'_> {
        if let Some(slot) = self.try_take() {
            return slot;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(self);
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // Registered before the second look: a slot given back in between wakes us.
            freed.as_mut().enable();
            if let Some(slot) = self.take_free() {
                return slot;
            }
            freed.await;
        }
    }
}

/// Counts a call among the waiting while it lives (also when its wait is dropped).
struct Waiting<'a>(&'a CallSlots);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let slots = self.0;
        slots.taken.fetch_sub(1, Ordering::Release);
        if slots.waiting.load(Ordering::SeqCst) > 0 {
            // Wakes one waiter, or lets the next to wait find the slot at once.
            slots.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_limit_is_taken_and_a_slot_given_back_can_be_taken_again() {
        let slots = CallSlots::new(2);
        let a = slots.try_take().expect("free");
        let _b = slots.try_take().expect("free");
        assert!(slots.try_take().is_none());
        drop(a);
        assert!(slots.try_take().is_some());
    }

    // One thread: the waiter runs only when this test yields, so nothing takes the slot
    // given back before the newcomer below asks for it.
    #[tokio::test]
    async fn a_waiting_call_gets_the_slot_given_back() {
        let slots = std::sync::Arc::new(CallSlots::new(1));
        let held = slots.try_take().expect("free");
        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move {
                let _slot = slots.take().await;
            })
        };
        // Only a given-back slot can end the wait.
        while slots.waiting.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished());
        drop(held);
        // The slot given back is the waiter's, not the next call's to arrive.
        assert!(slots.try_take().is_none(), "a newcomer took the waiter's slot");
        waiter.await.expect("the waiter got the slot");
        assert_eq!(slots.waiting.load(Ordering::SeqCst), 0);
        assert!(slots.try_take().is_some(), "and gave it back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_calls_share_few_slots_without_exceeding_them() {
        let slots = std::sync::Arc::new(CallSlots::new(3));
        let most = std::sync::Arc::new(AtomicUsize::new(0));
        let now = std::sync::Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..64)
            .map(|_| {
                let (slots, most, now) = (slots.clone(), most.clone(), now.clone());
                tokio::spawn(async move {
                    for _ in 0..50 {
                        let _slot = slots.take().await;
                        let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(running, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for call in calls {
            call.await.expect("every call ends");
        }
        assert_eq!(most.load(Ordering::SeqCst), 3);
    }
}
