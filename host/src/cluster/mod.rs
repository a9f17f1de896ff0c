//! Several hosts serving one application through a shared Redis server.
//!
//! - [`wire`]: the messages hosts exchange, as bytes (sans I/O).
//! - [`view`]: what a host knows of the others, rebuilt from those messages (sans I/O).
//! - [`outbox`]: the messages waiting to be published, bounded in bytes.
//! - [`bus`]: the Redis connection: joining, publishing, receiving, heartbeats.
//! - [`calls`]: the Redis commands a plugin's call waits for, on a thread of their own.
//! - [`store`]: the plugins' key-value store, in Redis, shared by the hosts.
//!
//! The registry asks a [`Cluster`] what it knows of the other hosts and hands it
//! what they must learn; it never waits for Redis. Every host subscribes to one
//! channel for all (`{name}:bus`: membership changes, broadcasts, group messages,
//! heartbeats) and one of its own (`{name}:host:{n}`: sends and closes to its
//! connections).

pub mod bus;
pub mod calls;
pub mod outbox;
pub mod store;
pub mod view;
pub mod wire;

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::plugin::{ConnId, ConnectionInfo};
use outbox::{Outbox, Target};
use view::View;
use wire::{Body, HostNumber};

/// The `cluster` and `cluster_name` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The Redis server the hosts share (a `redis://` URL).
    pub url: String,
    /// Prefix of every key and channel, so that several applications can share one Redis.
    pub name: String,
}

/// A Redis URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// How often a host says it is alive.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

/// A host not heard from for this long is dropped, with all its connections.
pub const HOST_TIMEOUT: Duration = Duration::from_secs(3);

/// Bytes of messages that may wait for Redis; past it new ones are dropped (and counted).
pub const MAX_QUEUED_BYTES: usize = 64 << 20;

/// Messages of the cluster this host lost, counted for the metrics.
#[derive(Debug, Default)]
pub struct Losses {
    /// Published in vain: Redis could not be reached, or refused them.
    pub unpublished: std::sync::atomic::AtomicU64,
    /// Received from Redis and dropped: this host fell behind.
    pub unreceived: std::sync::atomic::AtomicU64,
}

/// This host's membership of a cluster, as the registry uses it.
pub struct Cluster {
    me: HostNumber,
    incarnation: u64,
    view: Mutex<View>,
    outbox: Outbox,
    losses: Arc<Losses>,
    /// Looks up another host's connection in Redis (set once the bus runs).
    lookup: OnceLock<Box<InfoLookup>>,
}

/// Fetches the handshake facts of another host's connection, waiting for Redis.
pub type InfoLookup = dyn Fn(ConnId) -> Option<ConnectionInfo> + Send + Sync;

impl Cluster {
    /// Host number `me`, incarnation `incarnation`, before it has heard any other host;
    /// what it loses is counted in `losses`.
    pub fn new(me: HostNumber, incarnation: u64, losses: Arc<Losses>) -> Self {
        Self {
            me,
            incarnation,
            view: Mutex::new(View::new(me, incarnation)),
            outbox: Outbox::new(me, incarnation, MAX_QUEUED_BYTES),
            losses,
            lookup: OnceLock::new(),
        }
    }

    /// Messages to other hosts lost so far: dropped by the full outbox, or published in vain.
    pub fn unsent(&self) -> u64 {
        self.outbox.dropped() + self.losses.unpublished.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts `n` messages that were published in vain.
    pub fn count_unpublished(&self, n: usize) {
        self.losses
            .unpublished
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Other hosts this host hears now.
    pub fn peers(&self) -> usize {
        self.view().hosts()
    }

    /// Messages from other hosts this host dropped so far because it fell behind.
    pub fn unreceived(&self) -> u64 {
        self.losses.unreceived.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This host's number: the high bits of the connection ids it hands out.
    pub fn host(&self) -> HostNumber {
        self.me
    }

    /// This process's incarnation: random, so that a restarted host is told from its predecessor.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Whether `conn` is one of this host's connections.
    pub fn is_local(&self, conn: ConnId) -> bool {
        view::host_of(conn) == self.me
    }

    /// Queues a message to every other host.
    pub fn tell_all(&self, body: Body) {
        self.outbox.push(Target::All, body);
    }

    /// Queues a message to the host that owns `conn`.
    pub fn tell_owner(&self, conn: ConnId, body: Body) {
        self.outbox.push(Target::Host(view::host_of(conn)), body);
    }

    /// Keeps (or, with `None`, forgets) the handshake facts of this host's connection
    /// `conn` where the other hosts find them.
    pub fn tell_info(&self, conn: ConnId, info: Option<&ConnectionInfo>) {
        self.outbox.push_info(conn, info.map(wire::encode_info));
    }

    /// The handshake facts of another host's open connection. Waits for Redis (briefly:
    /// see [`bus`]); called from a plugin's call, on whichever thread runs it.
    pub fn remote_info(&self, conn: ConnId) -> Option<Arc<ConnectionInfo>> {
        if !self.view().contains(conn) {
            return None;
        }
        self.lookup.get().and_then(|lookup| lookup(conn)).map(Arc::new)
    }

    /// Sets how [`Cluster::remote_info`] looks connections up.
    pub fn set_lookup(&self, lookup: Box<InfoLookup>) {
        let _ = self.lookup.set(lookup);
    }

    /// What this host knows of the others. Never held while calling into the registry.
    pub fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The queue of messages to publish.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(
            redacted("redis://:secret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
