//! The output gate: what a plugin's events make leave the host waits until the store
//! writes made before it are durable. The store's writes return before their commit
//! (group commit), so without the gate a client could see a consequence of a write
//! that a crash then loses. With it, a write can be lost only if nothing that depended
//! on it left the host.
//!
//! [`OutputGate`] wraps the [`HostServices`] of a plugin whose store commits in groups.
//! While a write is unsettled, or anything is held, sends, closes, broadcasts and group
//! publishes are held in the order they were made, each with the number of the newest
//! write made before it; a broadcast or a publish keeps the recipients it had on this
//! host when it was made, and reaches the other hosts of a cluster as one message when
//! released (they find its recipients when it comes, as for any broadcast). When a
//! commit settles a write, what waited for it is released, in order.
//! If the commit failed, nothing that waited for it is released: each connection it
//! was for is closed with 1011 instead, so that a client never misses a message
//! silently. A plugin that never writes pays two atomic loads per output.
//!
//! The gate holds [`MAX_HELD`] outputs at most (a broadcast counts as one: it adds one
//! message to each queue), and the recipients of [`MAX_HELD_RECIPIENTS`]: past either,
//! the plugin's call waits for the commit, so that what a commit releases at once stays
//! well under what a connection's queue takes in one go, and the gate's memory bounded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use super::{Audience, CloseCode, ConnId, ConnectionInfo, HostError, HostServices, Outgoing};
use crate::blocking::block_here;
use crate::store::{Commits, Settled, StoreError, WriteNumber};

/// The reason of the 1011 a connection gets when output for it was lost.
pub const LOST_REASON: &str = "store write failed";

/// Outputs the gate holds before a plugin's call waits for the commit.
pub const MAX_HELD: usize = 1024;
/// Recipients of held broadcasts and publishes (8 bytes each) the gate holds before a
/// plugin's call waits for the commit.
pub const MAX_HELD_RECIPIENTS: usize = 1 << 20;

/// Output held until a write is settled.
enum Held {
    Send(ConnId, Outgoing),
    Close(ConnId, CloseCode, String),
    /// A broadcast or a group publish: to the recipients it had on this host when it
    /// was made, and to those of the other hosts of a cluster, if they have any.
    ToEach {
        here: Vec<ConnId>,
        elsewhere: Option<Elsewhere>,
        message: Outgoing,
    },
    /// Something else that must not happen before the writes made before it are
    /// durable (an `on-upgrade` decision): told whether they are.
    Then(Box<dyn FnOnce(bool) + Send>),
}

/// The part of a held broadcast or publish for the other hosts of a cluster.
struct Elsewhere {
    /// The group published to; none for a broadcast.
    group: Option<String>,
    except: Option<ConnId>,
}

impl Elsewhere {
    fn audience(&self) -> Audience<'_> {
        match &self.group {
            Some(group) => Audience::Group(group),
            None => Audience::Everyone,
        }
    }
}

impl Held {
    /// Recipients it holds, against [`MAX_HELD_RECIPIENTS`].
    fn recipients(&self) -> usize {
        match self {
            Held::ToEach { here, .. } => here.len(),
            _ => 0,
        }
    }
}

/// What is held, in order, each with the write it waits for.
#[derive(Default)]
struct Queue {
    items: VecDeque<(WriteNumber, Held)>,
    /// The items' [`Held::recipients`].
    recipients: usize,
}

impl Queue {
    fn full(&self) -> bool {
        self.items.len() >= MAX_HELD || self.recipients >= MAX_HELD_RECIPIENTS
    }
}

/// The gate in front of one plugin's [`HostServices`].
pub struct OutputGate {
    inner: Arc<dyn HostServices>,
    commits: Arc<Commits>,
    held: Mutex<Queue>,
    /// Whether `held` has anything: read without its lock on every output.
    holding: AtomicBool,
    /// A commit failed since [`OutputGate::take_lost`] last looked.
    lost: AtomicBool,
    /// Something was held once: see [`OutputGate::has_held`].
    held_once: AtomicBool,
    /// Wakes calls waiting for the queue to fall under [`MAX_HELD`].
    drained: Condvar,
}

impl OutputGate {
    /// A gate in front of `inner` for writes followed by `commits`.
    pub fn new(inner: Arc<dyn HostServices>, commits: Arc<Commits>) -> Arc<Self> {
        let gate = Arc::new(Self {
            inner,
            commits,
            held: Mutex::default(),
            holding: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            held_once: AtomicBool::new(false),
            drained: Condvar::new(),
        });
        gate.commits.listen(Arc::downgrade(&gate) as Weak<dyn Settled>);
        gate
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether output made now may have to wait (a write is unsettled, or something is
    /// held): the lock-free check before [`OutputGate::hold`].
    pub fn may_hold(&self) -> bool {
        self.holding.load(Ordering::Acquire) || self.commits.unsettled()
    }

    /// Holds `held` if it must wait; gives it back if it may leave now.
    fn hold(&self, held: Held) -> Option<Held> {
        if !self.may_hold() {
            return Some(held);
        }
        let newest = self.commits.accepted();
        let mut queue = self.lock();
        if queue.full() {
            queue = block_here(|| {
                self.drained
                    .wait_while(queue, |queue| queue.full())
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
            });
        }
        // Checked under the lock the release takes after the settlement is counted: a
        // write settled since is released by that release, or leaves now.
        if queue.items.is_empty() && self.commits.settled_through() >= newest {
            return Some(held);
        }
        queue.recipients += held.recipients();
        queue.items.push_back((newest, held));
        self.holding.store(true, Ordering::Release);
        self.held_once.store(true, Ordering::Relaxed);
        None
    }

    /// Whether anything was ever held. What the gate releases reaches a connection's
    /// queue at any time, also while the connection waits for a call whose replies it
    /// writes itself (a stateless plugin's): once the gate has held output, a reply kept
    /// beside the call could overtake output of an earlier event, so replies take the
    /// queue from then on. A plugin that never writes keeps the shortcut.
    pub fn has_held(&self) -> bool {
        self.held_once.load(Ordering::Relaxed)
    }

    /// Runs `then(true)` once what was made before now has left (at once if nothing
    /// waits), or `then(false)` if a write it waited for was lost.
    pub fn then(&self, then: impl FnOnce(bool) + Send + 'static) {
        if let Some(Held::Then(then)) = self.hold(Held::Then(Box::new(then))) {
            then(true);
        }
    }

    /// A broadcast or a publish to `to`: `now` if nothing is held, else held for the
    /// recipients it has now; how many.
    fn to_each(
        &self,
        to: Audience<'_>,
        message: Outgoing,
        except: Option<ConnId>,
        now: impl FnOnce(Outgoing) -> u32,
    ) -> u32 {
        if !self.may_hold() {
            return now(message);
        }
        let (here, elsewhere) = self.inner.recipients(to, except);
        let count = here.len() as u32 + elsewhere;
        let elsewhere = (elsewhere > 0).then(|| Elsewhere {
            group: match to {
                Audience::Group(group) => Some(group.to_owned()),
                Audience::Everyone => None,
            },
            except,
        });
        let held = Held::ToEach {
            here,
            elsewhere,
            message,
        };
        match self.hold(held) {
            Some(Held::ToEach { message, .. }) => now(message),
            _ => count,
        }
    }

    /// Whether a commit failed since the last call: the plugin's memory may then hold
    /// what the store lost, and its instance is to start again from the store.
    pub fn take_lost(&self) -> bool {
        self.lost.swap(false, Ordering::AcqRel)
    }

    /// What a held send or close answers: `Gone` for a connection the host no longer
    /// has (one that goes before the release simply misses it).
    fn known(&self, conn: ConnId) -> Result<(), HostError> {
        // Not `info`: in a cluster that fetches another host's connection from Redis.
        self.inner.exists(conn).then_some(()).ok_or(HostError::Gone)
    }

    fn release(&self, held: Held) {
        // A connection gone meanwhile: what was for it has no one to reach.
        match held {
            Held::Send(conn, message) => {
                let _ = self.inner.send(conn, message);
            }
            Held::Close(conn, code, reason) => {
                let _ = self.inner.close(conn, code, reason);
            }
            Held::ToEach {
                here,
                elsewhere,
                message,
            } => {
                self.inner.send_each(&here, &message);
                if let Some(elsewhere) = elsewhere {
                    self.inner
                        .tell_other_hosts(elsewhere.audience(), message, elsewhere.except);
                }
            }
            Held::Then(then) => then(true),
        }
    }

    fn refuse(&self, held: Held) {
        let lost = |conn| {
            let _ = self.inner.close(conn, CloseCode::INTERNAL_ERROR, LOST_REASON.into());
        };
        match held {
            Held::Send(conn, _) | Held::Close(conn, ..) => lost(conn),
            Held::ToEach { here, elsewhere, .. } => {
                if let Some(elsewhere) = elsewhere {
                    // The other hosts' recipients as they are now: every one but this
                    // host's.
                    let to = elsewhere.audience();
                    let (now_here, _) = self.inner.recipients(to, elsewhere.except);
                    let now_here: std::collections::HashSet<ConnId> = now_here.into_iter().collect();
                    let mut all = match to {
                        Audience::Everyone => self.inner.connections(),
                        Audience::Group(group) => self.inner.group_members(group),
                    };
                    all.retain(|conn| Some(*conn) != elsewhere.except && !now_here.contains(conn));
                    all.into_iter().for_each(lost);
                }
                here.into_iter().for_each(lost);
            }
            Held::Then(then) => then(false),
        }
    }
}

impl Settled for OutputGate {
    fn settled(&self, through: WriteNumber, outcome: Result<(), &StoreError>) {
        if outcome.is_err() {
            self.lost.store(true, Ordering::Release);
        }
        let mut queue = self.lock();
        while queue.items.front().is_some_and(|(waits_for, _)| *waits_for <= through) {
            let (_, held) = queue.items.pop_front().expect("a front");
            queue.recipients -= held.recipients();
            // Under the lock: output made meanwhile queues behind, in order.
            match outcome {
                Ok(()) => self.release(held),
                Err(_) => self.refuse(held),
            }
        }
        if queue.items.is_empty() {
            self.holding.store(false, Ordering::Release);
        }
        self.drained.notify_all();
    }
}

impl HostServices for OutputGate {
    fn opened(&self, conn: ConnId) {
        self.inner.opened(conn);
    }

    fn closed(&self, conn: ConnId) {
        self.inner.closed(conn);
    }

    fn send(&self, conn: ConnId, message: Outgoing) -> Result<(), HostError> {
        match self.hold(Held::Send(conn, message)) {
            Some(Held::Send(conn, message)) => self.inner.send(conn, message),
            _ => self.known(conn),
        }
    }

    fn close(&self, conn: ConnId, code: CloseCode, reason: String) -> Result<(), HostError> {
        match self.hold(Held::Close(conn, code, reason)) {
            Some(Held::Close(conn, code, reason)) => self.inner.close(conn, code, reason),
            _ => self.known(conn),
        }
    }

    fn broadcast(&self, message: Outgoing, except: Option<ConnId>) -> u32 {
        self.to_each(Audience::Everyone, message, except, |message| {
            self.inner.broadcast(message, except)
        })
    }

    fn join(&self, conn: ConnId, group: &str) -> Result<(), HostError> {
        self.inner.join(conn, group)
    }

    fn leave(&self, conn: ConnId, group: &str) -> Result<(), HostError> {
        self.inner.leave(conn, group)
    }

    fn publish(&self, group: &str, message: Outgoing, except: Option<ConnId>) -> u32 {
        self.to_each(Audience::Group(group), message, except, |message| {
            self.inner.publish(group, message, except)
        })
    }

    fn recipients(&self, to: Audience<'_>, except: Option<ConnId>) -> (Vec<ConnId>, u32) {
        self.inner.recipients(to, except)
    }

    fn tell_other_hosts(&self, to: Audience<'_>, message: Outgoing, except: Option<ConnId>) -> u32 {
        self.inner.tell_other_hosts(to, message, except)
    }

    fn group_members(&self, group: &str) -> Vec<ConnId> {
        self.inner.group_members(group)
    }

    fn connections(&self) -> Vec<ConnId> {
        self.inner.connections()
    }

    fn info(&self, conn: ConnId) -> Option<Arc<ConnectionInfo>> {
        self.inner.info(conn)
    }

    fn exists(&self, conn: ConnId) -> bool {
        self.inner.exists(conn)
    }

    fn set_attachment(&self, conn: ConnId, data: Vec<u8>) -> Result<(), HostError> {
        self.inner.set_attachment(conn, data)
    }

    fn attachment(&self, conn: ConnId) -> Option<bytes::Bytes> {
        self.inner.attachment(conn)
    }

    fn overran(&self, conn: ConnId) {
        self.inner.overran(conn);
    }

    fn after_output(&self, then: Box<dyn FnOnce() + Send>) {
        // Lost or released, what came before is done with either way.
        self.then(move |_| then());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what reaches the host; three connections are open on it, and with
    /// `.1` two more (10 and 11) on another host of a cluster.
    #[derive(Default)]
    struct Host(Mutex<Vec<String>>, bool);

    impl Host {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
        fn record(&self, what: String) {
            self.0.lock().unwrap().push(what);
        }
    }

    fn text(message: &Outgoing) -> &str {
        match message {
            Outgoing::Text(text) => text.as_str(),
            Outgoing::Binary(_) => "binary",
        }
    }

    impl HostServices for Host {
        fn opened(&self, _: ConnId) {}
        fn closed(&self, _: ConnId) {}
        fn send(&self, conn: ConnId, message: Outgoing) -> Result<(), HostError> {
            self.record(format!("{conn} {}", text(&message)));
            Ok(())
        }
        fn close(&self, conn: ConnId, code: CloseCode, _: String) -> Result<(), HostError> {
            self.record(format!("{conn} close {}", code.get()));
            Ok(())
        }
        fn broadcast(&self, message: Outgoing, _: Option<ConnId>) -> u32 {
            self.record(format!("all {}", text(&message)));
            3
        }
        fn join(&self, _: ConnId, _: &str) -> Result<(), HostError> {
            Ok(())
        }
        fn leave(&self, _: ConnId, _: &str) -> Result<(), HostError> {
            Ok(())
        }
        fn publish(&self, group: &str, message: Outgoing, _: Option<ConnId>) -> u32 {
            self.record(format!("{group} {}", text(&message)));
            1
        }
        fn group_members(&self, _: &str) -> Vec<ConnId> {
            vec![2]
        }
        fn connections(&self) -> Vec<ConnId> {
            if self.1 { vec![1, 2, 3, 10, 11] } else { vec![1, 2, 3] }
        }
        fn recipients(&self, to: Audience<'_>, except: Option<ConnId>) -> (Vec<ConnId>, u32) {
            let mut here = match to {
                Audience::Everyone => vec![1, 2, 3],
                Audience::Group(_) => vec![2],
            };
            here.retain(|conn| Some(*conn) != except);
            let elsewhere = if self.1 && to == Audience::Everyone { 2 } else { 0 };
            (here, elsewhere)
        }
        fn tell_other_hosts(&self, _: Audience<'_>, message: Outgoing, _: Option<ConnId>) -> u32 {
            self.record(format!("others {}", text(&message)));
            2
        }
        fn info(&self, conn: ConnId) -> Option<Arc<ConnectionInfo>> {
            (1..=3).contains(&conn).then(|| {
                Arc::new(ConnectionInfo {
                    id: conn,
                    remote_address: "127.0.0.1:1".into(),
                    path: "/".into(),
                    query: None,
                    subprotocol: None,
                    headers: Default::default(),
                })
            })
        }
        fn set_attachment(&self, _: ConnId, _: Vec<u8>) -> Result<(), HostError> {
            Ok(())
        }
        fn attachment(&self, _: ConnId) -> Option<bytes::Bytes> {
            None
        }
        fn overran(&self, _: ConnId) {}
    }

    fn gate() -> (Arc<OutputGate>, Arc<Host>, Arc<Commits>) {
        let host = Arc::new(Host::default());
        let commits = Commits::new();
        (OutputGate::new(host.clone(), commits.clone()), host, commits)
    }

    fn say(text: &str) -> Outgoing {
        Outgoing::Text(text.to_owned().into())
    }

    #[test]
    fn output_passes_at_once_while_no_write_is_pending() {
        let (gate, host, _commits) = gate();
        assert!(!gate.may_hold());
        gate.send(1, say("a")).unwrap();
        assert_eq!(gate.broadcast(say("b"), None), 3);
        assert_eq!(host.take(), ["1 a", "all b"]);
    }

    #[test]
    fn output_after_a_write_waits_for_its_commit_and_leaves_in_order() {
        let (gate, host, commits) = gate();
        commits.accept(1);
        gate.send(1, say("a")).unwrap();
        // Recipients as they are now, and how many, at once.
        assert_eq!(gate.broadcast(say("b"), Some(3)), 2);
        assert_eq!(gate.publish("room", say("c"), None), 1);
        commits.accept(2);
        gate.close(1, CloseCode::SERVICE_RESTART, String::new()).unwrap();
        assert_eq!(gate.send(9, say("nobody")), Err(HostError::Gone), "held, to no one");
        let (tx, rx) = std::sync::mpsc::channel();
        gate.then(move |durable| tx.send(durable).unwrap());
        assert!(host.take().is_empty(), "held");
        commits.settle(1, Ok(()));
        assert_eq!(host.take(), ["1 a", "1 b", "2 b", "2 c"], "what waited for write 1");
        assert!(rx.try_recv().is_err(), "the decision waits for write 2");
        // Nothing may overtake what is still held, even with no write pending after it.
        commits.settle(2, Ok(()));
        assert_eq!(host.take(), ["1 close 1012", "9 nobody"]);
        assert_eq!(rx.try_recv(), Ok(true));
        assert!(!gate.may_hold());
        gate.send(3, say("d")).unwrap();
        assert_eq!(host.take(), ["3 d"], "straight through again");
    }

    #[test]
    fn in_a_cluster_a_held_broadcast_reaches_the_other_hosts_as_one_message() {
        let host = Arc::new(Host(Mutex::default(), true));
        let commits = Commits::new();
        let gate = OutputGate::new(host.clone(), commits.clone());
        commits.accept(1);
        assert_eq!(gate.broadcast(say("a"), Some(3)), 4, "two here, two elsewhere");
        assert!(host.take().is_empty(), "held");
        commits.settle(1, Ok(()));
        assert_eq!(host.take(), ["1 a", "2 a", "others a"]);
        // Lost: its recipients are closed, here and on the other host.
        commits.accept(2);
        gate.broadcast(say("b"), Some(3));
        commits.settle(2, Err(StoreError::Unavailable("no answer".into())));
        assert_eq!(
            host.take(),
            ["10 close 1011", "11 close 1011", "1 close 1011", "2 close 1011"]
        );
    }

    #[test]
    fn output_that_waited_for_a_lost_write_closes_its_connections_with_1011() {
        let (gate, host, commits) = gate();
        commits.accept(1);
        gate.send(1, say("a")).unwrap();
        gate.publish("room", say("b"), None);
        let (tx, rx) = std::sync::mpsc::channel();
        gate.then(move |durable| tx.send(durable).unwrap());
        commits.settle(1, Err(StoreError::Unavailable("disk full".into())));
        assert_eq!(
            host.take(),
            ["1 close 1011", "2 close 1011"],
            "nothing that depended on it"
        );
        assert_eq!(rx.try_recv(), Ok(false));
        gate.send(1, say("c")).unwrap();
        assert_eq!(host.take(), ["1 c"]);
    }

    #[test]
    fn past_the_bound_a_call_waits_for_the_commit() {
        let (gate, host, commits) = gate();
        commits.accept(1);
        for n in 0..MAX_HELD {
            gate.send(1, say(&n.to_string())).unwrap();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let waiting = std::thread::spawn({
            let gate = gate.clone();
            move || {
                gate.send(2, say("one more")).unwrap();
                tx.send(()).unwrap();
            }
        });
        // Blocked until the commit: it cannot have returned, however long it is given.
        assert!(rx.recv_timeout(std::time::Duration::from_millis(100)).is_err());
        commits.settle(1, Ok(()));
        waiting.join().unwrap();
        let sent = host.take();
        assert_eq!(sent.len(), MAX_HELD + 1);
        assert_eq!(sent.last().unwrap(), "2 one more", "after what was held");
    }
}
