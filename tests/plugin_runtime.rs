//! The plugin runtime's rules, in-process: a `Runner` driven directly, event by event,
//! over the real test plugins, with host services that record what the plugin did. No
//! server, no sockets, no log to read: each rule is what the recorder saw, or a count.
//! (What only a process shows, signals, file watching, durability across `kill -9`,
//! stdout reaching the log, stays in `tests/runtime.rs`.)

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use wsplug::conn::{CloseCode, ConnId, ConnectionInfo, HostError, Outgoing};
use wsplug::metrics::Metrics;
use wsplug::plugin::{
    Carried, ConnectionEvent, Control, Grants, HostServices, Loaded, Loader, PluginEvent, PluginHandle, PluginLimits,
    PluginLink, Refused, ReloadError, Reloaded, Runner,
};

use common::{TempDir, plugin_path};

/// What the plugin asked of the host, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Did {
    Send(ConnId, String),
    Close(ConnId, u16),
    /// A call of the connection's ran past the deadline (held against its client).
    Overran(ConnId),
}

/// Host services that record sends and closes, and know each connection's path.
#[derive(Default)]
struct Recorder {
    did: Mutex<Vec<Did>>,
    /// Notified at each record, for what the plugin does on its own (a timer).
    recorded: Condvar,
    paths: Mutex<Vec<(ConnId, String)>>,
}

impl Recorder {
    fn record(&self, did: Did) {
        self.did.lock().unwrap().push(did);
        self.recorded.notify_all();
    }

    /// Waits until something is recorded, at most `within`, and takes all of it.
    fn wait_take(&self, within: Duration) -> Vec<Did> {
        let did = self.did.lock().unwrap();
        let (mut did, _) = self
            .recorded
            .wait_timeout_while(did, within, |did| did.is_empty())
            .unwrap();
        std::mem::take(&mut did)
    }

    /// What was recorded since the last call.
    fn take(&self) -> Vec<Did> {
        std::mem::take(&mut self.did.lock().unwrap())
    }

    fn open_at(&self, conn: ConnId, path: &str) {
        self.paths.lock().unwrap().push((conn, path.to_owned()));
    }
}

impl HostServices for Recorder {
    fn opened(&self, _: ConnId) {}
    fn closed(&self, _: ConnId) {}
    fn send(&self, conn: ConnId, message: Outgoing) -> Result<(), HostError> {
        let text = match message {
            Outgoing::Text(text) => text.as_str().to_owned(),
            Outgoing::Binary(data) => format!("{} bytes", data.len()),
        };
        self.record(Did::Send(conn, text));
        Ok(())
    }
    fn close(&self, conn: ConnId, code: CloseCode, _: String) -> Result<(), HostError> {
        self.record(Did::Close(conn, code.get()));
        Ok(())
    }
    fn broadcast(&self, _: Outgoing, _: Option<ConnId>) -> u32 {
        0
    }
    fn join(&self, _: ConnId, _: &str) -> Result<(), HostError> {
        Ok(())
    }
    fn leave(&self, _: ConnId, _: &str) -> Result<(), HostError> {
        Ok(())
    }
    fn publish(&self, _: &str, _: Outgoing, _: Option<ConnId>) -> u32 {
        0
    }
    fn group_members(&self, _: &str) -> Vec<ConnId> {
        Vec::new()
    }
    fn connections(&self) -> Vec<ConnId> {
        Vec::new()
    }
    fn info(&self, conn: ConnId) -> Option<Arc<ConnectionInfo>> {
        let paths = self.paths.lock().unwrap();
        let (_, path) = paths.iter().find(|(id, _)| *id == conn)?;
        Some(Arc::new(ConnectionInfo {
            id: conn,
            remote_address: "127.0.0.1:1".into(),
            path: path.clone(),
            query: None,
            subprotocol: None,
            headers: Default::default(),
        }))
    }
    fn set_attachment(&self, _: ConnId, _: Vec<u8>) -> Result<(), HostError> {
        Ok(())
    }
    fn attachment(&self, _: ConnId) -> Option<bytes::Bytes> {
        None
    }
    fn overran(&self, conn: ConnId) {
        self.record(Did::Overran(conn));
    }
}

/// A runner of `plugin` over a fresh recorder, its metrics, and what keeps them alive.
struct Rig {
    runner: Runner,
    recorder: Arc<Recorder>,
    metrics: wsplug::metrics::RouteMetrics,
    loader: Loader,
    _dirs: (TempDir, TempDir),
}

impl Rig {
    fn new(plugin: &str) -> Rig {
        let cache = TempDir::new("runtime-cache");
        let store = TempDir::new("runtime-store");
        let loader = Loader::new(Some(cache.path().to_owned())).expect("engine");
        let recorder = Arc::new(Recorder::default());
        let metrics = Metrics::new().route("test");
        let grants = Grants {
            data_dir: None,
            store_dir: store.path().to_owned(),
            ..Grants::default()
        };
        let runner = Runner::new(
            loader.engine(),
            loader.load(&plugin_path(plugin), Instant::now()).expect("loads"),
            recorder.clone(),
            PluginLimits::default(),
            grants,
        )
        .expect("starts")
        .with_metrics(metrics.plugin.clone());
        Rig {
            runner,
            recorder,
            metrics,
            loader,
            _dirs: (cache, store),
        }
    }

    fn load(&self, plugin: &str) -> Loaded {
        self.loader.load(&plugin_path(plugin), Instant::now()).expect("loads")
    }

    fn open(&mut self, conn: ConnId, path: &str) -> Vec<Did> {
        self.recorder.open_at(conn, path);
        self.runner.handle(ConnectionEvent::Open(conn));
        self.recorder.take()
    }

    fn text(&mut self, conn: ConnId, text: &str) -> Vec<Did> {
        self.runner.handle(ConnectionEvent::Text(conn, text.to_owned()));
        self.recorder.take()
    }

    /// Serves the runner as the host does, on its own thread, or (`stateless`) on the
    /// threads of `runtime` that deliver the events.
    fn spawn(self, runtime: &tokio::runtime::Runtime, stateless: bool) -> Served {
        let runner = if stateless {
            self.runner.stateless()
        } else {
            self.runner
        };
        let handle = runtime
            .block_on(async { wsplug::plugin::spawn(runner, "test") })
            .expect("spawns");
        Served {
            // Leaked, for the links to borrow it for the rest of the test.
            handle: Box::leak(Box::new(handle)),
            links: Mutex::default(),
            recorder: self.recorder,
            metrics: self.metrics,
            _rest: (self.loader, self._dirs),
        }
    }

    /// Reloads `plugin`; what became of it. A reload sends nothing to anyone.
    fn reload(&mut self, plugin: &str) -> Result<Reloaded, ReloadError> {
        let loaded = self.load(plugin);
        let reloaded = self.runner.reload(loaded);
        assert_eq!(self.recorder.take(), []);
        reloaded
    }
}

fn send(conn: ConnId, text: &str) -> Did {
    Did::Send(conn, text.to_owned())
}

#[test]
fn a_trap_closes_its_connection_with_1011_and_a_fresh_instance_replays_the_others() {
    let mut rig = Rig::new("probe");
    for conn in [1, 2, 3] {
        assert_eq!(rig.open(conn, "/"), [send(conn, &format!("id {conn}"))]);
    }
    assert_eq!(rig.text(2, "panic"), [Did::Close(2, 1011)]);
    assert_eq!(rig.metrics.plugin.instances.get(), 0, "the trapped instance is gone");
    // The next event gets a fresh instance, which first hears of every other open
    // connection, in order, then the event itself.
    assert_eq!(
        rig.text(3, "hello"),
        [send(1, "id 1"), send(3, "id 3"), send(3, "hello")]
    );
    assert_eq!(rig.metrics.plugin.instances.get(), 1);
    // The closed connection is not replayed again.
    assert_eq!(rig.text(1, "again"), [send(1, "again")]);
}

#[test]
fn traps_of_every_kind_cost_only_their_connection() {
    let mut rig = Rig::new("chaos");
    rig.open(1, "/");
    for (conn, command) in [(2, "panic"), (3, "trap"), (4, "oom"), (5, "loop")] {
        rig.open(conn, "/");
        // Only the call that ran past its deadline is held against its client.
        let overran = (command == "loop").then_some(Did::Overran(conn));
        let expected: Vec<Did> = overran.into_iter().chain([Did::Close(conn, 1011)]).collect();
        assert_eq!(rig.text(conn, command), expected, "{command}");
        assert_eq!(rig.text(1, "still"), [send(1, "still")], "after {command}");
    }
}

#[test]
fn a_reload_swaps_versions_between_events_and_across_api_versions() {
    let mut rig = Rig::new("counter-v1");
    rig.open(1, "/");
    assert_eq!(rig.text(1, "x"), [send(1, "v1:1")]);
    // counter keeps no state across versions (no snapshot): on-open is replayed, and
    // its count starts again.
    let reloaded = rig.reload("counter-v2").expect("swapped in");
    assert_eq!((reloaded.state, reloaded.connections), (Carried::Replayed, 1));
    assert_eq!(rig.text(1, "x"), [send(1, "v2:1")]);
    // From a 0.1 plugin to a 0.3 one (echo), and back.
    let api = |reloaded: Reloaded| reloaded.loaded.linked.api().to_string();
    assert_eq!(api(rig.reload("echo").expect("to 0.3")), "0.3.0");
    assert_eq!(rig.text(1, "to 0.3"), [send(1, "to 0.3")]);
    assert_eq!(api(rig.reload("counter-v1").expect("to 0.1")), "0.1.0");
    assert_eq!(rig.text(1, "x"), [send(1, "v1:1")]);
}

#[test]
fn state_is_carried_across_a_reload_and_a_refusal_keeps_the_old_version() {
    let mut rig = Rig::new("api");
    rig.open(1, "/");
    for _ in 0..3 {
        assert_eq!(rig.text(1, "+"), []);
    }
    let reloaded = rig.reload("api").expect("swapped in");
    assert!(
        matches!(reloaded.state, Carried::Restored(bytes) if bytes > 0),
        "{reloaded:?}"
    );
    assert_eq!(rig.text(1, "total"), [send(1, "total 3")]);
    assert_eq!(rig.text(1, "restores"), [send(1, "restores 1")]);
    // The old version refuses its snapshot: it keeps serving, its state untouched.
    assert_eq!(rig.text(1, "fail-snapshot"), [send(1, "ok")]);
    assert_eq!(
        rig.reload("api").err(),
        Some(ReloadError::SnapshotRefused("told to refuse".into()))
    );
    assert_eq!(rig.text(1, "+"), []);
    assert_eq!(rig.text(1, "total"), [send(1, "total 4")]);
    assert_eq!(rig.text(1, "restores"), [send(1, "restores 1")]);
    // The new version refuses to restore: the same.
    assert_eq!(rig.text(1, "fail-restore"), [send(1, "ok")]);
    assert_eq!(
        rig.reload("api").err(),
        Some(ReloadError::RestoreRefused("told to refuse".into()))
    );
    assert_eq!(rig.text(1, "total"), [send(1, "total 4")]);
}

#[test]
fn a_version_that_traps_in_its_replay_is_refused_and_the_old_one_serves() {
    let mut rig = Rig::new("echo");
    rig.open(1, "/panic-on-open");
    assert_eq!(rig.text(1, "before"), [send(1, "before")]);
    // chaos panics in on-open for this path: its replay fails, so the reload does.
    assert!(
        matches!(rig.reload("chaos"), Err(ReloadError::Replay { conn: 1, .. })),
        "the replay of connection 1's on-open trapped"
    );
    assert_eq!(rig.text(1, "after"), [send(1, "after")]);
}

/// A runtime like the host's on a 2-core machine: two worker threads, which a
/// stateless plugin's calls run on.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Runs `test` on `plugin` served as the host serves it: on its plugin thread, then
/// stateless (`test` is told which, and the mode's name for its messages).
fn in_both_modes(plugin: &str, test: impl AsyncFn(&Served, bool, &str)) {
    let runtime = runtime();
    for stateless in [false, true] {
        let mode = if stateless { "stateless" } else { "plugin thread" };
        let served = Rig::new(plugin).spawn(&runtime, stateless);
        runtime.block_on(test(&served, stateless, mode));
    }
}

/// A plugin served as the host serves it: [`Rig::spawn`].
struct Served {
    handle: &'static PluginHandle,
    /// Each open connection's way to the plugin.
    links: Mutex<HashMap<ConnId, PluginLink<'static>>>,
    recorder: Arc<Recorder>,
    metrics: wsplug::metrics::RouteMetrics,
    _rest: (Loader, (TempDir, TempDir)),
}

impl Served {
    /// Hands `conn`'s `event` over as a connection does, with what it sends back
    /// collected in `replies` if given, and waits until it is handled.
    async fn deliver(&self, conn: ConnId, event: PluginEvent, replies: Option<&mut Vec<Outgoing>>) -> Vec<Did> {
        let mut link = self.links.lock().unwrap().remove(&conn).expect("an open connection");
        // Waiting for room when there is none (a crash loop's back-off), as a connection does.
        match link.try_send(event, replies).await {
            Err(Refused::Busy(event)) => link.send(event).await.expect("the plugin runs"),
            taken => taken.expect("the plugin runs"),
        }
        self.settle(conn, link).await
    }

    /// Waits until `conn`'s events so far are handled; what the plugin did.
    async fn settle(&self, conn: ConnId, mut link: PluginLink<'static>) -> Vec<Did> {
        let (done, handled) = tokio::sync::oneshot::channel();
        link.send(Control::Barrier(done).into()).await.expect("the plugin runs");
        handled.await.expect("the barrier is answered");
        self.links.lock().unwrap().insert(conn, link);
        self.recorder.take()
    }

    async fn open(&self, conn: ConnId, path: &str) -> Vec<Did> {
        self.recorder.open_at(conn, path);
        let link = self.handle.open(conn).await.expect("the plugin runs");
        self.settle(conn, link).await
    }

    async fn text(&self, conn: ConnId, text: &str) -> Vec<Did> {
        self.deliver(conn, ConnectionEvent::Text(conn, text.to_owned()).into(), None)
            .await
    }

    fn streak(&self) -> (i64, f64) {
        (self.metrics.plugin.crashes.get(), self.metrics.plugin.backoff.get())
    }
}

#[test]
fn the_crash_loop_rules_are_the_same_in_both_modes() {
    in_both_modes("chaos", async |served, stateless, mode| {
        served.open(1, "/").await;
        // Message traps from ten clients: each costs its client, none counts.
        for conn in 2..12 {
            served.open(conn, "/").await;
            assert_eq!(served.text(conn, "trap").await, [Did::Close(conn, 1011)], "{mode}");
        }
        assert_eq!(served.streak(), (0, 0.0), "{mode}");
        // A call that runs to its deadline: its client is closed and held to account.
        served.open(20, "/").await;
        assert_eq!(
            served.text(20, "loop").await,
            [Did::Overran(20), Did::Close(20, 1011)],
            "{mode}"
        );
        assert_eq!(served.streak(), (0, 0.0), "{mode}");
        // A plugin that cannot open a connection: each counts, and from the third
        // the next start waits (0.1 s, then doubled). On the plugin thread each fresh
        // instance first replays connection 1's on-open, which works: a replay ends
        // no streak.
        for conn in 100..106 {
            assert_eq!(
                served.open(conn, "/panic-on-open").await,
                [Did::Close(conn, 1011)],
                "{mode}"
            );
        }
        assert_eq!(served.streak(), (6, 0.8), "{mode}");
        if stateless {
            // Connection 105's barrier (in `open`) was answered without waiting out
            // the 0.8 s back-off that its own failure began: it still runs.
            let mut link = served.links.lock().unwrap().remove(&1).expect("open");
            let probe = link
                .try_send(ConnectionEvent::Text(1, "echo probe".into()).into(), None)
                .await;
            assert!(
                matches!(probe, Err(Refused::Busy(_))),
                "the back-off was over: {probe:?}"
            );
            served.links.lock().unwrap().insert(1, link);
        }
        // What a failed connection still sends is dropped.
        assert_eq!(served.text(105, "late").await, [], "{mode}");
        // A new event that works ends the streak.
        assert_eq!(served.text(1, "back").await, [send(1, "back")], "{mode}");
        assert_eq!(served.streak(), (0, 0.0), "{mode}");
    });
}

#[test]
fn timers_fire_on_the_plugin_thread_and_a_trapping_one_counts_in_both_modes() {
    in_both_modes("api", async |served, _, mode| {
        // api answers a timer `id` on connection `id >> 20`.
        let conn = 1;
        let timer = (conn << 20) | 7;
        served.open(conn, "/").await;
        assert_eq!(
            served.text(conn, &format!("timer {timer} 5")).await,
            [send(conn, "ok")],
            "{mode}"
        );
        let fired = served.recorder.wait_take(Duration::from_secs(5));
        assert!(
            matches!(&fired[..], [Did::Send(c, text)] if *c == conn && text.starts_with(&format!("timer {timer} late_us "))),
            "{mode}: {fired:?}"
        );
        // A timer whose on-timer traps closes no connection, and counts: on-timer
        // runs on the plugin's thread in both modes.
        let trapping = (conn << 20) | (1 << 19);
        assert_eq!(
            served.text(conn, &format!("timer {trapping} 1")).await,
            [send(conn, "ok")],
            "{mode}"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while served.streak().0 == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await; // polling the gauge
        }
        assert_eq!(served.streak(), (1, 0.0), "{mode}");
        assert_eq!(served.recorder.take(), [], "{mode}: nothing closed, nothing sent");
        // The connection is still served.
        assert_eq!(served.text(conn, "echo still").await, [send(conn, "still")], "{mode}");
    });
}

#[test]
fn a_stateless_call_keeps_its_replies_up_to_the_bounds_and_queues_the_rest_in_order() {
    let runtime = runtime();
    let served = Rig::new("probe").spawn(&runtime, true);
    runtime.block_on(async {
        served.open(1, "/").await;
        // A call that sends its own connection `count` messages of `size` bytes: what it
        // kept for the connection to encode at once, and what went to its queue.
        let call = |count: usize, size: usize| {
            let served = &served;
            async move {
                let mut replies = Vec::new();
                let event = ConnectionEvent::Text(1, format!("flood {count} {size}")).into();
                let queued = served.deliver(1, event, Some(&mut replies)).await;
                (replies.len(), queued.len())
            }
        };
        // At most 64 messages are kept; the rest take the queue, after them.
        assert_eq!(call(100, 10).await, (64, 36));
        // At most 256 KiB: six of 40,000 bytes, and the seventh would pass it.
        assert_eq!(call(10, 40_000).await, (6, 4));
        // Under both bounds, everything is kept.
        assert_eq!(call(3, 10).await, (3, 0));
    });
}

#[test]
fn a_write_is_read_at_once_by_the_route_and_its_reply_waits_for_the_disk() {
    in_both_modes("api", async |served, stateless, mode| {
        served.open(1, "/").await;
        served.open(2, "/").await;
        // Handed over without waiting for it to be handled and its output to leave: the
        // next event reads the write before its commit (a few ms of fsync) is done.
        let mut link = served.links.lock().unwrap().remove(&1).expect("open");
        let mut replies = Vec::new();
        let set = ConnectionEvent::Text(1, "kv-set k v".into()).into();
        link.try_send(set, stateless.then_some(&mut replies))
            .await
            .expect("taken");
        served.links.lock().unwrap().insert(1, link);
        let did = served.text(2, "kv-get k").await;
        assert!(did.contains(&send(2, "value v")), "{mode}: {did:?}");
        // The reply to the write went through the gate, not straight back.
        assert!(replies.is_empty(), "{mode}: {replies:?}");
        assert!(did.contains(&send(1, "ok")), "{mode}: {did:?}");
    });
}
