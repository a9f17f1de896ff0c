//! What one host knows of the other hosts of its cluster: their open connections,
//! groups and attachments, rebuilt from the [`Envelope`]s they send. A state machine
//! over messages and instants, without I/O: the bus feeds it, the registry asks it.
//!
//! A host's view of another is eventually consistent: a `Hello` or `State` replaces
//! it whole, changes apply on top in the order the other host made them (Redis keeps
//! one connection's order to each subscriber), and a host not heard from for the
//! timeout is dropped with all its connections.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::wire::{Body, Envelope, HostNumber, Member};
use crate::plugin::{ConnId, Outgoing};

/// Bits of a connection id below the host number: a host hands out 2^37 ids.
pub const HOST_SHIFT: u32 = 37;

/// The host that owns a connection (0 outside a cluster).
pub fn host_of(conn: ConnId) -> HostNumber {
    (conn >> HOST_SHIFT) as HostNumber
}

/// The first connection id of a host; ids stay below 2^53, so JavaScript numbers hold them.
pub fn first_id(host: HostNumber) -> ConnId {
    (ConnId::from(host) << HOST_SHIFT) | 1
}

/// How long after a `Hello` the other hosts' answers are awaited before a host heard
/// from without its state prompts another one.
const HELLO_ANSWERED: Duration = Duration::from_secs(3);

/// What a received message asks this host to do, beyond updating the view.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Deliver to this host's own connections.
    Deliver(Delivery),
    /// Another host (re)joined: send it this host's whole state.
    SendState,
    /// Another process claims this host's number: ids may collide.
    Conflict,
}

/// A message for this host's connections.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// To every open connection but one.
    Broadcast(Outgoing, Option<ConnId>),
    /// To every member of a group but one.
    Publish(String, Outgoing, Option<ConnId>),
    /// To one connection.
    Send(ConnId, Outgoing),
    /// Close one connection.
    Close(ConnId, u16, String),
}

#[derive(Default)]
struct Remote {
    attachment: Option<Bytes>,
    groups: HashSet<String>,
}

struct Peer {
    incarnation: u64,
    last_seq: u64,
    heard: Instant,
    conns: HashMap<ConnId, Remote>,
    groups: HashMap<String, HashSet<ConnId>>,
}

impl Peer {
    fn new(incarnation: u64, seq: u64, heard: Instant) -> Self {
        Self {
            incarnation,
            last_seq: seq,
            heard,
            conns: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    fn replace(&mut self, members: Vec<Member>) {
        self.conns.clear();
        self.groups.clear();
        for member in members {
            self.open(member);
        }
    }

    fn open(&mut self, member: Member) {
        self.close(member.conn);
        let mut remote = Remote {
            attachment: member.attachment,
            groups: HashSet::new(),
        };
        for group in member.groups {
            self.groups.entry(group.clone()).or_default().insert(member.conn);
            remote.groups.insert(group);
        }
        self.conns.insert(member.conn, remote);
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(remote) = self.conns.remove(&conn) {
            for group in remote.groups {
                self.leave_group(conn, &group);
            }
        }
    }

    fn join(&mut self, conn: ConnId, group: String) {
        if let Some(remote) = self.conns.get_mut(&conn) {
            self.groups.entry(group.clone()).or_default().insert(conn);
            remote.groups.insert(group);
        }
    }

    fn leave(&mut self, conn: ConnId, group: &str) {
        if let Some(remote) = self.conns.get_mut(&conn) {
            remote.groups.remove(group);
            self.leave_group(conn, group);
        }
    }

    fn leave_group(&mut self, conn: ConnId, group: &str) {
        if let Some(members) = self.groups.get_mut(group) {
            members.remove(&conn);
            if members.is_empty() {
                self.groups.remove(group);
            }
        }
    }
}

/// The other hosts, as this one knows them.
pub struct View {
    me: HostNumber,
    incarnation: u64,
    peers: HashMap<HostNumber, Peer>,
    /// When this host last sent a `Hello` (which every host answers with its state).
    hello_at: Option<Instant>,
    /// A host was heard from whose state this host has not had: send a `Hello`.
    needs_hello: bool,
}

impl View {
    /// The view of host `me`, incarnation `incarnation`, before it has heard anyone.
    pub fn new(me: HostNumber, incarnation: u64) -> Self {
        Self {
            me,
            incarnation,
            peers: HashMap::new(),
            hello_at: None,
            needs_hello: false,
        }
    }

    /// How many other hosts it hears.
    pub fn hosts(&self) -> usize {
        self.peers.len()
    }

    /// Notes that this host sent a `Hello` at `now`: every host will answer with its state.
    pub fn hello_sent(&mut self, now: Instant) {
        self.hello_at = Some(now);
        self.needs_hello = false;
    }

    /// Whether a host was heard from whose state this one lacks (it was dropped as
    /// silent, or its `Hello` was missed) and no `Hello` asked for it lately. The
    /// caller sends a `Hello` and calls [`View::hello_sent`].
    pub fn needs_hello(&self) -> bool {
        self.needs_hello
    }

    /// Takes in a message received at `now`. A message this host sent itself, or one
    /// already seen, changes nothing.
    pub fn apply(&mut self, envelope: Envelope, now: Instant) -> Option<Effect> {
        let Envelope {
            origin,
            incarnation,
            seq,
            body,
        } = envelope;
        if origin == self.me {
            return (incarnation != self.incarnation).then_some(Effect::Conflict);
        }
        let mut new = false;
        let peer = self.peers.entry(origin).or_insert_with(|| {
            new = true;
            Peer::new(incarnation, seq.wrapping_sub(1), now)
        });
        if peer.incarnation != incarnation {
            // The host restarted: what its predecessor had is gone.
            *peer = Peer::new(incarnation, seq.wrapping_sub(1), now);
            new = true;
        } else if seq <= peer.last_seq {
            return None;
        }
        let whole = matches!(body, Body::Hello(_) | Body::State(_));
        let asked = self
            .hello_at
            .is_some_and(|at| now.saturating_duration_since(at) < HELLO_ANSWERED);
        if new && !whole && !asked {
            self.needs_hello = true;
        }
        peer.last_seq = seq;
        peer.heard = now;
        match body {
            Body::Hello(members) => {
                peer.replace(members);
                return Some(Effect::SendState);
            }
            Body::State(members) => peer.replace(members),
            Body::Heartbeat => {}
            Body::Bye => {
                self.peers.remove(&origin);
            }
            Body::Opened(member) => peer.open(member),
            Body::Closed(conn) => peer.close(conn),
            Body::Joined(conn, group) => peer.join(conn, group),
            Body::Left(conn, group) => peer.leave(conn, &group),
            Body::Attached(conn, attachment) => {
                if let Some(remote) = peer.conns.get_mut(&conn) {
                    remote.attachment = attachment;
                }
            }
            Body::Broadcast { message, except } => {
                return Some(Effect::Deliver(Delivery::Broadcast(message, except)));
            }
            Body::Publish { group, message, except } => {
                return Some(Effect::Deliver(Delivery::Publish(group, message, except)));
            }
            // Directed messages arrive on this host's own channel; the check is cheap.
            Body::Send(conn, message) if host_of(conn) == self.me => {
                return Some(Effect::Deliver(Delivery::Send(conn, message)));
            }
            Body::Close(conn, code, reason) if host_of(conn) == self.me => {
                return Some(Effect::Deliver(Delivery::Close(conn, code, reason)));
            }
            Body::Send(..) | Body::Close(..) => {}
        }
        None
    }

    /// Drops the hosts not heard from for `timeout` before `now`; returns their numbers.
    pub fn expire(&mut self, now: Instant, timeout: Duration) -> Vec<HostNumber> {
        let dead: Vec<HostNumber> = self
            .peers
            .iter()
            .filter(|(_, peer)| now.saturating_duration_since(peer.heard) >= timeout)
            .map(|(host, _)| *host)
            .collect();
        for host in &dead {
            self.peers.remove(host);
        }
        dead
    }

    /// Whether `conn` is an open connection of another host.
    pub fn contains(&self, conn: ConnId) -> bool {
        self.peers
            .get(&host_of(conn))
            .is_some_and(|peer| peer.conns.contains_key(&conn))
    }

    /// Appends the other hosts' open connections to `into`.
    pub fn connections(&self, into: &mut Vec<ConnId>) {
        for peer in self.peers.values() {
            into.extend(peer.conns.keys().copied());
        }
    }

    /// Appends the other hosts' members of `group` to `into`.
    pub fn group_members(&self, group: &str, into: &mut Vec<ConnId>) {
        for peer in self.peers.values() {
            if let Some(members) = peer.groups.get(group) {
                into.extend(members.iter().copied());
            }
        }
    }

    /// How many of the other hosts' open connections are not `except`.
    pub fn count(&self, except: Option<ConnId>) -> u32 {
        let all: usize = self.peers.values().map(|peer| peer.conns.len()).sum();
        (all - usize::from(except.is_some_and(|conn| self.contains(conn)))) as u32
    }

    /// How many of the other hosts' members of `group` are not `except`.
    pub fn count_group(&self, group: &str, except: Option<ConnId>) -> u32 {
        self.peers
            .values()
            .filter_map(|peer| peer.groups.get(group))
            .map(|members| members.len() - usize::from(except.is_some_and(|conn| members.contains(&conn))))
            .sum::<usize>() as u32
    }

    /// The attachment of another host's open connection.
    pub fn attachment(&self, conn: ConnId) -> Option<Bytes> {
        self.peers.get(&host_of(conn))?.conns.get(&conn)?.attachment.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: HostNumber = 1;

    fn conn(host: HostNumber, n: u64) -> ConnId {
        first_id(host) + n
    }

    struct Sender {
        host: HostNumber,
        incarnation: u64,
        seq: u64,
    }

    impl Sender {
        fn new(host: HostNumber, incarnation: u64) -> Self {
            Self {
                host,
                incarnation,
                seq: 0,
            }
        }

        fn says(&mut self, body: Body) -> Envelope {
            self.seq += 1;
            Envelope {
                origin: self.host,
                incarnation: self.incarnation,
                seq: self.seq,
                body,
            }
        }
    }

    fn member(conn: ConnId, name: &'static str, groups: &[&str]) -> Member {
        Member {
            conn,
            attachment: Some(Bytes::from_static(name.as_bytes())),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn sorted(mut ids: Vec<ConnId>) -> Vec<ConnId> {
        ids.sort_unstable();
        ids
    }

    fn connections(view: &View) -> Vec<ConnId> {
        let mut ids = Vec::new();
        view.connections(&mut ids);
        sorted(ids)
    }

    fn members(view: &View, group: &str) -> Vec<ConnId> {
        let mut ids = Vec::new();
        view.group_members(group, &mut ids);
        sorted(ids)
    }

    #[test]
    fn ids_carry_their_host_and_fit_javascript_numbers() {
        assert_eq!(host_of(first_id(0)), 0);
        assert_eq!(first_id(0), 1);
        assert_eq!(host_of(first_id(65535) + (1 << 36)), 65535);
        assert!(first_id(65535) + (1 << HOST_SHIFT) - 2 < 1 << 53);
    }

    #[test]
    fn mirrors_hello_changes_and_state() {
        let now = Instant::now();
        let mut view = View::new(ME, 10);
        let mut two = Sender::new(2, 20);
        let (a, b, c) = (conn(2, 1), conn(2, 2), conn(2, 3));
        let hello = two.says(Body::Hello(vec![member(a, "ann", &["room"]), member(b, "bob", &[])]));
        assert_eq!(view.apply(hello, now), Some(Effect::SendState));
        assert_eq!(connections(&view), [a, b]);
        assert_eq!(members(&view, "room"), [a]);

        view.apply(two.says(Body::Opened(member(c, "cy", &["room"]))), now);
        view.apply(two.says(Body::Joined(b, "room".into())), now);
        view.apply(two.says(Body::Left(a, "room".into())), now);
        view.apply(two.says(Body::Attached(b, None)), now);
        assert_eq!(members(&view, "room"), [b, c]);
        assert_eq!(view.count_group("room", Some(c)), 1);
        assert_eq!(view.count(Some(a)), 2);
        assert_eq!(view.count(Some(conn(3, 1))), 3);
        assert_eq!(view.attachment(b), None);
        assert_eq!(view.attachment(c).as_deref(), Some(&b"cy"[..]));

        view.apply(two.says(Body::Closed(c)), now);
        assert_eq!(members(&view, "room"), [b]);
        assert!(!view.contains(c));
        // Joining for a connection it does not know (closed, or not yet heard of) is ignored.
        view.apply(two.says(Body::Joined(c, "room".into())), now);
        assert_eq!(members(&view, "room"), [b]);

        // A State replaces all of it.
        assert_eq!(view.apply(two.says(Body::State(vec![member(c, "cy", &[])])), now), None);
        assert_eq!(connections(&view), [c]);
        assert!(members(&view, "room").is_empty());
    }

    #[test]
    fn duplicates_and_own_messages_are_ignored_and_restarts_reset() {
        let now = Instant::now();
        let mut view = View::new(ME, 10);
        let mut two = Sender::new(2, 20);
        let opened = two.says(Body::Opened(member(conn(2, 1), "ann", &[])));
        view.apply(opened.clone(), now);
        view.apply(two.says(Body::Closed(conn(2, 1))), now);
        assert_eq!(view.apply(opened, now), None);
        assert!(connections(&view).is_empty());

        let mut me = Sender::new(ME, 10);
        assert_eq!(
            view.apply(me.says(Body::Hello(vec![member(conn(ME, 1), "me", &[])])), now),
            None
        );
        assert!(connections(&view).is_empty());
        let mut impostor = Sender::new(ME, 11);
        assert_eq!(view.apply(impostor.says(Body::Heartbeat), now), Some(Effect::Conflict));

        view.apply(two.says(Body::Opened(member(conn(2, 2), "bob", &[]))), now);
        // Host 2 restarted (new incarnation, sequence from 1 again): its old connections are gone.
        let mut two_again = Sender::new(2, 21);
        view.apply(two_again.says(Body::Opened(member(conn(2, 1), "ann", &[]))), now);
        assert_eq!(connections(&view), [conn(2, 1)]);
    }

    #[test]
    fn deliveries_directed_ones_only_for_this_host() {
        let now = Instant::now();
        let mut view = View::new(ME, 10);
        let mut two = Sender::new(2, 20);
        let text = || Outgoing::Text("hi".into());
        assert_eq!(
            view.apply(
                two.says(Body::Broadcast {
                    message: text(),
                    except: Some(conn(2, 1))
                }),
                now
            ),
            Some(Effect::Deliver(Delivery::Broadcast(text(), Some(conn(2, 1)))))
        );
        assert_eq!(
            view.apply(
                two.says(Body::Publish {
                    group: "g".into(),
                    message: text(),
                    except: None
                }),
                now
            ),
            Some(Effect::Deliver(Delivery::Publish("g".into(), text(), None)))
        );
        assert_eq!(
            view.apply(two.says(Body::Send(conn(ME, 4), text())), now),
            Some(Effect::Deliver(Delivery::Send(conn(ME, 4), text())))
        );
        assert_eq!(view.apply(two.says(Body::Send(conn(3, 4), text())), now), None);
        assert_eq!(
            view.apply(two.says(Body::Close(conn(ME, 4), 4000, "x".into())), now),
            Some(Effect::Deliver(Delivery::Close(conn(ME, 4), 4000, "x".into())))
        );
    }

    #[test]
    fn silent_hosts_expire_and_bye_leaves_at_once() {
        let start = Instant::now();
        let timeout = Duration::from_secs(3);
        let mut view = View::new(ME, 10);
        let mut two = Sender::new(2, 20);
        let mut three = Sender::new(3, 30);
        view.apply(two.says(Body::Hello(vec![member(conn(2, 1), "ann", &["g"])])), start);
        view.apply(three.says(Body::Hello(vec![member(conn(3, 1), "bob", &["g"])])), start);
        let later = start + Duration::from_secs(2);
        view.apply(three.says(Body::Heartbeat), later);
        assert!(view.expire(start + Duration::from_millis(2999), timeout).is_empty());
        assert_eq!(view.expire(start + timeout, timeout), [2]);
        assert_eq!(members(&view, "g"), [conn(3, 1)]);
        view.apply(three.says(Body::Bye), later);
        assert!(connections(&view).is_empty());
        assert_eq!(view.count(None), 0);
    }

    #[test]
    fn a_host_heard_without_its_state_prompts_one_hello() {
        let start = Instant::now();
        let mut view = View::new(ME, 10);
        let mut two = Sender::new(2, 20);
        // Its Hello came first: nothing to ask.
        view.apply(two.says(Body::Hello(vec![])), start);
        view.apply(two.says(Body::Heartbeat), start);
        assert!(!view.needs_hello());
        // Dropped as silent (this host fell behind), then heard again: its state is missing.
        view.expire(start + HOST, HOST);
        view.apply(two.says(Body::Heartbeat), start + HOST);
        assert!(view.needs_hello());
        view.hello_sent(start + HOST);
        assert!(!view.needs_hello());
        // A host first heard from right after a Hello will answer it: no second Hello.
        let mut three = Sender::new(3, 30);
        view.apply(three.says(Body::Heartbeat), start + HOST + Duration::from_secs(1));
        assert!(!view.needs_hello());
        // A restart whose Hello was missed, long after this host's Hello.
        let mut three_again = Sender::new(3, 31);
        view.apply(three_again.says(Body::Heartbeat), start + 3 * HOST);
        assert!(view.needs_hello());
    }

    const HOST: Duration = Duration::from_secs(3);
}
