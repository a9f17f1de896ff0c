//! Several hosts serving one application through a shared Redis server.
//!
//! - [`wire`]: the messages hosts exchange, as bytes (sans I/O), tagged with the cluster's
//!   secret (the `wsplug-cluster-proto` crate, in `host/cluster-proto`).
//! - [`view`]: what a host knows of the others, rebuilt from those messages (sans I/O, the same crate).
//! - [`outbox`]: the messages waiting to be published, bounded in bytes.
//! - [`bus`]: the Redis connection: joining, the claim on a host number, publishing,
//!   receiving, heartbeats.
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
pub use wsplug_cluster_proto::{view, wire};

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::conn::{CloseCode, ConnId, ConnectionInfo};
use outbox::{Outbox, Target};
use view::{Dropped, View};
use wire::{Body, BusKey, HostNumber};

/// The cluster settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The Redis server the hosts share (a `redis://` or `rediss://` URL).
    pub url: String,
    /// Prefix of every key and channel, so that several applications can share one Redis.
    pub name: String,
    /// The file holding Redis's password (instead of one in the URL), if any.
    pub password_file: Option<PathBuf>,
    /// CAs (PEM) that sign the certificate of a `rediss://` server, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// The secret every message is authenticated with, if any.
    pub secret: Option<Secret>,
    /// The request headers a connection's facts keep in Redis (lower-case names); the
    /// others stay on the host that holds the connection.
    pub shared_headers: Vec<String>,
    /// Whether the query string goes to Redis with them.
    pub share_query: bool,
}

/// The headers that other hosts' `info` shows by default: none that carries a
/// credential (`cookie`, `authorization`, `proxy-authorization`, `sec-websocket-key`,
/// nor `sec-websocket-protocol`, where some clients put tokens).
pub const DEFAULT_SHARED_HEADERS: [&str; 7] = [
    "host",
    "origin",
    "user-agent",
    "accept-language",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-real-ip",
];

/// A cluster's secret: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl ClusterConfig {
    /// The settings of a cluster on Redis `url`, named `name`, with the defaults for the rest.
    pub fn new(url: &str, name: &str) -> Self {
        Self {
            url: url.to_owned(),
            name: name.to_owned(),
            password_file: None,
            ca_file: None,
            secret: None,
            shared_headers: DEFAULT_SHARED_HEADERS.iter().map(|h| h.to_string()).collect(),
            share_query: false,
        }
    }

    /// The facts of a connection as they may leave this host: the headers on the
    /// allow-list, and the query if it may.
    pub fn shareable(&self, info: &ConnectionInfo) -> ConnectionInfo {
        ConnectionInfo {
            query: if self.share_query { info.query.clone() } else { None },
            headers: info
                .headers
                .iter()
                .filter(|(name, _)| self.shared_headers.iter().any(|shared| shared == name))
                .collect(),
            ..info.clone()
        }
    }
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

/// A host not heard from for this long is dropped, with all its connections; its claim
/// on its number lasts as long.
pub const HOST_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a host trusts its claim after Redis last confirmed it: less than the claim
/// lasts, so that it stops speaking under the number before anyone else can take it.
pub const LEASE: Duration = Duration::from_millis(2500);

/// Bytes of messages that may wait for Redis at least; past the bound new ones are
/// dropped (and counted). A host's whole state must fit, so the bound grows with it.
pub const MIN_QUEUED_BYTES: usize = 64 << 20;

/// Messages of the cluster this host lost or refused, counted for the metrics.
#[derive(Debug, Default)]
pub struct Losses {
    /// Published in vain: Redis could not be reached, or refused them.
    pub unpublished: AtomicU64,
    /// Received from Redis and dropped: this host fell behind.
    pub unreceived: AtomicU64,
    /// Received and refused, by reason: not tagged with the secret (or not a message at
    /// all), too old, then the reasons of [`Dropped`].
    pub refused: [AtomicU64; 2 + Dropped::ALL.len()],
}

/// Why a received message was refused, beyond the view's reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Malformed, or not tagged with the cluster's secret.
    Forged,
    /// Sent longer ago than the replay window (in a cluster with a secret).
    Stale,
    /// Refused by the view.
    View(Dropped),
}

impl Refused {
    /// Every reason, as the metrics list them.
    pub fn all() -> impl Iterator<Item = Refused> {
        [Refused::Forged, Refused::Stale]
            .into_iter()
            .chain(Dropped::ALL.into_iter().map(Refused::View))
    }

    fn index(self) -> usize {
        match self {
            Self::Forged => 0,
            Self::Stale => 1,
            Self::View(dropped) => 2 + Dropped::ALL.iter().position(|d| *d == dropped).expect("listed"),
        }
    }

    /// As metrics label it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Forged => "forged",
            Self::Stale => "stale",
            Self::View(dropped) => dropped.label(),
        }
    }
}

impl Losses {
    /// Counts a refused message.
    pub fn refuse(&self, why: Refused) {
        self.refused[why.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Messages refused for `why` so far.
    pub fn refused(&self, why: Refused) -> u64 {
        self.refused[why.index()].load(Ordering::Relaxed)
    }
}

/// This host's membership of a cluster, as the registry uses it.
pub struct Cluster {
    me: AtomicU16,
    incarnation: u64,
    config: ClusterConfig,
    view: Mutex<View>,
    outbox: Outbox,
    losses: Arc<Losses>,
    /// Until when this host may speak under its number: Redis confirmed the claim at
    /// most [`LEASE`] before it. Publishing waits while it has lapsed.
    lease: Mutex<Instant>,
    /// Set when the lease was renewed.
    renewed: tokio::sync::Notify,
    /// Another process may hold this host's number: the claim is to be checked now.
    suspect: AtomicBool,
    /// Wakes the heartbeat to check the claim at once.
    check_claim: tokio::sync::Notify,
    /// Looks up another host's connection in Redis (set once the bus runs).
    lookup: OnceLock<Box<InfoLookup>>,
}

/// What the cluster needs of the host's own connections (the registry provides it):
/// the port through which the bus reaches them, so that the cluster knows nothing of
/// the server.
pub trait Members: Send + Sync + 'static {
    /// Carries out what another host asks of this host's connections.
    fn deliver(&self, delivery: view::Delivery);
    /// Queues every open connection of this host for the others: as a `Hello` if
    /// `hello`, else as a `State`.
    fn tell_state(&self, hello: bool);
    /// Keeps every open connection's handshake facts in Redis again.
    fn tell_infos(&self);
    /// Starts closing every connection whose id carries host number `host`; returns
    /// how many.
    fn close_numbered(&self, host: HostNumber, code: CloseCode, reason: &str) -> usize;
}

/// Fetches the handshake facts of another host's connection, waiting for Redis.
pub type InfoLookup = dyn Fn(ConnId) -> Option<ConnectionInfo> + Send + Sync;

impl Cluster {
    /// Host number `me` (claimed at `claimed`), incarnation `incarnation`, before it has
    /// heard any other host; what it loses is counted in `losses`; at most `max_queued`
    /// bytes wait for Redis.
    pub fn new(
        me: HostNumber,
        incarnation: u64,
        config: ClusterConfig,
        losses: Arc<Losses>,
        max_queued: usize,
        claimed: Instant,
    ) -> Self {
        let key = config.secret.as_ref().map(|secret| BusKey::derive(secret.0.as_bytes()));
        Self {
            me: AtomicU16::new(me),
            incarnation,
            view: Mutex::new(View::new(me, incarnation)),
            outbox: Outbox::new(me, incarnation, max_queued.max(MIN_QUEUED_BYTES), key),
            config,
            losses,
            lease: Mutex::new(claimed + LEASE),
            renewed: tokio::sync::Notify::new(),
            suspect: AtomicBool::new(false),
            check_claim: tokio::sync::Notify::new(),
            lookup: OnceLock::new(),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The key messages are tagged with, if the cluster has a secret.
    pub fn key(&self) -> Option<&BusKey> {
        self.outbox.key()
    }

    /// Messages to other hosts lost so far: dropped by the full outbox, or published in vain.
    pub fn unsent(&self) -> u64 {
        self.outbox.dropped() + self.losses.unpublished.load(Ordering::Relaxed)
    }

    /// Counts `n` messages that were published in vain.
    pub fn count_unpublished(&self, n: usize) {
        self.losses.unpublished.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// What this host lost and refused.
    pub fn losses(&self) -> &Losses {
        &self.losses
    }

    /// Other hosts this host hears now.
    pub fn peers(&self) -> usize {
        self.view().hosts()
    }

    /// Messages from other hosts this host dropped so far because it fell behind.
    pub fn unreceived(&self) -> u64 {
        self.losses.unreceived.load(Ordering::Relaxed)
    }

    /// This host's number: the high bits of the connection ids it hands out.
    pub fn host(&self) -> HostNumber {
        self.me.load(Ordering::Acquire)
    }

    /// This process's incarnation: random, so that a restarted host is told from its predecessor.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Whether `conn` is one of this host's connections.
    pub fn is_local(&self, conn: ConnId) -> bool {
        view::host_of(conn) == self.host()
    }

    /// Queues a message to every other host.
    pub fn tell_all(&self, body: Body) {
        self.outbox.push(Target::All, body);
    }

    /// Queues a message to the host that owns `conn` (its channel).
    pub fn tell_owner(&self, conn: ConnId, body: Body) {
        self.outbox.push(Target::Host(view::host_of(conn)), body);
    }

    /// Keeps (or, with `None`, forgets) the handshake facts of this host's connection
    /// `conn` where the other hosts find them: only what [`ClusterConfig::shareable`] lets go.
    pub fn tell_info(&self, conn: ConnId, info: Option<&ConnectionInfo>) {
        let encoded = info.map(|info| wire::encode_info(&self.config.shareable(info), self.key()));
        self.outbox.push_info(conn, encoded);
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

    /// Whether Redis confirmed this host's claim on its number recently enough to
    /// speak under it at `now`.
    pub fn holds_lease(&self, now: Instant) -> bool {
        now < *lock(&self.lease)
    }

    /// Redis confirmed the claim at `at` (the time the confirming command was sent).
    pub fn renew_lease(&self, at: Instant) {
        *lock(&self.lease) = at + LEASE;
        self.renewed.notify_waiters();
    }

    /// Waits until the lease holds at `Instant::now()`.
    pub async fn lease_held(&self) {
        loop {
            let renewed = self.renewed.notified();
            if self.holds_lease(Instant::now()) {
                return;
            }
            renewed.await;
        }
    }

    /// This host took number `me` instead of the one another process claimed: messages
    /// queued under the old one are dropped, and its connection ids carry the new one.
    pub fn renumber(&self, me: HostNumber, claimed: Instant) {
        self.outbox.renumber(me);
        self.view().renumber(me);
        self.me.store(me, Ordering::Release);
        self.renew_lease(claimed);
    }

    /// Notes that another process may hold this host's number: the heartbeat checks
    /// the claim at once.
    pub fn suspect_conflict(&self) {
        self.suspect.store(true, Ordering::Relaxed);
        self.check_claim.notify_one();
    }

    /// Waits until a conflict is suspected (see [`Cluster::suspect_conflict`]).
    pub async fn conflict_suspected(&self) {
        self.check_claim.notified().await;
    }

    /// Whether a conflict was suspected since the last call.
    pub fn take_suspicion(&self) -> bool {
        self.suspect.swap(false, Ordering::Relaxed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_headers_and_no_query_leave_the_host_by_default() {
        let info = ConnectionInfo {
            id: 1,
            remote_address: "10.0.0.1:5".into(),
            path: "/chat".into(),
            query: Some("token=secret".into()),
            subprotocol: Some("chat".into()),
            headers: vec![
                ("host".to_owned(), "example".to_owned()),
                ("cookie".into(), "session=secret".into()),
                ("authorization".into(), "Bearer secret".into()),
                ("proxy-authorization".into(), "Basic secret".into()),
                ("sec-websocket-key".into(), "dGhlIHNhbXBsZSBub25jZQ==".into()),
                ("sec-websocket-protocol".into(), "token.secret".into()),
                ("user-agent".into(), "test".into()),
            ]
            .into(),
        };
        let config = ClusterConfig::new("redis://x", "c");
        let shared = config.shareable(&info);
        assert_eq!(
            shared.headers.to_vec(),
            [
                ("host".to_owned(), "example".to_owned()),
                ("user-agent".into(), "test".into())
            ]
        );
        assert_eq!(shared.query, None);
        assert_eq!(
            (shared.path.as_str(), shared.subprotocol.as_deref()),
            ("/chat", Some("chat"))
        );
        let open = ClusterConfig {
            shared_headers: vec!["cookie".into()],
            share_query: true,
            ..config
        };
        let shared = open.shareable(&info);
        assert_eq!(
            shared.headers.to_vec(),
            [("cookie".to_owned(), "session=secret".to_owned())]
        );
        assert_eq!(shared.query.as_deref(), Some("token=secret"));
        assert_eq!(format!("{:?}", Secret("s3cret".into())), "Secret(..)");
    }

    #[test]
    fn urls_lose_their_password_in_messages() {
        assert_eq!(
            redacted("redis://:secret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
