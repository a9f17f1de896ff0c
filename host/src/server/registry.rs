//! The live connections, their outbound queues and their groups: what plugins
//! reach through [`HostServices`].
//!
//! In a cluster the registry also covers the other hosts' connections: it answers from
//! the [`Cluster`]'s view of them and hands the cluster what the others must learn
//! (this host's connections opening, closing, joining, leaving; messages for theirs),
//! without ever waiting for Redis.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use bytes::Bytes;

use super::outbound::{self, Command, Mailbox, OutboundLimits, Outbox};
use super::per_ip::PerIp;
use crate::cluster::view::{Delivery, HOST_SHIFT, host_of};
use crate::cluster::wire::{Body, HostNumber, Member, MemberRef};
use crate::cluster::{Cluster, Members};
use crate::conn::{CloseCode, ConnId, ConnectionInfo, HostError, Outgoing};
use crate::plugin::{Audience, HostServices};

/// Bounds of what a route's connections hold that a cluster's hosts share: groups and
/// attachments. A client chooses group names and attachment contents through the
/// plugin, so each is bounded per connection, and all of them per host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedStateLimits {
    /// Groups one connection may be in at once.
    pub max_groups: usize,
    /// Longest group name, in bytes.
    pub max_group_name: usize,
    /// Bytes of attachments and group names of all the route's connections on this host.
    pub max_bytes: usize,
}

impl Default for SharedStateLimits {
    fn default() -> Self {
        Self {
            max_groups: 256,
            max_group_name: 256,
            max_bytes: 64 << 20,
        }
    }
}

/// The ids of every registry of the process: unique across its routes, never reused.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

struct Entry {
    outbox: Outbox,
    info: Arc<ConnectionInfo>,
    groups: HashSet<String>,
    /// The plugin's value for the connection, kept across reloads and traps.
    attachment: Option<Bytes>,
    /// The plugin has been told of it (`on-open`): broadcasts and `connections` include it,
    /// and so do the other hosts of a cluster.
    opened: bool,
}

impl Entry {
    fn push(&self, command: Command) -> Result<(), HostError> {
        self.outbox.push(command)
    }

    /// What it holds against [`SharedStateLimits::max_bytes`].
    fn shared_bytes(&self) -> usize {
        self.attachment.as_ref().map_or(0, Bytes::len) + self.groups.iter().map(String::len).sum::<usize>()
    }

    /// The connection as the other hosts of a cluster mirror it.
    fn member(&self) -> Member {
        Member {
            conn: self.info.id,
            attachment: self.attachment.clone(),
            groups: self.groups.iter().cloned().collect(),
        }
    }
}

/// What is kept of a closed connection until the plugin has handled its `on-close`.
struct Closing {
    /// Its attachment, which the plugin may still read.
    attachment: Option<Bytes>,
    /// Whom a call of its that overran is held against.
    info: Arc<ConnectionInfo>,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<ConnId, Entry>,
    groups: HashMap<String, HashSet<ConnId>>,
    /// Closed connections whose `on-close` the plugin has not handled yet.
    closing: HashMap<ConnId, Closing>,
    /// Bytes of the open connections' attachments and group names, against
    /// [`SharedStateLimits::max_bytes`].
    shared_bytes: usize,
    /// The server is shutting down: connections registered now are told at once.
    shutting_down: bool,
}

impl Inner {
    fn opened(&self, conn: ConnId) -> Option<&Entry> {
        self.conns.get(&conn).filter(|entry| entry.opened)
    }

    /// This host's opened connections that `to` names.
    fn opened_in(&self, to: Audience<'_>) -> Vec<ConnId> {
        match to {
            Audience::Everyone => self
                .conns
                .iter()
                .filter(|(_, entry)| entry.opened)
                .map(|(id, _)| *id)
                .collect(),
            Audience::Group(group) => match self.groups.get(group) {
                Some(members) => members
                    .iter()
                    .copied()
                    .filter(|id| self.opened(*id).is_some())
                    .collect(),
                None => Vec::new(),
            },
        }
    }

    fn send(&self, conn: ConnId, command: Command) -> Result<(), HostError> {
        self.conns.get(&conn).ok_or(HostError::Gone)?.push(command)
    }

    fn broadcast(&self, message: &Outgoing, except: Option<ConnId>) -> u32 {
        self.conns
            .iter()
            .filter(|(id, entry)| entry.opened && Some(**id) != except)
            .filter(|(_, entry)| entry.push(Command::Send(message.clone())).is_ok())
            .count() as u32
    }

    fn publish(&self, group: &str, message: &Outgoing, except: Option<ConnId>) -> u32 {
        let Some(members) = self.groups.get(group) else {
            return 0;
        };
        members
            .iter()
            .filter(|id| Some(**id) != except)
            .filter_map(|id| self.opened(*id))
            .filter(|entry| entry.push(Command::Send(message.clone())).is_ok())
            .count() as u32
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

/// The registry of open connections.
pub struct Registry {
    inner: Mutex<Inner>,
    limits: OutboundLimits,
    shared_limits: SharedStateLimits,
    cluster: Option<Arc<Cluster>>,
    /// Where calls that overran are held against their clients' addresses: the
    /// server's, set when it takes the route.
    per_ip: OnceLock<Arc<PerIp>>,
}

impl Registry {
    /// An empty registry whose connections' outbound queues enforce `limits`.
    pub fn new(limits: OutboundLimits) -> Self {
        Self {
            inner: Mutex::default(),
            limits,
            shared_limits: SharedStateLimits::default(),
            cluster: None,
            per_ip: OnceLock::new(),
        }
    }

    /// An empty registry of one host of `cluster`: its connection ids carry the host's
    /// number, and what the plugin does reaches the other hosts' connections too.
    pub fn clustered(limits: OutboundLimits, cluster: Arc<Cluster>) -> Self {
        Self {
            cluster: Some(cluster),
            ..Self::new(limits)
        }
    }

    /// The same registry with these bounds on groups and attachments.
    pub fn with_shared_limits(self, shared_limits: SharedStateLimits) -> Self {
        Self { shared_limits, ..self }
    }

    /// Holds the calls that overran from now on against their clients' addresses in
    /// `per_ip` (once: the server that serves the registry does it).
    pub fn hold_overruns_in(&self, per_ip: Arc<PerIp>) {
        let _ = self.per_ip.set(per_ip);
    }

    /// The cluster whose hosts share these connections, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// The bounds on groups and attachments.
    pub fn shared_limits(&self) -> SharedStateLimits {
        self.shared_limits
    }

    /// A fresh connection id, never reused in this process, whatever the route. In a
    /// cluster, the high bits are the host's number, which makes it unique across the
    /// hosts; below 2^53 either way, so that JavaScript numbers hold it.
    pub fn next_id(&self) -> ConnId {
        let host = self.cluster.as_ref().map_or(0, |cluster| ConnId::from(cluster.host()));
        (host << HOST_SHIFT) | (NEXT_ID.fetch_add(1, Ordering::Relaxed) & ((1 << HOST_SHIFT) - 1))
    }

    /// Adds a connection; the returned mailbox receives what the plugin sends it.
    pub fn register(&self, info: ConnectionInfo) -> Mailbox {
        let (outbox, mailbox) = outbound::queue(self.limits);
        let entry = Entry {
            outbox,
            info: Arc::new(info),
            groups: HashSet::new(),
            attachment: None,
            opened: false,
        };
        let mut inner = self.lock();
        if inner.shutting_down {
            entry.outbox.shut_down();
        }
        inner.conns.insert(entry.info.id, entry);
        mailbox
    }

    /// Tells every connection, and every one registered from now on, that the server
    /// is shutting down.
    pub fn shut_down(&self) {
        let mut inner = self.lock();
        inner.shutting_down = true;
        for entry in inner.conns.values() {
            entry.outbox.shut_down();
        }
    }

    /// Removes a connection and its group memberships. Later calls naming it return `Gone`.
    pub fn unregister(&self, conn: ConnId) {
        let mut inner = self.lock();
        if let Some(entry) = inner.conns.remove(&conn) {
            if entry.opened
                && let Some(cluster) = &self.cluster
            {
                cluster.tell_all(Body::Closed(conn));
                cluster.tell_info(conn, None);
            }
            inner.shared_bytes -= entry.shared_bytes();
            inner.closing.insert(
                conn,
                Closing {
                    attachment: entry.attachment,
                    info: entry.info,
                },
            );
            for group in entry.groups {
                inner.leave_group(conn, &group);
            }
        }
    }

    /// How many connections of this host are open.
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    /// Whether no connection of this host is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    fn tell_all(&self, body: Body) {
        if let Some(cluster) = &self.cluster {
            cluster.tell_all(body);
        }
    }

    /// The cluster, if `conn` belongs to another host of it.
    fn remote(&self, conn: ConnId) -> Option<&Cluster> {
        self.cluster.as_deref().filter(|cluster| !cluster.is_local(conn))
    }

    /// Sends a command to another host's connection, if the view has it open: addressed
    /// to the incarnation of the host that has it.
    fn tell_owner(&self, cluster: &Cluster, conn: ConnId, body: impl FnOnce(u64) -> Body) -> Result<(), HostError> {
        let incarnation = cluster.view().owner(conn).ok_or(HostError::Gone)?;
        cluster.tell_owner(conn, body(incarnation));
        Ok(())
    }
}

/// Locks the registry. A panic while holding it cannot leave the maps
/// half-updated in a way that matters more than losing every connection would, so
/// carry on.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Members for Registry {
    /// Carries out what another host of the cluster asks of this host's connections.
    fn deliver(&self, delivery: Delivery) {
        let inner = self.lock();
        match delivery {
            Delivery::Broadcast(message, except) => {
                inner.broadcast(&message, except);
            }
            Delivery::Publish(group, message, except) => {
                inner.publish(&group, &message, except);
            }
            Delivery::Send(conn, message) => {
                let _ = inner.send(conn, Command::Send(message));
            }
            Delivery::Close(conn, code, reason) => {
                let _ = inner.send(conn, Command::Close(code, reason));
            }
        }
    }

    /// Tells the other hosts of the cluster every open connection of this one: as a
    /// `Hello` (this host (re)joined: everyone answers with their state) or a `State`,
    /// in parts of bounded size, encoded straight from the registry.
    fn tell_state(&self, hello: bool) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let inner = self.lock();
        let members = inner.conns.values().filter(|e| e.opened).map(|entry| MemberRef {
            conn: entry.info.id,
            attachment: entry.attachment.as_deref(),
            groups: entry.groups.iter().map(String::as_str),
        });
        // Queued under the lock: the changes after the snapshot are numbered after it.
        cluster.outbox().push_state(hello, members);
    }

    /// Keeps every open connection's handshake facts in Redis again (after this host's
    /// claim lapsed, the others may have removed them).
    fn tell_infos(&self) {
        if let Some(cluster) = &self.cluster {
            let inner = self.lock();
            for entry in inner.conns.values().filter(|e| e.opened) {
                cluster.tell_info(entry.info.id, Some(&entry.info));
            }
        }
    }

    /// Starts closing, with `code` and `reason`, every connection whose id carries host
    /// number `host` (which this host no longer holds); returns how many.
    fn close_numbered(&self, host: HostNumber, code: CloseCode, reason: &str) -> usize {
        let inner = self.lock();
        inner
            .conns
            .values()
            .filter(|entry| host_of(entry.info.id) == host)
            .filter(|entry| entry.push(Command::Close(code, reason.to_owned())).is_ok())
            .count()
    }
}

impl HostServices for Registry {
    fn opened(&self, conn: ConnId) {
        if let Some(entry) = self.lock().conns.get_mut(&conn) {
            entry.opened = true;
            if let Some(cluster) = &self.cluster {
                cluster.tell_all(Body::Opened(entry.member()));
                cluster.tell_info(conn, Some(&entry.info));
            }
        }
    }

    fn closed(&self, conn: ConnId) {
        self.lock().closing.remove(&conn);
    }

    fn send(&self, conn: ConnId, message: Outgoing) -> Result<(), HostError> {
        match self.remote(conn) {
            Some(cluster) => self.tell_owner(cluster, conn, |incarnation| Body::Send {
                conn,
                incarnation,
                message,
            }),
            None => self.lock().send(conn, Command::Send(message)),
        }
    }

    fn close(&self, conn: ConnId, code: CloseCode, reason: String) -> Result<(), HostError> {
        match self.remote(conn) {
            Some(cluster) => self.tell_owner(cluster, conn, |incarnation| Body::Close {
                conn,
                incarnation,
                code: code.get(),
                reason,
            }),
            None => self.lock().send(conn, Command::Close(code, reason)),
        }
    }

    fn send_each(&self, conns: &[ConnId], message: &Outgoing) {
        // Under one lock.
        let inner = self.lock();
        for entry in conns.iter().filter_map(|conn| inner.conns.get(conn)) {
            let _ = entry.push(Command::Send(message.clone()));
        }
    }

    fn broadcast(&self, message: Outgoing, except: Option<ConnId>) -> u32 {
        let local = self.lock().broadcast(&message, except);
        local + self.tell_other_hosts(Audience::Everyone, message, except)
    }

    fn join(&self, conn: ConnId, group: &str) -> Result<(), HostError> {
        let limits = self.shared_limits;
        if group.len() > limits.max_group_name {
            return Err(HostError::TooLarge);
        }
        let mut inner = self.lock();
        let room = limits.max_bytes - inner.shared_bytes;
        let entry = inner.conns.get_mut(&conn).ok_or(HostError::Gone)?;
        if entry.groups.contains(group) {
            return Ok(());
        }
        if entry.groups.len() >= limits.max_groups {
            return Err(HostError::TooManyGroups);
        }
        if group.len() > room {
            return Err(HostError::TooLarge);
        }
        entry.groups.insert(group.to_owned());
        if entry.opened {
            self.tell_all(Body::Joined(conn, group.to_owned()));
        }
        inner.shared_bytes += group.len();
        inner.groups.entry(group.to_owned()).or_default().insert(conn);
        Ok(())
    }

    fn leave(&self, conn: ConnId, group: &str) -> Result<(), HostError> {
        let mut inner = self.lock();
        let entry = inner.conns.get_mut(&conn).ok_or(HostError::Gone)?;
        if !entry.groups.remove(group) {
            return Ok(());
        }
        if entry.opened {
            self.tell_all(Body::Left(conn, group.to_owned()));
        }
        inner.shared_bytes -= group.len();
        inner.leave_group(conn, group);
        Ok(())
    }

    fn publish(&self, group: &str, message: Outgoing, except: Option<ConnId>) -> u32 {
        // No connection can be in a group whose name is over the bound.
        if group.len() > self.shared_limits.max_group_name {
            return 0;
        }
        let local = self.lock().publish(group, &message, except);
        local + self.tell_other_hosts(Audience::Group(group), message, except)
    }

    fn recipients(&self, to: Audience<'_>, except: Option<ConnId>) -> (Vec<ConnId>, u32) {
        let mut here = self.lock().opened_in(to);
        here.retain(|conn| Some(*conn) != except);
        let elsewhere = match (&self.cluster, to) {
            (None, _) => 0,
            (Some(cluster), Audience::Everyone) => cluster.view().count(except),
            (Some(cluster), Audience::Group(group)) => cluster.view().count_group(group, except),
        };
        (here, elsewhere)
    }

    fn tell_other_hosts(&self, to: Audience<'_>, message: Outgoing, except: Option<ConnId>) -> u32 {
        let Some(cluster) = &self.cluster else {
            return 0;
        };
        match to {
            Audience::Everyone => {
                let remote = cluster.view().count(except);
                cluster.tell_all(Body::Broadcast { message, except });
                remote
            }
            Audience::Group(group) => {
                let remote = cluster.view().count_group(group, except);
                let group = group.to_owned();
                cluster.tell_all(Body::Publish { group, message, except });
                remote
            }
        }
    }

    // Like broadcasts, group messages and members cover opened connections only: one
    // that joined at its handshake is a member once the plugin has had its on-open.
    fn group_members(&self, group: &str) -> Vec<ConnId> {
        if group.len() > self.shared_limits.max_group_name {
            return Vec::new();
        }
        let mut members = self.lock().opened_in(Audience::Group(group));
        if let Some(cluster) = &self.cluster {
            cluster.view().group_members(group, &mut members);
        }
        members
    }

    fn connections(&self) -> Vec<ConnId> {
        let mut conns = self.lock().opened_in(Audience::Everyone);
        if let Some(cluster) = &self.cluster {
            cluster.view().connections(&mut conns);
        }
        conns
    }

    fn info(&self, conn: ConnId) -> Option<Arc<ConnectionInfo>> {
        if let Some(cluster) = self.remote(conn) {
            return cluster.remote_info(conn);
        }
        self.lock().conns.get(&conn).map(|entry| entry.info.clone())
    }

    fn exists(&self, conn: ConnId) -> bool {
        match self.remote(conn) {
            Some(cluster) => cluster.view().contains(conn),
            None => self.lock().conns.contains_key(&conn),
        }
    }

    fn set_attachment(&self, conn: ConnId, data: Vec<u8>) -> Result<(), HostError> {
        let mut inner = self.lock();
        let room = self.shared_limits.max_bytes - inner.shared_bytes;
        let entry = inner.conns.get_mut(&conn).ok_or(HostError::Gone)?;
        let old = entry.attachment.as_ref().map_or(0, Bytes::len);
        if data.len() > old + room {
            return Err(HostError::TooLarge);
        }
        let data_len = data.len();
        entry.attachment = (!data.is_empty()).then(|| data.into());
        if entry.opened {
            self.tell_all(Body::Attached(conn, entry.attachment.clone()));
        }
        inner.shared_bytes = inner.shared_bytes + data_len - old;
        Ok(())
    }

    fn attachment(&self, conn: ConnId) -> Option<Bytes> {
        if let Some(cluster) = self.remote(conn) {
            return cluster.view().attachment(conn);
        }
        let inner = self.lock();
        match inner.conns.get(&conn) {
            Some(entry) => entry.attachment.clone(),
            None => inner.closing.get(&conn).and_then(|closing| closing.attachment.clone()),
        }
    }

    fn overran(&self, conn: ConnId) {
        let Some(per_ip) = self.per_ip.get() else { return };
        let peer = {
            let inner = self.lock();
            match inner.conns.get(&conn) {
                Some(entry) => entry.info.remote_address.parse::<SocketAddr>(),
                None => match inner.closing.get(&conn) {
                    Some(closing) => closing.info.remote_address.parse(),
                    None => return,
                },
            }
        };
        if let Ok(peer) = peer {
            per_ip.overran(peer.ip(), Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: ConnId) -> ConnectionInfo {
        ConnectionInfo {
            id,
            remote_address: "127.0.0.1:1".into(),
            path: "/".into(),
            query: None,
            subprotocol: None,
            headers: Default::default(),
        }
    }

    fn text(s: &'static str) -> Outgoing {
        Outgoing::Text(s.into())
    }

    #[test]
    fn a_call_that_overran_is_held_against_its_clients_address_until_the_close_is_handled() {
        use crate::server::per_ip::{PerIpLimits, Refusal};
        let registry = Registry::new(OutboundLimits {
            max_messages: 8,
            max_bytes: 1 << 20,
        });
        let per_ip = PerIp::new(PerIpLimits {
            max_overruns: Some(2),
            ..PerIpLimits::default()
        });
        // Without the server's budget, an overrun is nobody's business.
        let _open = registry.register(info(1));
        registry.overran(1);
        registry.hold_overruns_in(per_ip.clone());
        let peer = "127.0.0.1".parse().unwrap();
        let now = Instant::now();
        assert!(per_ip.admit(peer, now).is_ok());
        // Open, and closed but with its on-close still to come: both are found.
        registry.overran(1);
        registry.unregister(1);
        registry.overran(1);
        // Read at `now`, before the overruns' own instants: nothing refills in between.
        let owed = per_ip.admit(peer, now).err();
        assert!(matches!(owed, Some(Refusal::Overran(_))), "{owed:?}");
        // Once the plugin has handled its on-close, nothing of it is kept, and a late
        // overrun of it is nobody's: the wait stays what it was.
        registry.closed(1);
        assert!(lock(&registry.inner).closing.is_empty());
        registry.overran(1);
        assert_eq!(per_ip.admit(peer, now).err(), owed);
    }

    #[test]
    fn routes_sends_broadcasts_and_groups() {
        let registry = Registry::new(OutboundLimits {
            max_messages: 8,
            max_bytes: 1 << 20,
        });
        let mut a = registry.register(info(1));
        let mut b = registry.register(info(2));
        let mut c = registry.register(info(3));
        // Not yet opened: only direct sends reach it, even in a group it joined at its
        // handshake, and it is nobody's member yet.
        let mut d = registry.register(info(4));
        registry.join(4, "early").unwrap();
        assert_eq!(registry.publish("early", text("too soon"), None), 0);
        assert!(registry.group_members("early").is_empty());
        for id in [1, 2, 3] {
            registry.opened(id);
        }
        registry.send(1, text("to a")).unwrap();
        assert_eq!(registry.broadcast(text("all but b"), Some(2)), 2);
        registry.join(2, "room").unwrap();
        registry.join(3, "room").unwrap();
        assert_eq!(registry.publish("room", text("room"), Some(3)), 1);
        let mut members = registry.group_members("room");
        members.sort();
        assert_eq!(members, vec![2, 3]);

        let drain = |m: &mut Mailbox| {
            let mut got = Vec::new();
            while let Some(Command::Send(Outgoing::Text(t))) = m.try_recv() {
                got.push(t.as_str().to_owned());
            }
            got
        };
        assert_eq!(drain(&mut a), ["to a", "all but b"]);
        assert_eq!(drain(&mut b), ["room"]);
        assert_eq!(drain(&mut c), ["all but b"]);
        assert!(drain(&mut d).is_empty());
        let mut conns = registry.connections();
        conns.sort();
        assert_eq!(conns, vec![1, 2, 3]);
        registry.opened(4);
        registry.send(4, text("to d")).unwrap();
        assert_eq!(registry.broadcast(text("all"), None), 4);
        assert_eq!(registry.group_members("early"), vec![4]);
        assert_eq!(drain(&mut d), ["to d", "all"]);
        drain(&mut a);
        drain(&mut b);
        drain(&mut c);

        registry.set_attachment(2, b"bob".to_vec()).unwrap();
        registry.unregister(2);
        // Readable until the plugin has handled on-close.
        assert_eq!(registry.attachment(2).as_deref(), Some(&b"bob"[..]));
        assert_eq!(registry.set_attachment(2, b"x".to_vec()), Err(HostError::Gone));
        registry.closed(2);
        assert_eq!(registry.attachment(2), None);
        assert_eq!(registry.group_members("room"), vec![3]);
        assert_eq!(registry.send(2, text("gone")), Err(HostError::Gone));
        assert_eq!(registry.join(2, "room"), Err(HostError::Gone));
        assert!(registry.info(2).is_none());
        assert_eq!(registry.info(3).unwrap().id, 3);
        registry.set_attachment(3, b"alice".to_vec()).unwrap();
        assert_eq!(registry.attachment(3).as_deref(), Some(&b"alice"[..]));
        registry.set_attachment(3, Vec::new()).unwrap();
        assert_eq!(registry.attachment(3), None);
        assert_eq!(registry.set_attachment(2, b"x".to_vec()), Err(HostError::Gone));
        registry.leave(3, "room").unwrap();
        assert!(registry.group_members("room").is_empty());
        assert_eq!(registry.len(), 3);
    }
}
