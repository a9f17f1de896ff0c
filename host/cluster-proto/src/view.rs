//! What one host knows of the other hosts of its cluster: their open connections,
//! groups and attachments, rebuilt from the [`Envelope`]s they send. A state machine
//! over messages and instants, without I/O: the bus feeds it, the registry asks it.
//!
//! A host's view of another is eventually consistent: a `Hello` or `State` (in parts)
//! replaces it whole once its last part has come, changes apply on top in the order the
//! other host made them (Redis keeps one connection's order to each subscriber), and a
//! host not heard from for the timeout is dropped with all its connections.
//!
//! One number, one host: a number some host holds is taken over only by a `Hello` (a
//! host that claimed it anew, after its holder fell silent); other messages under it
//! from another incarnation are an impostor's, or a paused predecessor's, and dropped.
//! A message already seen, of a live host or of one that left within the last minute,
//! is dropped too (a replay), and so is a directed message for another incarnation.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::wire::{Body, Envelope, HostNumber, Member, StatePart};
use wsplug_conn::{CloseCode, ConnId, Outgoing};
use wsplug_ws::close;

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

/// How long the last sequence number of a host that left is remembered: its messages
/// replayed within that time are recognised (older ones are refused by their age).
pub const REMEMBERED: Duration = Duration::from_secs(120);

/// Hosts that left remembered at most, whatever their number.
const REMEMBERED_MAX: usize = 4096;

/// What a received message asks this host to do, beyond updating the view.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Deliver to this host's own connections.
    Deliver(Delivery),
    /// Another host (re)joined: send it this host's whole state.
    SendState,
    /// Another process claims this host's number: check the claim at once.
    Conflict,
    /// The message was not applied, for this reason (counted).
    Dropped(Dropped),
}

/// Why a received message was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Seen already: a duplicate, or a replay.
    Replayed,
    /// From an incarnation other than the one this host knows under that number, and
    /// not a `Hello`: an impostor, or a predecessor that was paused past its claim.
    Impostor,
    /// Directed to a connection of another incarnation (or another host).
    Misdirected,
    /// A close code or reason no endpoint may send.
    Invalid,
    /// A part of a state without the parts before it: the state is asked for again.
    Incomplete,
}

impl Dropped {
    /// Every reason, in the order of [`Dropped::label`].
    pub const ALL: [Dropped; 5] = [
        Self::Replayed,
        Self::Impostor,
        Self::Misdirected,
        Self::Invalid,
        Self::Incomplete,
    ];

    /// As metrics label it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Replayed => "replayed",
            Self::Impostor => "impostor",
            Self::Misdirected => "misdirected",
            Self::Invalid => "invalid",
            Self::Incomplete => "incomplete",
        }
    }
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
    Close(ConnId, CloseCode, String),
}

#[derive(Default)]
struct Remote {
    attachment: Option<Bytes>,
    groups: HashSet<String>,
}

/// A host's connections and their groups.
#[derive(Default)]
struct Conns {
    conns: HashMap<ConnId, Remote>,
    groups: HashMap<String, HashSet<ConnId>>,
}

impl Conns {
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

/// A state coming in parts: what has come so far, and what must come next.
struct Staging {
    conns: Conns,
    next_part: u32,
    next_seq: u64,
}

struct Peer {
    incarnation: u64,
    last_seq: u64,
    heard: Instant,
    state: Conns,
    staging: Option<Staging>,
}

impl Peer {
    fn new(incarnation: u64, seq: u64, heard: Instant) -> Self {
        Self {
            incarnation,
            last_seq: seq,
            heard,
            state: Conns::default(),
            staging: None,
        }
    }

    /// Takes in one part of a state at `seq`; `false` if parts before it are missing.
    fn state_part(&mut self, seq: u64, part: StatePart) -> bool {
        if part.part == 0 {
            self.staging = Some(Staging {
                conns: Conns::default(),
                next_part: 0,
                next_seq: seq,
            });
        }
        let Some(staging) = self
            .staging
            .as_mut()
            .filter(|s| (s.next_part, s.next_seq) == (part.part, seq))
        else {
            self.staging = None;
            return false;
        };
        for member in part.members {
            staging.conns.open(member);
        }
        // Wrapping: the numbers are the sender's, and a hostile one may be the largest.
        staging.next_part = staging.next_part.wrapping_add(1);
        staging.next_seq = staging.next_seq.wrapping_add(1);
        if part.last {
            self.state = self.staging.take().expect("checked above").conns;
        }
        true
    }
}

/// The other hosts, as this one knows them.
pub struct View {
    me: HostNumber,
    incarnation: u64,
    peers: HashMap<HostNumber, Peer>,
    /// Hosts that left (dropped as silent, said `Bye`, or replaced under their number):
    /// their last sequence number, and when they left, oldest first.
    left: VecDeque<((HostNumber, u64), u64, Instant)>,
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
            left: VecDeque::new(),
            hello_at: None,
            needs_hello: false,
        }
    }

    /// This host took number `me` (its old one was claimed by another process).
    pub fn renumber(&mut self, me: HostNumber) {
        if let Some(peer) = self.peers.remove(&me) {
            self.remember(me, &peer, Instant::now());
        }
        self.me = me;
    }

    /// How many other hosts it hears.
    pub fn hosts(&self) -> usize {
        self.peers.len()
    }

    /// The numbers of the other hosts it hears.
    pub fn numbers(&self) -> impl Iterator<Item = HostNumber> + '_ {
        self.peers.keys().copied()
    }

    /// Notes that this host sent a `Hello` at `now`: every host will answer with its state.
    pub fn hello_sent(&mut self, now: Instant) {
        self.hello_at = Some(now);
        self.needs_hello = false;
    }

    /// Whether a host was heard from whose state this one lacks (it was dropped as
    /// silent, its `Hello` was missed, or parts of its state were lost) and no `Hello`
    /// asked for it lately. The caller sends a `Hello` and calls [`View::hello_sent`].
    pub fn needs_hello(&self) -> bool {
        self.needs_hello
    }

    fn asked_lately(&self, now: Instant) -> bool {
        self.hello_at
            .is_some_and(|at| now.saturating_duration_since(at) < HELLO_ANSWERED)
    }

    fn remember(&mut self, host: HostNumber, peer: &Peer, now: Instant) {
        if self.left.len() >= REMEMBERED_MAX {
            self.left.pop_front();
        }
        self.left.push_back(((host, peer.incarnation), peer.last_seq, now));
    }

    /// The last sequence number of a host that left lately, if it is one.
    fn left_at(&mut self, host: HostNumber, incarnation: u64, now: Instant) -> Option<u64> {
        while self
            .left
            .front()
            .is_some_and(|(_, _, at)| now.saturating_duration_since(*at) >= REMEMBERED)
        {
            self.left.pop_front();
        }
        self.left
            .iter()
            .rev()
            .find(|(who, _, _)| *who == (host, incarnation))
            .map(|(_, seq, _)| *seq)
    }

    /// Takes in a message received at `now`. A message this host sent itself, or one
    /// already seen, changes nothing.
    pub fn apply(&mut self, envelope: Envelope, now: Instant) -> Option<Effect> {
        let Envelope {
            origin,
            incarnation,
            seq,
            body,
            ..
        } = envelope;
        if origin == self.me {
            return (incarnation != self.incarnation).then_some(Effect::Conflict);
        }
        let hello_starts = matches!(&body, Body::Hello(part) if part.part == 0);
        let mut new = false;
        match self.peers.get(&origin) {
            Some(peer) if peer.incarnation == incarnation => {
                if seq <= peer.last_seq {
                    return Some(Effect::Dropped(Dropped::Replayed));
                }
            }
            // Another process holds the number now: only its successor's Hello takes it.
            Some(_) if !hello_starts => return Some(Effect::Dropped(Dropped::Impostor)),
            Some(_) => {
                let old = self.peers.remove(&origin).expect("matched above");
                self.remember(origin, &old, now);
                new = true;
            }
            None => {
                if self.left_at(origin, incarnation, now).is_some_and(|last| seq <= last) {
                    return Some(Effect::Dropped(Dropped::Replayed));
                }
                new = true;
            }
        }
        let asked = self.asked_lately(now);
        let peer = self
            .peers
            .entry(origin)
            .or_insert_with(|| Peer::new(incarnation, seq.wrapping_sub(1), now));
        let state_starts = matches!(&body, Body::Hello(part) | Body::State(part) if part.part == 0);
        if new && !state_starts && !asked {
            self.needs_hello = true;
        }
        // A state in parts is cut by anything else: parts were lost.
        let is_part = matches!(body, Body::Hello(_) | Body::State(_));
        if peer.staging.is_some() && !is_part {
            peer.staging = None;
            self.needs_hello |= !asked;
        }
        peer.last_seq = seq;
        peer.heard = now;
        match body {
            Body::Hello(part) | Body::State(part) => {
                if !peer.state_part(seq, part) {
                    self.needs_hello |= !asked;
                    return Some(Effect::Dropped(Dropped::Incomplete));
                }
                if hello_starts {
                    return Some(Effect::SendState);
                }
            }
            Body::Heartbeat => {}
            Body::Bye => {
                let peer = self.peers.remove(&origin).expect("inserted above");
                self.remember(origin, &peer, now);
            }
            Body::Opened(member) => peer.state.open(member),
            Body::Closed(conn) => peer.state.close(conn),
            Body::Joined(conn, group) => peer.state.join(conn, group),
            Body::Left(conn, group) => peer.state.leave(conn, &group),
            Body::Attached(conn, attachment) => {
                if let Some(remote) = peer.state.conns.get_mut(&conn) {
                    remote.attachment = attachment;
                }
            }
            Body::Broadcast { message, except } => {
                return Some(Effect::Deliver(Delivery::Broadcast(message, except)));
            }
            Body::Publish { group, message, except } => {
                return Some(Effect::Deliver(Delivery::Publish(group, message, except)));
            }
            Body::Send { conn, incarnation, .. } | Body::Close { conn, incarnation, .. }
                if host_of(conn) != self.me || incarnation != self.incarnation =>
            {
                return Some(Effect::Dropped(Dropped::Misdirected));
            }
            Body::Send { conn, message, .. } => {
                return Some(Effect::Deliver(Delivery::Send(conn, message)));
            }
            // Checked again here: whoever wrote the message, a client gets only a close
            // frame an endpoint may send.
            Body::Close { conn, code, reason, .. } => {
                return Some(
                    match CloseCode::new(code).filter(|_| reason.len() <= close::MAX_REASON_LEN) {
                        Some(code) => Effect::Deliver(Delivery::Close(conn, code, reason)),
                        None => Effect::Dropped(Dropped::Invalid),
                    },
                );
            }
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
            let peer = self.peers.remove(host).expect("listed above");
            self.remember(*host, &peer, now);
        }
        dead
    }

    /// The incarnation of the host whose open connection `conn` is, if another host's.
    pub fn owner(&self, conn: ConnId) -> Option<u64> {
        let peer = self.peers.get(&host_of(conn))?;
        peer.state.conns.contains_key(&conn).then_some(peer.incarnation)
    }

    /// Whether `conn` is an open connection of another host.
    pub fn contains(&self, conn: ConnId) -> bool {
        self.owner(conn).is_some()
    }

    /// Appends the other hosts' open connections to `into`.
    pub fn connections(&self, into: &mut Vec<ConnId>) {
        for peer in self.peers.values() {
            into.extend(peer.state.conns.keys().copied());
        }
    }

    /// Appends the other hosts' members of `group` to `into`.
    pub fn group_members(&self, group: &str, into: &mut Vec<ConnId>) {
        for peer in self.peers.values() {
            if let Some(members) = peer.state.groups.get(group) {
                into.extend(members.iter().copied());
            }
        }
    }

    /// How many of the other hosts' open connections are not `except`.
    pub fn count(&self, except: Option<ConnId>) -> u32 {
        let all: usize = self.peers.values().map(|peer| peer.state.conns.len()).sum();
        (all - usize::from(except.is_some_and(|conn| self.contains(conn)))) as u32
    }

    /// How many of the other hosts' members of `group` are not `except`.
    pub fn count_group(&self, group: &str, except: Option<ConnId>) -> u32 {
        self.peers
            .values()
            .filter_map(|peer| peer.state.groups.get(group))
            .map(|members| members.len() - usize::from(except.is_some_and(|conn| members.contains(&conn))))
            .sum::<usize>() as u32
    }

    /// The attachment of another host's open connection.
    pub fn attachment(&self, conn: ConnId) -> Option<Bytes> {
        self.peers
            .get(&host_of(conn))?
            .state
            .conns
            .get(&conn)?
            .attachment
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: HostNumber = 1;
    const MY_INCARNATION: u64 = 10;

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
                sent_ms: 0,
                body,
            }
        }
    }

    fn hello(members: Vec<Member>) -> Body {
        Body::Hello(StatePart::whole(members))
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

    fn text() -> Outgoing {
        Outgoing::Text("hi".into())
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
        let mut view = View::new(ME, MY_INCARNATION);
        let mut two = Sender::new(2, 20);
        let (a, b, c) = (conn(2, 1), conn(2, 2), conn(2, 3));
        let hello = two.says(hello(vec![member(a, "ann", &["room"]), member(b, "bob", &[])]));
        assert_eq!(view.apply(hello, now), Some(Effect::SendState));
        assert_eq!(connections(&view), [a, b]);
        assert_eq!(members(&view, "room"), [a]);
        assert_eq!(view.owner(a), Some(20));

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
        let state = two.says(Body::State(StatePart::whole(vec![member(c, "cy", &[])])));
        assert_eq!(view.apply(state, now), None);
        assert_eq!(connections(&view), [c]);
        assert!(members(&view, "room").is_empty());
    }

    #[test]
    fn a_state_in_parts_replaces_the_old_one_once_whole_and_a_lost_part_asks_again() {
        let now = Instant::now();
        let mut view = View::new(ME, MY_INCARNATION);
        let mut two = Sender::new(2, 20);
        view.apply(two.says(hello(vec![member(conn(2, 9), "old", &[])])), now);
        let part = |n: u32, last: bool, ids: &[u64]| {
            Body::State(StatePart {
                part: n,
                last,
                members: ids.iter().map(|id| member(conn(2, *id), "m", &["g"])).collect(),
            })
        };
        assert_eq!(view.apply(two.says(part(0, false, &[1, 2])), now), None);
        assert_eq!(view.apply(two.says(part(1, false, &[3])), now), None);
        // Until the last part, the old state stands.
        assert_eq!(connections(&view), [conn(2, 9)]);
        assert_eq!(view.apply(two.says(part(2, true, &[4])), now), None);
        assert_eq!(connections(&view), [1, 2, 3, 4].map(|n| conn(2, n)));
        assert_eq!(members(&view, "g").len(), 4);

        // A part lost on the way: the state is incomplete, and asked for again.
        view.hello_sent(now - HOST);
        view.apply(two.says(part(0, false, &[5])), now);
        let _lost = two.says(part(1, false, &[6]));
        assert_eq!(
            view.apply(two.says(part(2, true, &[7])), now),
            Some(Effect::Dropped(Dropped::Incomplete))
        );
        assert!(view.needs_hello());
        assert_eq!(connections(&view).len(), 4, "the last whole state stands");
        // So is one cut by another message.
        view.hello_sent(now - HOST);
        view.apply(two.says(part(0, false, &[5])), now);
        view.apply(two.says(Body::Heartbeat), now);
        assert!(view.needs_hello());
        assert_eq!(
            view.apply(two.says(part(1, true, &[6])), now),
            Some(Effect::Dropped(Dropped::Incomplete))
        );
    }

    #[test]
    fn sequence_and_part_numbers_may_wrap() {
        let now = Instant::now();
        let mut view = View::new(ME, MY_INCARNATION);
        let part = |part: u32, last: bool, seq: u64| Envelope {
            origin: 2,
            incarnation: 20,
            seq,
            sent_ms: 0,
            body: Body::State(StatePart {
                part,
                last,
                members: vec![member(conn(2, u64::from(part)), "m", &[])],
            }),
        };
        assert_eq!(view.apply(part(0, false, u64::MAX), now), None);
        assert_eq!(
            view.apply(part(1, true, 0), now),
            Some(Effect::Dropped(Dropped::Replayed)),
            "after u64::MAX a host's numbers do not go on"
        );
        let mut hostile = View::new(ME, MY_INCARNATION);
        let wrapped = Envelope {
            body: Body::State(StatePart {
                part: u32::MAX,
                last: false,
                members: vec![],
            }),
            ..part(0, false, 5)
        };
        assert_eq!(hostile.apply(wrapped, now), Some(Effect::Dropped(Dropped::Incomplete)));
    }

    #[test]
    fn duplicates_and_own_messages_are_ignored_and_restarts_say_hello() {
        let now = Instant::now();
        let mut view = View::new(ME, MY_INCARNATION);
        let mut two = Sender::new(2, 20);
        let opened = two.says(Body::Opened(member(conn(2, 1), "ann", &[])));
        view.apply(opened.clone(), now);
        view.apply(two.says(Body::Closed(conn(2, 1))), now);
        assert_eq!(view.apply(opened, now), Some(Effect::Dropped(Dropped::Replayed)));
        assert!(connections(&view).is_empty());

        let mut me = Sender::new(ME, MY_INCARNATION);
        assert_eq!(
            view.apply(me.says(hello(vec![member(conn(ME, 1), "me", &[])])), now),
            None
        );
        assert!(connections(&view).is_empty());
        let mut impostor = Sender::new(ME, 11);
        assert_eq!(view.apply(impostor.says(Body::Heartbeat), now), Some(Effect::Conflict));

        view.apply(two.says(Body::Opened(member(conn(2, 2), "bob", &[]))), now);
        // Host 2's number claimed anew (its holder fell silent): its Hello replaces it.
        let mut two_again = Sender::new(2, 21);
        let hello = two_again.says(hello(vec![member(conn(2, 1), "ann", &[])]));
        assert_eq!(view.apply(hello, now), Some(Effect::SendState));
        assert_eq!(connections(&view), [conn(2, 1)]);
        assert_eq!(view.owner(conn(2, 1)), Some(21));
    }

    #[test]
    fn one_number_one_host_an_impostor_or_a_paused_predecessor_is_not_heard() {
        let now = Instant::now();
        let mut view = View::new(ME, MY_INCARNATION);
        let mut holder = Sender::new(2, 20);
        view.apply(holder.says(hello(vec![member(conn(2, 1), "ann", &["g"])])), now);
        // Another process under the same number, not through a Hello: not heard at all.
        let mut other = Sender::new(2, 99);
        for body in [
            Body::Opened(member(conn(2, 1), "eve", &["g"])),
            Body::Closed(conn(2, 1)),
            Body::Broadcast {
                message: text(),
                except: None,
            },
            Body::Bye,
        ] {
            assert_eq!(
                view.apply(other.says(body), now),
                Some(Effect::Dropped(Dropped::Impostor))
            );
        }
        assert_eq!(view.attachment(conn(2, 1)).as_deref(), Some(&b"ann"[..]));
        assert_eq!(view.owner(conn(2, 1)), Some(20));
    }

    #[test]
    fn replays_of_a_host_that_left_are_recognised() {
        let start = Instant::now();
        let mut view = View::new(ME, MY_INCARNATION);
        let mut two = Sender::new(2, 20);
        view.apply(two.says(hello(vec![])), start);
        let broadcast = two.says(Body::Broadcast {
            message: text(),
            except: None,
        });
        assert!(matches!(view.apply(broadcast.clone(), start), Some(Effect::Deliver(_))));
        view.apply(two.says(Body::Bye), start);
        assert_eq!(view.hosts(), 0);
        // Replayed after it left: recognised for REMEMBERED.
        assert_eq!(
            view.apply(broadcast.clone(), start),
            Some(Effect::Dropped(Dropped::Replayed))
        );
        // Its next message (a host that was only paused, say) is heard again.
        let later = start + Duration::from_secs(1);
        view.apply(two.says(Body::Heartbeat), later);
        assert_eq!(view.hosts(), 1);
        view.expire(later + HOST, HOST);
        assert_eq!(
            view.apply(broadcast.clone(), later + HOST),
            Some(Effect::Dropped(Dropped::Replayed))
        );
    }

    #[test]
    fn directed_messages_are_delivered_only_to_this_incarnations_connections() {
        let now = Instant::now();
        let mut view = View::new(ME, MY_INCARNATION);
        let mut two = Sender::new(2, 20);
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
        let send = |conn, incarnation| Body::Send {
            conn,
            incarnation,
            message: text(),
        };
        assert_eq!(
            view.apply(two.says(send(conn(ME, 4), MY_INCARNATION)), now),
            Some(Effect::Deliver(Delivery::Send(conn(ME, 4), text())))
        );
        // Meant for the process that held (or holds) this number before or after this one.
        assert_eq!(
            view.apply(two.says(send(conn(ME, 4), MY_INCARNATION + 1)), now),
            Some(Effect::Dropped(Dropped::Misdirected))
        );
        assert_eq!(
            view.apply(two.says(send(conn(3, 4), MY_INCARNATION)), now),
            Some(Effect::Dropped(Dropped::Misdirected))
        );
        let close = |code, reason: &str| Body::Close {
            conn: conn(ME, 4),
            incarnation: MY_INCARNATION,
            code,
            reason: reason.into(),
        };
        assert_eq!(
            view.apply(two.says(close(4000, "x")), now),
            Some(Effect::Deliver(Delivery::Close(
                conn(ME, 4),
                CloseCode::new(4000).unwrap(),
                "x".into()
            )))
        );
        // Close codes and reasons no endpoint may send: dropped, whoever wrote them.
        for (code, reason) in [
            (1005, "x".to_owned()),
            (1006, "x".into()),
            (0, "x".into()),
            (4000, "r".repeat(124)),
        ] {
            assert_eq!(
                view.apply(two.says(close(code, &reason)), now),
                Some(Effect::Dropped(Dropped::Invalid)),
                "{code}"
            );
        }
    }

    #[test]
    fn a_renumbered_host_takes_its_new_numbers_messages() {
        let now = Instant::now();
        let mut view = View::new(ME, MY_INCARNATION);
        let mut seven = Sender::new(7, 70);
        view.apply(seven.says(hello(vec![])), now);
        view.renumber(7);
        assert_eq!(view.hosts(), 0);
        let mut two = Sender::new(2, 20);
        let send = Body::Send {
            conn: conn(7, 1),
            incarnation: MY_INCARNATION,
            message: text(),
        };
        assert_eq!(
            view.apply(two.says(send), now),
            Some(Effect::Deliver(Delivery::Send(conn(7, 1), text())))
        );
    }

    #[test]
    fn silent_hosts_expire_and_bye_leaves_at_once() {
        let start = Instant::now();
        let timeout = Duration::from_secs(3);
        let mut view = View::new(ME, MY_INCARNATION);
        let mut two = Sender::new(2, 20);
        let mut three = Sender::new(3, 30);
        view.apply(two.says(hello(vec![member(conn(2, 1), "ann", &["g"])])), start);
        view.apply(three.says(hello(vec![member(conn(3, 1), "bob", &["g"])])), start);
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
        let mut view = View::new(ME, MY_INCARNATION);
        let mut two = Sender::new(2, 20);
        // Its Hello came first: nothing to ask.
        view.apply(two.says(hello(vec![])), start);
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
        // A host first heard long after this host's Hello (its own Hello was missed).
        let mut four = Sender::new(4, 40);
        view.apply(four.says(Body::Heartbeat), start + 3 * HOST);
        assert!(view.needs_hello());
    }

    const HOST: Duration = Duration::from_secs(3);
}
