//! The cluster's one Redis connection: joining (a host number of its own), publishing
//! what the [`Outbox`](super::outbox::Outbox) holds, applying what the other hosts
//! publish, heartbeats, and dropping hosts that went silent.
//!
//! The connection is `redis`'s `ConnectionManager` over RESP3: it reconnects by itself
//! and, with automatic resubscription, subscribes again before it serves a command.
//! While Redis is unreachable nothing here touches a WebSocket connection: local
//! delivery goes on, publishing fails (what was queued is lost, counted), and once a
//! heartbeat gets through again the host sends a `Hello`, which every other host
//! answers with its whole state, so that membership is whole again.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::calls::RedisCalls;
use super::outbox::Target;
use super::view::Effect;
use super::wire::{self, Body, Envelope, HostNumber};
use super::{Cluster, ClusterConfig, HEARTBEAT, HOST_TIMEOUT, Losses, redacted};
use crate::server::registry::Registry;

/// Messages published at most in one pipeline.
const BATCH: usize = 256;

/// Received messages that may wait for the receiving task; past it the host has fallen
/// behind, drops them and asks every host for its state again.
const RECEIVED_QUEUE: usize = 65_536;

/// Time to reach Redis when the host starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Time to publish what is queued when the host shuts down.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(1);

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
}

/// A host that has joined its cluster, not yet serving it: see [`Bus::run`].
pub struct Bus {
    cluster: Arc<Cluster>,
    manager: ConnectionManager,
    /// The plugins' calls that wait for Redis (their store, other hosts' connections).
    calls: Arc<RedisCalls>,
    received: mpsc::Receiver<Bytes>,
    resync: Arc<Resync>,
    names: Names,
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

/// A running bus, to leave the cluster with.
pub struct Running {
    cluster: Arc<Cluster>,
    manager: ConnectionManager,
    alive_key: String,
    infos_key: String,
}

/// Connects to the cluster's Redis server, takes a free host number and subscribes to
/// the cluster's channels. Fails if Redis cannot be reached within a few seconds.
pub async fn join(config: &ClusterConfig) -> anyhow::Result<Bus> {
    let names = Names {
        name: config.name.clone(),
    };
    let info = config
        .url
        .as_str()
        .into_connection_info()
        .context("invalid cluster URL")?;
    let resp3 = info.redis_settings().clone().set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(resp3)).context("invalid cluster URL")?;

    let (sender, received) = mpsc::channel(RECEIVED_QUEUE);
    let resync = Arc::new(Resync::default());
    let losses = Arc::new(Losses::default());
    let on_push = {
        let (resync, losses) = (resync.clone(), losses.clone());
        move |push: PushInfo| -> Result<(), ()> {
            match push.kind {
                PushKind::Message => {
                    // [channel, payload]
                    if let Some(Value::BulkString(payload)) = push.data.into_iter().nth(1)
                        && sender.try_send(Bytes::from(payload)).is_err()
                    {
                        losses.unreceived.fetch_add(1, Ordering::Relaxed);
                        resync.needed.store(true, Ordering::Relaxed);
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
    let me = claim_number(&mut manager, &names, incarnation).await?;
    manager.subscribe(names.bus()).await.context("cannot subscribe")?;
    manager
        .subscribe(names.host_channel(me))
        .await
        .context("cannot subscribe")?;
    Ok(Bus {
        cluster: Arc::new(Cluster::new(me, incarnation, losses)),
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
    pub fn run(self, registry: Arc<Registry>) -> Running {
        let Bus {
            cluster,
            manager,
            calls,
            received,
            resync,
            names,
        } = self;
        tracing::info!(host = cluster.host(), cluster = names.name, "joined the cluster");
        registry.tell_state(true);
        cluster.view().hello_sent(Instant::now());
        let running = Running {
            cluster: cluster.clone(),
            manager: manager.clone(),
            alive_key: names.alive(cluster.host()),
            infos_key: names.infos(cluster.host()),
        };
        cluster.set_lookup(lookup(calls, &names));
        let names = Arc::new(names);
        tokio::spawn(publish(cluster.clone(), manager.clone(), names.clone()));
        tokio::spawn(receive(cluster.clone(), registry.clone(), received));
        tokio::spawn(beat(cluster, registry, manager, names, resync));
        running
    }
}

impl Running {
    /// Leaves the cluster on a graceful shutdown: says `Bye` (the others drop this host's
    /// connections at once instead of after the timeout), publishes what is queued, and
    /// gives the host number back.
    pub async fn leave(mut self) {
        self.cluster.tell_all(Body::Bye);
        let flushed = tokio::time::timeout(LEAVE_TIMEOUT, self.cluster.outbox().drained()).await;
        let released: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(&self.alive_key)
            .arg(&self.infos_key)
            .query_async(&mut self.manager)
            .await;
        match (flushed, released) {
            (Ok(()), Ok(())) => tracing::info!(host = self.cluster.host(), "left the cluster"),
            _ => tracing::warn!(
                host = self.cluster.host(),
                "left the cluster without telling it (Redis unreachable): the others drop this host after {} s",
                HOST_TIMEOUT.as_secs()
            ),
        }
    }
}

/// Takes a host number no live host of the cluster holds.
async fn claim_number(manager: &mut ConnectionManager, names: &Names, incarnation: u64) -> anyhow::Result<HostNumber> {
    for _ in 0..HostNumber::MAX {
        let drawn: u64 = redis::cmd("INCR")
            .arg(names.host_seq())
            .query_async(manager)
            .await
            .context("cannot draw a host number")?;
        // 1..=65535: number 0 is a host outside any cluster.
        let number = ((drawn - 1) % u64::from(HostNumber::MAX) + 1) as HostNumber;
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
            return Ok(number);
        }
    }
    anyhow::bail!("every host number of cluster {} is taken", names.name)
}

/// Publishes what the outbox holds, a pipeline at a time, in order.
async fn publish(cluster: Arc<Cluster>, mut manager: ConnectionManager, names: Arc<Names>) {
    let bus = names.bus();
    let infos = names.infos(cluster.host());
    let mut batch = Vec::with_capacity(BATCH);
    let mut failing = false;
    let mut lost = 0u64;
    loop {
        batch.clear();
        cluster.outbox().take(BATCH, &mut batch).await;
        let mut pipe = redis::pipe();
        for (target, bytes) in &batch {
            match target {
                Target::All => pipe.cmd("PUBLISH").arg(&bus).arg(bytes.as_ref()),
                Target::Host(host) => pipe.cmd("PUBLISH").arg(names.host_channel(*host)).arg(bytes.as_ref()),
                Target::Info(conn) if bytes.is_empty() => pipe.cmd("HDEL").arg(&infos).arg(*conn),
                Target::Info(conn) => pipe.cmd("HSET").arg(&infos).arg(*conn).arg(bytes.as_ref()),
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
        cluster.outbox().done(batch.len());
    }
}

/// Applies what the other hosts publish.
async fn receive(cluster: Arc<Cluster>, registry: Arc<Registry>, mut received: mpsc::Receiver<Bytes>) {
    let me = (cluster.host(), cluster.incarnation());
    let mut malformed_logged: Option<Instant> = None;
    while let Some(bytes) = received.recv().await {
        // Redis sends this host's own messages back to it.
        if wire::sender_of(&bytes) == Some(me) {
            continue;
        }
        let envelope = match Envelope::decode(bytes) {
            Ok(envelope) => envelope,
            Err(error) => {
                if malformed_logged.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    malformed_logged = Some(Instant::now());
                    tracing::warn!(
                        "cluster: dropped a malformed message ({error}): another version, or not a wsplug host?"
                    );
                }
                continue;
            }
        };
        let origin = envelope.origin;
        let (effect, needs_hello) = {
            let mut view = cluster.view();
            let effect = view.apply(envelope, Instant::now());
            (effect, view.needs_hello())
        };
        match effect {
            Some(Effect::Deliver(delivery)) => registry.deliver(delivery),
            Some(Effect::SendState) => registry.tell_state(false),
            Some(Effect::Conflict) => tracing::error!(
                host = origin,
                "cluster: another process uses this host's number: connection ids may collide"
            ),
            None => {}
        }
        if needs_hello {
            say_hello(&cluster, &registry);
        }
    }
}

/// How long the plugin's `info` of another host's connection waits for Redis.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(250);

/// Looks another host's connection up in the hash its host keeps.
fn lookup(calls: Arc<RedisCalls>, names: &Names) -> Box<super::InfoLookup> {
    let names = names.clone();
    Box::new(move |conn| {
        let mut fetch = redis::pipe();
        fetch.cmd("HGET").arg(names.infos(super::view::host_of(conn))).arg(conn);
        let (bytes,): (Option<Vec<u8>>,) = calls.query(fetch, LOOKUP_TIMEOUT).ok()?;
        wire::decode_info(Bytes::from(bytes?)).ok()
    })
}

fn say_hello(cluster: &Cluster, registry: &Registry) {
    registry.tell_state(true);
    cluster.view().hello_sent(Instant::now());
}

/// Every [`HEARTBEAT`]: says this host is alive, keeps its number, drops the hosts that
/// went silent, and says `Hello` once Redis is reachable again after a loss.
async fn beat(
    cluster: Arc<Cluster>,
    registry: Arc<Registry>,
    mut manager: ConnectionManager,
    names: Arc<Names>,
    resync: Arc<Resync>,
) {
    let incarnation = cluster.incarnation();
    let alive = names.alive(cluster.host());
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut down = false;
    // Messages lost so far: dropped by the outbox (full while Redis was away) and by the
    // receiving task (behind); logged as they grow.
    let (mut dropped, mut missed) = (0, 0);
    loop {
        tick.tick().await;
        let (now_dropped, now_missed) = (cluster.outbox().dropped(), cluster.unreceived());
        if (now_dropped, now_missed) != (dropped, missed) {
            tracing::warn!(
                unsent = now_dropped - dropped,
                unreceived = now_missed - missed,
                "cluster: messages lost: the outbox was full ({} MiB), or this host fell behind what Redis sent it",
                super::MAX_QUEUED_BYTES >> 20
            );
            (dropped, missed) = (now_dropped, now_missed);
        }
        cluster.tell_all(Body::Heartbeat);
        // A command that gets through runs on a connection that has subscribed again.
        let kept: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(&alive)
            .arg(incarnation)
            .arg("PX")
            .arg(HOST_TIMEOUT.as_millis() as u64)
            .arg("GET")
            .query_async(&mut manager)
            .await;
        match kept {
            Ok(previous) => {
                if previous.is_some_and(|held| held != incarnation.to_string()) {
                    tracing::error!(
                        host = cluster.host(),
                        "cluster: this host's number was taken while it was away: connection ids may collide"
                    );
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
                    say_hello(&cluster, &registry);
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
            // Its connections' facts go with it (every survivor tries; one is enough).
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(names.infos(host)).query_async(&mut manager).await;
        }
    }
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
