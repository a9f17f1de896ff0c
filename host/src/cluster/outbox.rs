//! The messages a host has yet to publish: numbered in the order they were queued
//! (receivers drop a number they have seen), encoded (and tagged) once, bounded in bytes.
//!
//! Queuing never waits: the registry queues under its own lock, so that a snapshot of
//! the host's connections and the changes after it are numbered in the order they
//! happened. While Redis is unreachable the queue fills; past its bound new messages
//! are dropped and counted, and the state exchange after the reconnection repairs
//! what the others know of this host's connections.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Notify;

use super::wire::{self, Body, BusKey, Envelope, Header, HostNumber, MemberRef};
use crate::conn::ConnId;

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

struct Queue {
    /// The host's number, which its messages carry.
    origin: HostNumber,
    seq: u64,
    items: VecDeque<(Target, Bytes)>,
    bytes: usize,
    /// Taken and not yet reported [`Outbox::done`].
    in_flight: usize,
}

/// The queue of encoded messages.
pub struct Outbox {
    incarnation: u64,
    max_bytes: usize,
    key: Option<BusKey>,
    queue: Mutex<Queue>,
    ready: Notify,
    /// Signalled when taken messages are done with.
    flushed: Notify,
    dropped: AtomicU64,
}

/// Milliseconds since the Unix epoch, as messages carry them.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

impl Outbox {
    /// An empty queue of host `origin`'s messages, holding at most `max_bytes` of them,
    /// tagged with `key` if the cluster has a secret.
    pub fn new(origin: HostNumber, incarnation: u64, max_bytes: usize, key: Option<BusKey>) -> Self {
        Self {
            incarnation,
            max_bytes,
            key,
            queue: Mutex::new(Queue {
                origin,
                seq: 0,
                items: VecDeque::new(),
                bytes: 0,
                in_flight: 0,
            }),
            ready: Notify::new(),
            flushed: Notify::new(),
            dropped: AtomicU64::new(0),
        }
    }

    fn header(&self, queue: &Queue) -> Header {
        Header {
            origin: queue.origin,
            incarnation: self.incarnation,
            sent_ms: now_ms(),
        }
    }

    /// Numbers, encodes and queues a message; drops it if the queue is full.
    pub fn push(&self, target: Target, body: Body) {
        let mut queue = self.lock();
        queue.seq += 1;
        let header = self.header(&queue);
        let bytes = Envelope {
            origin: header.origin,
            incarnation: header.incarnation,
            seq: queue.seq,
            sent_ms: header.sent_ms,
            body,
        }
        .encode(self.key.as_ref());
        self.enqueue(&mut queue, target, bytes);
        drop(queue);
        self.ready.notify_one();
    }

    /// Numbers, encodes and queues the host's whole state, in parts (see
    /// [`wire::encode_state`]), to every host: as a `Hello` if `hello`.
    pub fn push_state<'a, G>(&self, hello: bool, members: impl Iterator<Item = MemberRef<'a, G>>)
    where
        G: ExactSizeIterator<Item = &'a str>,
    {
        let mut queue = self.lock();
        let header = self.header(&queue);
        let parts = wire::encode_state(header, queue.seq + 1, hello, members, self.key.as_ref());
        queue.seq += parts.len() as u64;
        for part in parts {
            self.enqueue(&mut queue, Target::All, part);
        }
        drop(queue);
        self.ready.notify_one();
    }

    /// Queues the handshake facts of connection `conn` (`None`: it closed), in order with
    /// the messages, outside their numbering.
    pub fn push_info(&self, conn: ConnId, info: Option<Bytes>) {
        self.enqueue(&mut self.lock(), Target::Info(conn), info.unwrap_or_default());
        self.ready.notify_one();
    }

    /// Queues `bytes` unless the queue is full; the caller wakes the taker once it has
    /// let go of the lock (woken under it, the taker would only wait for the lock).
    fn enqueue(&self, queue: &mut Queue, target: Target, bytes: Bytes) {
        if queue.bytes + bytes.len() + ITEM_COST > self.max_bytes {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.bytes += bytes.len() + ITEM_COST;
        queue.items.push_back((target, bytes));
    }

    /// The host took number `origin`: what is queued under the old one is dropped
    /// (counted), and what is queued from now on carries the new one.
    pub fn renumber(&self, origin: HostNumber) {
        let mut queue = self.lock();
        let dropped = queue.items.len() as u64;
        queue.items.clear();
        queue.bytes = 0;
        queue.origin = origin;
        self.dropped.fetch_add(dropped, Ordering::Relaxed);
        drop(queue);
        self.flushed.notify_waiters();
    }

    /// The key messages are tagged with, if any.
    pub fn key(&self) -> Option<&BusKey> {
        self.key.as_ref()
    }

    /// Moves queued messages into `into`, waiting for one if none is queued: at most
    /// `max` of them, and no more once they hold `max_bytes` (one at least).
    pub async fn take(&self, max: usize, max_bytes: usize, into: &mut Vec<(Target, Bytes)>) {
        loop {
            // Registered before the check, so that a push between the two wakes it.
            let ready = self.ready.notified();
            {
                let mut queue = self.lock();
                if !queue.items.is_empty() {
                    let queue = &mut *queue;
                    let mut bytes = 0;
                    while let Some((_, next)) = queue.items.front() {
                        if into.len() >= max || (bytes > 0 && bytes + next.len() > max_bytes) {
                            break;
                        }
                        let (target, next) = queue.items.pop_front().expect("checked above");
                        bytes += next.len();
                        queue.bytes -= next.len() + ITEM_COST;
                        queue.in_flight += 1;
                        into.push((target, next));
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

    /// Messages dropped so far because the queue was full (or under a lost number).
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
            sent_ms: 0,
            body: Body::Heartbeat,
        }
        .encode(None)
        .len();
        let outbox = Outbox::new(1, 7, 3 * (heartbeat_len + ITEM_COST), None);
        for _ in 0..4 {
            outbox.push(Target::All, Body::Heartbeat);
        }
        assert_eq!(outbox.dropped(), 1);
        let mut got = Vec::new();
        outbox.take(2, usize::MAX, &mut got).await;
        assert_eq!(got.len(), 2);
        outbox.push(Target::Host(3), Body::Bye);
        let mut more = Vec::new();
        outbox.take(10, usize::MAX, &mut more).await;
        got.extend(more);
        let seqs: Vec<(Target, u64)> = got
            .into_iter()
            .map(|(target, bytes)| (target, Envelope::decode(bytes, None).unwrap().seq))
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
        let outbox = Outbox::new(1, 7, 10 * ITEM_COST, None);
        for conn in 0..100 {
            outbox.push_info(conn, None);
        }
        assert_eq!(outbox.dropped(), 90);
        let mut got = Vec::new();
        outbox.take(1000, usize::MAX, &mut got).await;
        assert_eq!(got.len(), 10);
    }

    #[tokio::test]
    async fn a_take_stops_at_its_bytes_and_a_renumbering_drops_the_old_numbers_messages() {
        let key = BusKey::derive(b"k");
        let outbox = Outbox::new(1, 7, 1 << 20, Some(key.clone()));
        let big = || Body::Broadcast {
            message: crate::conn::Outgoing::Binary(Bytes::from(vec![0; 1000])),
            except: None,
        };
        for _ in 0..5 {
            outbox.push(Target::All, big());
        }
        let mut got = Vec::new();
        outbox.take(100, 2500, &mut got).await;
        assert_eq!(got.len(), 2, "two 1 KB messages fit in 2.5 KB, not three");
        let envelope = Envelope::decode(got[0].1.clone(), Some(&key)).unwrap();
        assert_eq!((envelope.origin, envelope.seq), (1, 1));
        // One at least, however large.
        let mut one = Vec::new();
        outbox.take(100, 10, &mut one).await;
        assert_eq!(one.len(), 1);
        outbox.renumber(9);
        assert_eq!(outbox.dropped(), 2);
        outbox.push(Target::All, Body::Heartbeat);
        let mut after = Vec::new();
        outbox.take(100, usize::MAX, &mut after).await;
        let envelope = Envelope::decode(after[0].1.clone(), Some(&key)).unwrap();
        assert_eq!((envelope.origin, envelope.seq), (9, 6));
    }

    #[tokio::test]
    async fn take_waits_for_a_push() {
        let outbox = std::sync::Arc::new(Outbox::new(1, 7, 1 << 20, None));
        let taker = {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                outbox.take(8, usize::MAX, &mut got).await;
                got.len()
            })
        };
        tokio::task::yield_now().await;
        outbox.push(Target::All, Body::Heartbeat);
        assert_eq!(taker.await.unwrap(), 1);
    }
}
