//! The messages a host has yet to publish: numbered in the order they were queued
//! (receivers drop a number they have seen), encoded once, bounded in bytes.
//!
//! Queuing never waits: the registry queues under its own lock, so that a snapshot of
//! the host's connections and the changes after it are numbered in the order they
//! happened. While Redis is unreachable the queue fills; past its bound new messages
//! are dropped and counted, and the state exchange after the reconnection repairs
//! what the others know of this host's connections.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use super::wire::{Body, Envelope, HostNumber};
use crate::plugin::ConnId;

/// What every queued item is charged beyond its bytes: its place in the queue, and the
/// command that publishes it. A forgotten connection's facts are no bytes at all, and
/// must count against the bound too (while Redis is away, every close queues one).
const ITEM_COST: usize = 64;

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every host (the cluster's bus channel).
    All,
    /// One host (its own channel).
    Host(HostNumber),
    /// Not a message: the handshake facts of one of this host's connections, kept in
    /// Redis for the other hosts' `info` (empty bytes: the connection closed).
    Info(ConnId),
}

#[derive(Default)]
struct Queue {
    seq: u64,
    items: VecDeque<(Target, Bytes)>,
    bytes: usize,
    /// Taken and not yet reported [`Outbox::done`].
    in_flight: usize,
}

/// The queue of encoded messages.
pub struct Outbox {
    origin: HostNumber,
    incarnation: u64,
    max_bytes: usize,
    queue: Mutex<Queue>,
    ready: Notify,
    /// Signalled when taken messages are done with.
    flushed: Notify,
    dropped: AtomicU64,
}

impl Outbox {
    /// An empty queue of host `origin`'s messages, holding at most `max_bytes` of them.
    pub fn new(origin: HostNumber, incarnation: u64, max_bytes: usize) -> Self {
        Self {
            origin,
            incarnation,
            max_bytes,
            queue: Mutex::default(),
            ready: Notify::new(),
            flushed: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    /// Numbers, encodes and queues a message; drops it if the queue is full.
    pub fn push(&self, target: Target, body: Body) {
        let mut queue = self.lock();
        queue.seq += 1;
        let bytes = Envelope {
            origin: self.origin,
            incarnation: self.incarnation,
            seq: queue.seq,
            body,
        }
        .encode();
        self.enqueue(queue, target, bytes);
    }

    /// Queues the handshake facts of connection `conn` (`None`: it closed), in order with
    /// the messages, outside their numbering.
    pub fn push_info(&self, conn: ConnId, info: Option<Bytes>) {
        self.enqueue(self.lock(), Target::Info(conn), info.unwrap_or_default());
    }

    fn enqueue(&self, mut queue: MutexGuard<'_, Queue>, target: Target, bytes: Bytes) {
        if queue.bytes + bytes.len() + ITEM_COST > self.max_bytes {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.bytes += bytes.len() + ITEM_COST;
        queue.items.push_back((target, bytes));
        drop(queue);
        self.ready.notify_one();
    }

    /// Moves up to `max` queued messages into `into`, waiting for one if none is queued.
    pub async fn take(&self, max: usize, into: &mut Vec<(Target, Bytes)>) {
        loop {
            // Registered before the check, so that a push between the two wakes it.
            let ready = self.ready.notified();
            {
                let mut queue = self.lock();
                if !queue.items.is_empty() {
                    let n = max.min(queue.items.len());
                    queue.in_flight += n;
                    let queue = &mut *queue;
                    for (target, bytes) in queue.items.drain(..n) {
                        queue.bytes -= bytes.len() + ITEM_COST;
                        into.push((target, bytes));
                    }
                    return;
                }
            }
            ready.await;
        }
    }

    /// Reports that `n` taken messages were published (or given up on).
    pub fn done(&self, n: usize) {
        let mut queue = self.lock();
        queue.in_flight = queue.in_flight.saturating_sub(n);
        drop(queue);
        self.flushed.notify_waiters();
    }

    /// Waits until every message queued so far has been taken and done with.
    pub async fn drained(&self) {
        loop {
            let flushed = self.flushed.notified();
            {
                let queue = self.lock();
                if queue.items.is_empty() && queue.in_flight == 0 {
                    return;
                }
            }
            flushed.await;
        }
    }

    /// Messages dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn numbers_in_order_and_bounds_bytes() {
        let heartbeat_len = Envelope {
            origin: 1,
            incarnation: 7,
            seq: 1,
            body: Body::Heartbeat,
        }
        .encode()
        .len();
        let outbox = Outbox::new(1, 7, 3 * (heartbeat_len + ITEM_COST));
        for _ in 0..4 {
            outbox.push(Target::All, Body::Heartbeat);
        }
        assert_eq!(outbox.dropped(), 1);
        let mut got = Vec::new();
        outbox.take(2, &mut got).await;
        assert_eq!(got.len(), 2);
        outbox.push(Target::Host(3), Body::Bye);
        outbox.take(10, &mut got).await;
        let seqs: Vec<(Target, u64)> = got
            .into_iter()
            .map(|(target, bytes)| (target, Envelope::decode(bytes).unwrap().seq))
            .collect();
        // The dropped message used number 4: receivers see a gap, never a reordering.
        assert_eq!(
            seqs,
            [
                (Target::All, 1),
                (Target::All, 2),
                (Target::All, 3),
                (Target::Host(3), 5)
            ]
        );
        // Taken is not yet published.
        let drained = outbox.drained();
        tokio::pin!(drained);
        assert!(futures_poll_once(drained.as_mut()).await.is_none());
        outbox.done(4);
        drained.await;
    }

    /// Polls a future once: `Some` if it is ready.
    async fn futures_poll_once<F: Future + Unpin>(future: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = future => Some(out),
            () = std::future::ready(()) => None,
        }
    }

    #[tokio::test]
    async fn forgotten_connections_count_against_the_bound() {
        let outbox = Outbox::new(1, 7, 10 * ITEM_COST);
        for conn in 0..100 {
            outbox.push_info(conn, None);
        }
        assert_eq!(outbox.dropped(), 90);
        let mut got = Vec::new();
        outbox.take(1000, &mut got).await;
        assert_eq!(got.len(), 10);
    }

    #[tokio::test]
    async fn take_waits_for_a_push() {
        let outbox = std::sync::Arc::new(Outbox::new(1, 7, 1 << 20));
        let taker = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                outbox.take(8, &mut got).await;
                got.len()
            })
        };
        tokio::task::yield_now().await;
        outbox.push(Target::All, Body::Heartbeat);
        assert_eq!(taker.await.unwrap(), 1);
    }
}
