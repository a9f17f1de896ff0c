//! The cluster's one Redis connection: joining (a host number of its own), publishing
//! what the [`Outbox`](super::outbox::Outbox) holds, applying what the other hosts
//! publish, heartbeats, and dropping hosts that went silent.
//!
//! The connection is `redis`'s `ConnectionManager` over RESP3 (TLS for `rediss://`): it
//! reconnects by itself and, with automatic resubscription, subscribes again before it
//! serves a command. While Redis is unreachable nothing here touches a WebSocket
//! connection: local delivery goes on, publishing waits (what does not fit the outbox
//! is lost, counted), and once a heartbeat gets through again the host sends a `Hello`,
//! which every other host answers with its whole state, so that membership is whole again.
//!
//! One number, one host. A host claims a free number (`SET alive:n NX PX`), and every
//! heartbeat keeps it with a compare-and-set: it never overwrites another process's
//! claim. It speaks under its number only while Redis confirmed the claim less than
//! [`LEASE`] ago (shorter than the claim lasts), so a host that was paused, or cut off
//! from Redis, falls silent before anyone else can take its number. If someone did
//! take it meanwhile, the host closes its connections with 1012 (their ids carry the
//! number; their clients reconnect and get fresh ones) and claims a new number.
//! Directed messages carry their target's incarnation, so that whatever a process
//! under a reused number receives for its predecessor, it drops.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::{Notify, mpsc};

use super::calls::RedisCalls;
use super::outbox::{Target, now_ms};
use super::view::Effect;
use super::wire::{self, Body, Envelope, HostNumber};
use super::{Cluster, ClusterConfig, HEARTBEAT, HOST_TIMEOUT, LEASE, Losses, Members, Refused, redacted};
use crate::conn::CloseCode;

/// Messages published at most in one pipeline.
const BATCH: usize = 256;

/// Bytes published at most in one pipeline (one message at least): a state in parts
/// goes out a few parts per round trip, not all at once.
const PIPELINE_BYTES: usize = 1 << 20;

/// Received messages that may wait for the receiving task.
const RECEIVED_QUEUE: usize = 65_536;

/// Bytes of received messages that may wait for the receiving task; past either bound
/// the host has fallen behind, drops what comes and asks every host for its state again.
const RECEIVED_BYTES: usize = 256 << 20;

/// Time to reach Redis when the host starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time to publish what is queued when the host shuts down.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a host joining a Redis that holds no cluster yet (new, or restarted
/// without its data) listens before it claims a number: long enough to hear every live
/// host's heartbeat, and so never to take a number one of them still uses.
const LISTEN: Duration = Duration::from_millis(1200);

/// A host sends a `Hello`, or its state in answer to others', at most this often: a
/// storm of them (Redis cutting every host off at once) costs each host one state a second.
const ANNOUNCE_GAP: Duration = Duration::from_secs(1);

/// In a cluster with a secret, a message sent longer ago than this (by the sender's
/// clock) is refused as a replay: the hosts' clocks must agree within it.
const REPLAY_WINDOW_MS: u64 = 60_000;

/// Keeps a claim: renews it if this incarnation holds it (1), takes it again if nobody
/// does (2: it lapsed), leaves it if another process holds it (0).
const KEEP_CLAIM: &str = "local held = redis.call('GET', KEYS[1]) \
    if held == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end \
    if not held then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end \
    return 0";

/// Gives a claim back, and the connections' facts with it, if this incarnation holds it.
const RELEASE_CLAIM: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    redis.call('DEL', KEYS[1], KEYS[2]) return 1 end return 0";

/// Removes a host's connections' facts if its claim has lapsed.
const FORGET_LAPSED: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then return redis.call('DEL', KEYS[2]) end return 0";

/// The names of the cluster's keys and channels.
#[derive(Clone)]
struct Names {
    name: String,
}

impl Names {
    /// The channel every host listens on.
    fn bus(&self) -> String {
        format!("{}:bus", self.name)
    }

    /// The channel of one host's directed messages.
    fn host_channel(&self, host: HostNumber) -> String {
        format!("{}:host:{host}", self.name)
    }

    /// The key a live host keeps, holding its incarnation, so that no other takes its number.
    fn alive(&self, host: HostNumber) -> String {
        format!("{}:alive:{host}", self.name)
    }

    /// The hash of one host's connections' handshake facts, by connection id.
    fn infos(&self, host: HostNumber) -> String {
        format!("{}:info:{host}", self.name)
    }

    /// The counter hosts draw their numbers from.
    fn host_seq(&self) -> String {
        format!("{}:host-seq", self.name)
    }

    /// Set by the first host of a cluster: while it exists, Redis has kept the
    /// cluster's keys (the claims among them) since.
    fn founded(&self) -> String {
        format!("{}:founded", self.name)
    }
}

/// A host that has joined its cluster, not yet serving it: see [`Bus::run`].
pub struct Bus {
    cluster: Arc<Cluster>,
    manager: ConnectionManager,
    /// The plugins' calls that wait for Redis (their store, other hosts' connections).
    calls: Arc<RedisCalls>,
    received: Received,
    resync: Arc<Resync>,
    names: Names,
}

/// What Redis pushed, waiting for the receiving task, bounded in count and bytes.
struct Received {
    queue: mpsc::Receiver<Bytes>,
    bytes: Arc<AtomicUsize>,
}

impl Received {
    async fn recv(&mut self) -> Option<Bytes> {
        let bytes = self.queue.recv().await?;
        self.bytes.fetch_sub(bytes.len(), Ordering::Relaxed);
        Some(bytes)
    }
}

/// What the push handler tells the heartbeat: the host missed messages and must ask
/// every host for its state (`Hello`) as soon as a command gets through.
#[derive(Default)]
struct Resync {
    /// The connection dropped, or received messages were dropped.
    needed: AtomicBool,
    /// Times the connection to Redis dropped (Redis went away, or cut this host off).
    disconnections: AtomicU64,
}

/// The `Hello`s and states this host is to send, at most one each [`ANNOUNCE_GAP`].
#[derive(Default)]
struct Announcer {
    hello: AtomicBool,
    state: AtomicBool,
    wake: Notify,
}

impl Announcer {
    fn want_hello(&self) {
        self.hello.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    fn want_state(&self) {
        self.state.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }
}

/// A running bus, to leave the cluster with.
pub struct Running {
    cluster: Arc<Cluster>,
    manager: ConnectionManager,
    names: Names,
}

/// A Redis client for `config`: TLS for `rediss://` (with `ca_file`'s CAs if given), the
/// password from `password_file` if given, RESP3.
fn client(config: &ClusterConfig) -> anyhow::Result<redis::Client> {
    let info = config
        .url
        .as_str()
        .into_connection_info()
        .context("invalid cluster URL")?;
    let mut settings = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    if let Some(file) = &config.password_file {
        let password = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read cluster_password_file {}", file.display()))?;
        settings = settings.set_password(password.trim_end_matches(['\r', '\n']));
    }
    let info = info.set_redis_settings(settings);
    match &config.ca_file {
        None => redis::Client::open(info).context("invalid cluster URL"),
        Some(file) => {
            let root_cert =
                std::fs::read(file).with_context(|| format!("cannot read cluster_ca_file {}", file.display()))?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            };
            redis::Client::build_with_tls(info, certificates)
                .with_context(|| format!("cluster_ca_file {}", file.display()))
        }
    }
}

/// Connects to the cluster's Redis server, takes a free host number and subscribes to
/// the cluster's channels. Fails if Redis cannot be reached within a few seconds. At
/// most `max_queued` bytes of messages may wait for Redis.
pub async fn join(config: &ClusterConfig, max_queued: usize) -> anyhow::Result<Bus> {
    let names = Names {
        name: config.name.clone(),
    };
    let client = client(config)?;
    let (sender, queue) = mpsc::channel(RECEIVED_QUEUE);
    let received_bytes = Arc::new(AtomicUsize::new(0));
    let resync = Arc::new(Resync::default());
    let losses = Arc::new(Losses::default());
    let on_push = {
        let (resync, losses, received_bytes) = (resync.clone(), losses.clone(), received_bytes.clone());
        move |push: PushInfo| -> Result<(), ()> {
            match push.kind {
                PushKind::Message => {
                    // [channel, payload]
                    if let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1) {
                        let len = payload.len();
                        let room = received_bytes.fetch_add(len, Ordering::Relaxed) + len <= RECEIVED_BYTES;
                        if !room || sender.try_send(Bytes::from(payload)).is_err() {
                            received_bytes.fetch_sub(len, Ordering::Relaxed);
                            losses.unreceived.fetch_add(1, Ordering::Relaxed);
                            resync.needed.store(true, Ordering::Relaxed);
                        }
                    }
                }
                PushKind::Disconnection => {
                    resync.disconnections.fetch_add(1, Ordering::Relaxed);
                    resync.needed.store(true, Ordering::Relaxed);
                }
                _ => {}
            }
            Ok(())
        }
    };
    let mut received = Received {
        queue,
        bytes: received_bytes,
    };
    let subscriber_config = manager_config().set_push_sender(on_push).set_automatic_resubscription();
    let unreachable = || format!("cannot reach the cluster's Redis server at {}", redacted(&config.url));
    let mut manager = tokio::time::timeout(
        CONNECT_TIMEOUT,
        ConnectionManager::new_with_config(client.clone(), subscriber_config),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|connected| Ok(connected?))
    .with_context(unreachable)?;
    let calls = tokio::time::timeout(CONNECT_TIMEOUT, RedisCalls::start(client, manager_config()))
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|started| started)
        .with_context(unreachable)?;

    let incarnation = random_u64();
    manager.subscribe(names.bus()).await.context("cannot subscribe")?;
    // A Redis without the cluster's keys (new, or restarted without them) knows nothing
    // of the numbers live hosts hold: hear them first.
    let founded: Option<String> = redis::cmd("SET")
        .arg(names.founded())
        .arg(incarnation)
        .arg("NX")
        .query_async(&mut manager)
        .await
        .context("cannot reach the cluster's keys")?;
    let mut heard = HashSet::new();
    if founded.is_some() {
        let listening = tokio::time::sleep(LISTEN);
        tokio::pin!(listening);
        loop {
            tokio::select! {
                () = &mut listening => break,
                bytes = received.recv() => match bytes.as_deref().and_then(wire::sender_of) {
                    Some((host, _)) => { heard.insert(host); }
                    None if bytes.is_none() => break,
                    None => {}
                },
            }
        }
    }
    let (me, claimed) = claim_number(&mut manager, &names, incarnation, &heard).await?;
    manager
        .subscribe(names.host_channel(me))
        .await
        .context("cannot subscribe")?;
    Ok(Bus {
        cluster: Arc::new(Cluster::new(
            me,
            incarnation,
            config.clone(),
            losses,
            max_queued,
            claimed,
        )),
        manager,
        calls: Arc::new(calls),
        received,
        resync,
        names,
    })
}

/// How the hosts' Redis connections reconnect and time out.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
        .set_number_of_retries(3)
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(1)))
}

impl Bus {
    /// The cluster as the registry uses it.
    pub fn cluster(&self) -> Arc<Cluster> {
        self.cluster.clone()
    }

    /// The plugins' key-value store, in the cluster's Redis server.
    pub fn store(&self) -> super::store::RedisStore {
        super::store::RedisStore::new(self.calls.clone(), &self.names.name)
    }

    /// Starts the tasks that publish, receive and beat, serving `registry`'s connections
    /// to the other hosts. Says `Hello` first.
    pub fn run(self, registry: Arc<dyn Members>) -> Running {
        let Bus {
            cluster,
            manager,
            calls,
            received,
            resync,
            names,
        } = self;
        tracing::info!(host = cluster.host(), cluster = names.name, "joined the cluster");
        let running = Running {
            cluster: cluster.clone(),
            manager: manager.clone(),
            names: names.clone(),
        };
        cluster.set_lookup(lookup(calls, &names, cluster.clone()));
        let names = Arc::new(names);
        let announcer = Arc::new(Announcer::default());
        announcer.want_hello();
        tokio::spawn(announce(cluster.clone(), registry.clone(), announcer.clone()));
        tokio::spawn(publish(cluster.clone(), manager.clone(), names.clone()));
        tokio::spawn(receive(cluster.clone(), registry.clone(), received, announcer.clone()));
        tokio::spawn(beat(cluster, registry, manager, names, resync, announcer));
        running
    }
}

impl Running {
    /// Leaves the cluster on a graceful shutdown: says `Bye` (the others drop this host's
    /// connections at once instead of after the timeout), publishes what is queued, and
    /// gives the host number back (if it is still this host's).
    pub async fn leave(mut self) {
        self.cluster.tell_all(Body::Bye);
        let flushed = tokio::time::timeout(LEAVE_TIMEOUT, self.cluster.outbox().drained()).await;
        let host = self.cluster.host();
        let released: redis::RedisResult<i64> = redis::Script::new(RELEASE_CLAIM)
            .key(self.names.alive(host))
            .key(self.names.infos(host))
            .arg(self.cluster.incarnation())
            .invoke_async(&mut self.manager)
            .await;
        match (flushed, released) {
            (Ok(()), Ok(_)) => tracing::info!(host, "left the cluster"),
            _ => tracing::warn!(
                host,
                "left the cluster without telling it (Redis unreachable): the others drop this host after {} s",
                HOST_TIMEOUT.as_secs()
            ),
        }
    }
}

/// Takes a host number no live host of the cluster holds, nor one of `heard`; returns
/// it and when Redis was asked for it (the claim's lease starts then).
async fn claim_number(
    manager: &mut ConnectionManager,
    names: &Names,
    incarnation: u64,
    heard: &HashSet<HostNumber>,
) -> anyhow::Result<(HostNumber, Instant)> {
    for _ in 0..HostNumber::MAX {
        let drawn: u64 = redis::cmd("INCR")
            .arg(names.host_seq())
            .query_async(manager)
            .await
            .context("cannot draw a host number")?;
        // 1..=65535: number 0 is a host outside any cluster.
        let number = ((drawn - 1) % u64::from(HostNumber::MAX) + 1) as HostNumber;
        if heard.contains(&number) {
            continue;
        }
        let asked = Instant::now();
        let taken: Option<String> = redis::cmd("SET")
            .arg(names.alive(number))
            .arg(incarnation)
            .arg("NX")
            .arg("PX")
            .arg(HOST_TIMEOUT.as_millis() as u64)
            .query_async(manager)
            .await
            .context("cannot claim a host number")?;
        if taken.is_some() {
            // A host that had this number before and died left its connections' facts.
            let _: () = redis::cmd("DEL")
                .arg(names.infos(number))
                .query_async(manager)
                .await
                .context("cannot claim a host number")?;
            return Ok((number, asked));
        }
    }
    anyhow::bail!("every host number of cluster {} is taken", names.name)
}

/// Sends the `Hello`s and the states the other tasks ask for, at most one each
/// [`ANNOUNCE_GAP`]: a `Hello` carries the state too, so it serves both.
async fn announce(cluster: Arc<Cluster>, registry: Arc<dyn Members>, announcer: Arc<Announcer>) {
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        let woken = announcer.wake.notified();
        if !announcer.hello.load(Ordering::Relaxed) && !announcer.state.load(Ordering::Relaxed) {
            woken.await;
        }
        if let Some(last) = last {
            tokio::time::sleep_until(last + ANNOUNCE_GAP).await;
        }
        let hello = announcer.hello.swap(false, Ordering::Relaxed);
        let state = announcer.state.swap(false, Ordering::Relaxed);
        if hello {
            registry.tell_state(true);
            cluster.view().hello_sent(Instant::now());
        } else if state {
            registry.tell_state(false);
        } else {
            continue;
        }
        last = Some(tokio::time::Instant::now());
    }
}

/// Publishes what the outbox holds, a pipeline at a time, in order, while the claim on
/// the host's number holds.
async fn publish(cluster: Arc<Cluster>, mut manager: ConnectionManager, names: Arc<Names>) {
    let bus = names.bus();
    let mut batch = Vec::with_capacity(BATCH);
    let mut failing = false;
    let mut lost = 0u64;
    let mut infos = (cluster.host(), names.infos(cluster.host()));
    loop {
        batch.clear();
        cluster.outbox().take(BATCH, PIPELINE_BYTES, &mut batch).await;
        if !cluster.holds_lease(Instant::now()) {
            cluster.lease_held().await;
        }
        // Taken under a number this host has since lost: not to be published under it.
        let me = cluster.host();
        let before = batch.len();
        batch.retain(|(target, bytes)| match target {
            Target::Info(conn) => super::view::host_of(*conn) == me,
            _ => wire::sender_of(bytes).is_some_and(|(origin, _)| origin == me),
        });
        cluster.count_unpublished(before - batch.len());
        if infos.0 != me {
            infos = (me, names.infos(me));
        }
        let infos = &infos.1;
        let mut pipe = redis::pipe();
        for (target, bytes) in &batch {
            match target {
                Target::All => pipe.cmd("PUBLISH").arg(&bus).arg(bytes.as_ref()),
                Target::Host(host) => pipe.cmd("PUBLISH").arg(names.host_channel(*host)).arg(bytes.as_ref()),
                Target::Info(conn) if bytes.is_empty() => pipe.cmd("HDEL").arg(infos).arg(*conn),
                Target::Info(conn) => pipe.cmd("HSET").arg(infos).arg(*conn).arg(bytes.as_ref()),
            }
            .ignore();
        }
        match pipe.query_async::<()>(&mut manager).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(lost, "cluster: publishing again");
            }
            Ok(()) => {}
            Err(error) => {
                lost += batch.len() as u64;
                cluster.count_unpublished(batch.len());
                if !failing {
                    failing = true;
                    tracing::warn!(
                        "cluster: cannot publish ({error}): messages to other hosts are lost until Redis is back; local delivery goes on"
                    );
                }
            }
        }
        cluster.outbox().done(before);
    }
}

/// Logs at most once every ten seconds per kind of trouble.
#[derive(Default)]
struct Quiet(std::collections::HashMap<&'static str, Instant>);

impl Quiet {
    fn may_log(&mut self, kind: &'static str) -> bool {
        let now = Instant::now();
        let logged = self
            .0
            .get(kind)
            .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(10));
        if !logged {
            self.0.insert(kind, now);
        }
        !logged
    }
}

/// Applies what the other hosts publish: authenticated (with a secret), recent enough,
/// and not refused by the view.
async fn receive(cluster: Arc<Cluster>, registry: Arc<dyn Members>, mut received: Received, announcer: Arc<Announcer>) {
    let mut quiet = Quiet::default();
    while let Some(bytes) = received.recv().await {
        // Redis sends this host's own messages back to it.
        if wire::sender_of(&bytes) == Some((cluster.host(), cluster.incarnation())) {
            continue;
        }
        let envelope = match Envelope::decode(bytes, cluster.key()) {
            Ok(envelope) => envelope,
            Err(error) => {
                cluster.losses().refuse(Refused::Forged);
                if quiet.may_log("malformed") {
                    tracing::warn!(
                        "cluster: dropped a message ({error}): another version, another cluster_secret, or not a wsplug host?"
                    );
                }
                continue;
            }
        };
        if cluster.key().is_some() && now_ms().abs_diff(envelope.sent_ms) > REPLAY_WINDOW_MS {
            cluster.losses().refuse(Refused::Stale);
            if quiet.may_log("stale") {
                tracing::warn!(
                    host = envelope.origin,
                    "cluster: dropped a message sent {} s from now: a replay, or the hosts' clocks disagree",
                    now_ms().abs_diff(envelope.sent_ms) / 1000
                );
            }
            continue;
        }
        let origin = envelope.origin;
        let (effect, needs_hello) = {
            let mut view = cluster.view();
            let effect = view.apply(envelope, Instant::now());
            (effect, view.needs_hello())
        };
        match effect {
            Some(Effect::Deliver(delivery)) => registry.deliver(delivery),
            Some(Effect::SendState) => announcer.want_state(),
            Some(Effect::Conflict) => {
                if quiet.may_log("conflict") {
                    tracing::warn!(
                        host = origin,
                        "cluster: another process speaks under this host's number: checking the claim"
                    );
                }
                cluster.suspect_conflict();
            }
            Some(Effect::Dropped(dropped)) => {
                cluster.losses().refuse(Refused::View(dropped));
                if quiet.may_log(dropped.label()) {
                    tracing::debug!(host = origin, reason = dropped.label(), "cluster: dropped a message");
                }
            }
            None => {}
        }
        if needs_hello {
            announcer.want_hello();
        }
    }
}

/// How long the plugin's `info` of another host's connection waits for Redis.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(250);

/// Looks another host's connection up in the hash its host keeps (its tag checked, in a
/// cluster with a secret).
fn lookup(calls: Arc<RedisCalls>, names: &Names, cluster: Arc<Cluster>) -> Box<super::InfoLookup> {
    let names = names.clone();
    Box::new(move |conn| {
        let mut fetch = redis::pipe();
        fetch.cmd("HGET").arg(names.infos(super::view::host_of(conn))).arg(conn);
        let (bytes,): (Option<Vec<u8>>,) = calls.query(fetch, LOOKUP_TIMEOUT).ok()?;
        wire::decode_info(Bytes::from(bytes?), cluster.key())
            .ok()
            .filter(|info| info.id == conn)
    })
}

/// What the claim check found.
enum Claim {
    /// This host holds its number.
    Kept,
    /// Nobody held it (it lapsed: this host was paused or cut off, or Redis lost its
    /// keys); this host holds it again.
    Retaken,
    /// Another process holds it.
    Lost,
}

async fn check_claim(manager: &mut ConnectionManager, alive: &str, incarnation: u64) -> redis::RedisResult<Claim> {
    let kept: i64 = redis::Script::new(KEEP_CLAIM)
        .key(alive)
        .arg(incarnation)
        .arg(HOST_TIMEOUT.as_millis() as u64)
        .invoke_async(manager)
        .await?;
    Ok(match kept {
        1 => Claim::Kept,
        2 => Claim::Retaken,
        _ => Claim::Lost,
    })
}

/// Every [`HEARTBEAT`] (and at once when another process seems to use this host's
/// number): says this host is alive, keeps its number, drops the hosts that went
/// silent, and says `Hello` once Redis is reachable again after a loss.
async fn beat(
    cluster: Arc<Cluster>,
    registry: Arc<dyn Members>,
    mut manager: ConnectionManager,
    names: Arc<Names>,
    resync: Arc<Resync>,
    announcer: Arc<Announcer>,
) {
    let incarnation = cluster.incarnation();
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down = false;
    // Messages lost so far: dropped by the outbox (full while Redis was away) and by the
    // receiving task (behind); logged as they grow.
    let (mut dropped, mut missed) = (0, 0);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cluster.conflict_suspected() => {}
        }
        cluster.take_suspicion();
        let (now_dropped, now_missed) = (cluster.outbox().dropped(), cluster.unreceived());
        if (now_dropped, now_missed) != (dropped, missed) {
            tracing::warn!(
                unsent = now_dropped - dropped,
                unreceived = now_missed - missed,
                "cluster: messages lost: the outbox was full, this host lost its number, or it fell behind what Redis sent it"
            );
            (dropped, missed) = (now_dropped, now_missed);
        }
        cluster.tell_all(Body::Heartbeat);
        let me = cluster.host();
        // A command that gets through runs on a connection that has subscribed again.
        let asked = Instant::now();
        match check_claim(&mut manager, &names.alive(me), incarnation).await {
            Ok(claim) => {
                match claim {
                    Claim::Kept => cluster.renew_lease(asked),
                    Claim::Retaken => {
                        cluster.renew_lease(asked);
                        tracing::warn!(
                            host = me,
                            "cluster: this host's claim on its number had lapsed (it was paused or cut off from Redis, or Redis lost its keys); it holds it again"
                        );
                        // The others may have dropped this host, and its connections' facts with it.
                        registry.tell_infos();
                        resync.needed.store(true, Ordering::Relaxed);
                    }
                    Claim::Lost => {
                        if let Err(error) = renumber(&cluster, &*registry, &mut manager, &names).await {
                            tracing::warn!("cluster: cannot take a new host number yet: {error:#}");
                            continue;
                        }
                        resync.needed.store(true, Ordering::Relaxed);
                    }
                }
                if std::mem::take(&mut down) {
                    tracing::info!("cluster: Redis reachable again; asking every host for its state");
                    resync.needed.store(true, Ordering::Relaxed);
                }
                if resync.needed.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        disconnections = resync.disconnections.load(Ordering::Relaxed),
                        "cluster: connected to Redis again, or missed messages: asking every host for its state"
                    );
                    announcer.want_hello();
                }
            }
            Err(error) if !down => {
                down = true;
                tracing::warn!(
                    "cluster: Redis unreachable ({error}); WebSocket connections stay open, local delivery goes on, reconnecting"
                );
            }
            Err(_) => {}
        }
        let dead = cluster.view().expire(Instant::now(), HOST_TIMEOUT);
        for host in dead {
            tracing::warn!(
                host,
                "cluster: no word from host for {} s: dropped with its connections",
                HOST_TIMEOUT.as_secs()
            );
            // Its connections' facts go with it (every survivor tries; one is enough), once
            // its claim has lapsed too: this host may only have been paused itself.
            let _: redis::RedisResult<i64> = redis::Script::new(FORGET_LAPSED)
                .key(names.alive(host))
                .key(names.infos(host))
                .invoke_async(&mut manager)
                .await;
        }
    }
}

/// Another process holds this host's number (this host was paused, or cut off from
/// Redis, past its claim, and the number was claimed anew): stops speaking under it,
/// closes the connections whose ids carry it, and claims a new number.
async fn renumber(
    cluster: &Cluster,
    registry: &dyn Members,
    manager: &mut ConnectionManager,
    names: &Names,
) -> anyhow::Result<()> {
    let old = cluster.host();
    tracing::error!(
        host = old,
        lease_ms = LEASE.as_millis() as u64,
        "cluster: another process holds this host's number (this host was paused or cut off from Redis past its claim): \
         closing its connections with 1012 and taking a new number"
    );
    let _: redis::RedisResult<()> = manager.unsubscribe(names.host_channel(old)).await;
    let heard: HashSet<HostNumber> = cluster.view().numbers().collect();
    let (me, claimed) = claim_number(manager, names, cluster.incarnation(), &heard).await?;
    manager
        .subscribe(names.host_channel(me))
        .await
        .context("cannot subscribe")?;
    cluster.renumber(me, claimed);
    // After the renumbering: a connection opened meanwhile got an id of the old number too.
    // 1012, "service restart": the clients reconnect, and get ids of the new number.
    let closed = registry.close_numbered(old, CloseCode::SERVICE_RESTART, "server restart: reconnect");
    tracing::warn!(old, host = me, closed, "cluster: took a new host number");
    Ok(())
}

/// A random number, different in every process (the host's incarnation).
fn random_u64() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since.as_nanos());
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnations_differ() {
        assert_ne!(random_u64(), random_u64());
    }
}
