//! The plugin's thread: [`Runner`] calls a plugin's exports one event at a time and
//! owns the instance's life (fresh instances after a trap, replaying `on-open`, the
//! crash loop's back-off, the swap to a reloaded version between two events with its
//! state carried by snapshot and restore), and [`spawn`] runs it behind a
//! [`PluginHandle`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Instant;

use wasmtime::Engine;

use super::crash_loop::{self, Crash, CrashLoop, Failure};
use super::handle::{Handler, Mode, PluginHandle, route_span, spawn_handler};
use super::inline::Inline;
use super::instance::{Call, Grants, Instance, Live, PluginLimits, Sandbox, deliver, start_call, trap_kind};
use super::loader::Loaded;
use super::reload::{Carried, ReloadError, Reloaded};
use super::{
    ConnId, ConnectionEvent, Control, Export, HostServices, PluginEvent, UpgradeDecision, UpgradeRequest,
    answer_barrier,
};
use crate::metrics::{PluginMetrics, TrapKind};
use crate::store::{FileStore, KeyValue};

/// Runs `runner` for the route named `route` on a thread of its own (see
/// [`spawn_handler`]), and its timers on another.
pub fn spawn(mut runner: Runner, route: &str) -> std::io::Result<PluginHandle> {
    let (queue_len, services) = (runner.sandbox.limits.queue_len, runner.sandbox.services().clone());
    let (timers, decides_handshakes) = (runner.sandbox.timers.clone(), runner.decides_handshakes.clone());
    // Made here, after every builder call: the connections' instances must have the
    // same store, metrics and limits as the plugin thread's.
    if runner.stateless {
        runner.inline = Some(Arc::new(Inline::new(
            runner.sandbox.clone(),
            runner.loaded.clone(),
            runner.metrics.clone(),
            route_span(route),
        )));
    }
    let mode = match &runner.inline {
        Some(inline) => Mode::Stateless(inline.clone()),
        None => Mode::Threaded,
    };
    let mut handle = spawn_handler(route, queue_len, services, runner)?;
    timers.start(handle.queue.downgrade())?;
    handle.decides_handshakes = decides_handshakes;
    handle.mode = mode;
    Ok(handle)
}

/// Calls a plugin's exports, one event at a time, on the caller's thread. [`spawn`]
/// runs one on a thread of its own; benchmarks call it directly.
pub struct Runner {
    sandbox: Sandbox,
    /// The version being served.
    loaded: Arc<Loaded>,
    /// For a stateless plugin: the instances on the connections' threads, which serve
    /// their events (this one serves timers and handshakes) and get every new version.
    /// Made by [`spawn`] when `stateless` is set.
    inline: Option<Arc<Inline>>,
    /// Set by [`Runner::stateless`].
    stateless: bool,
    /// `None` after a trap, until the next event needs an instance.
    instance: Option<Instance>,
    /// Connections the plugin has seen `on-open` for and not yet `on-close`: a new
    /// instance gets `on-open` for each of them before any other event.
    opened: BTreeSet<ConnId>,
    /// This thread's streak of failures that count (see [`crash_loop`]).
    crash_loop: CrashLoop,
    /// Shared with [`PluginHandle::decides_handshakes`].
    decides_handshakes: Arc<AtomicBool>,
    /// Calls, traps, reloads and crash-loop state.
    metrics: Arc<PluginMetrics>,
    /// The streak as the metrics last showed it.
    reported_streak: u32,
}

impl Runner {
    /// Instantiates `loaded` once, so that a plugin that cannot start fails here
    /// (and the server's startup with it). Its key-value store is a [`FileStore`] in
    /// `grants.store_dir`, opened when first used; [`Runner::with_store`] replaces it.
    pub fn new(
        engine: &Engine,
        loaded: Loaded,
        services: Arc<dyn HostServices>,
        limits: PluginLimits,
        grants: Grants,
    ) -> wasmtime::Result<Self> {
        let store = Arc::new(FileStore::with_quota(&grants.store_dir, grants.store_quota));
        let mut runner = Runner {
            sandbox: Sandbox::new(engine.clone(), services, limits, grants, store),
            decides_handshakes: Arc::new(AtomicBool::new(loaded.linked.has_handshake())),
            loaded: Arc::new(loaded),
            inline: None,
            stateless: false,
            instance: None,
            opened: BTreeSet::new(),
            crash_loop: CrashLoop::new(),
            metrics: PluginMetrics::detached(),
            reported_streak: 0,
        };
        runner.instance = Some(runner.sandbox.instantiate(&runner.loaded)?);
        Ok(runner)
    }

    /// Serves a plugin that keeps no state between calls ([`Inline`]): once [`spawn`]ed,
    /// the events of its connections are handled on their own threads, by an instance
    /// per thread.
    pub fn stateless(mut self) -> Self {
        self.stateless = true;
        self
    }

    /// Counts its calls, traps, reloads and crash-loop state in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<PluginMetrics>) -> Self {
        if let Some(instance) = &mut self.instance {
            instance.live = Live::new(&metrics.instances);
        }
        self.sandbox.live = metrics.instances.clone();
        self.metrics = metrics;
        self
    }

    /// Serves the plugin's `store` imports from `store` instead.
    pub fn with_store(mut self, store: Arc<dyn KeyValue>) -> Self {
        self.sandbox.use_store(store);
        self.instance = None;
        self
    }

    /// Handles one event: calls its export (a trap closes that connection with 1011
    /// and the next event gets a fresh instance), or swaps in a reload. Once [`spawn`]ed,
    /// its thread's event loop calls it for everything but barriers, which the loop
    /// answers itself; called directly (benches, tests), it answers them too.
    pub fn handle(&mut self, event: impl Into<PluginEvent>) {
        match event.into() {
            PluginEvent::Connection(event) => self.connection_event(event),
            PluginEvent::Control(control) => self.control(control),
        }
        self.report_streak();
    }

    /// Shows this thread's crash streak in the gauges, if it changed.
    fn report_streak(&mut self) {
        let streak = self.crash_loop.streak();
        if streak != self.reported_streak {
            self.reported_streak = streak;
            // A stateless plugin's connections' threads have a streak of their own: the
            // route's gauges show the longer one.
            match &self.inline {
                Some(inline) => inline.plugin_thread_streak(streak),
                None => crash_loop::report(&self.metrics, streak),
            }
        }
    }

    fn connection_event(&mut self, event: ConnectionEvent) {
        let conn = event.conn();
        let for_plugin = match event {
            ConnectionEvent::Open(_) => {
                // A fresh instance first, so that the replay does not open `conn` too.
                self.live_instance();
                self.opened.insert(conn)
            }
            // Events of a connection the plugin does not know (it was closed with
            // 1011 after a trap) are dropped.
            ConnectionEvent::Text(..) | ConnectionEvent::Binary(..) => self.opened.contains(&conn),
            ConnectionEvent::Close(..) => self.opened.remove(&conn),
        };
        if for_plugin {
            self.call(Call::Event(&event));
        }
    }

    fn control(&mut self, control: Control) {
        match control {
            Control::Barrier(done) => {
                answer_barrier(&**self.sandbox.services(), done);
            }
            Control::Reload(loaded, outcome) => {
                let _ = outcome.send(self.reload(*loaded));
            }
            Control::Upgrade(request, reply) => {
                // A handshake that gave up waiting (503, or the client left) is not asked about.
                if !reply.is_closed() {
                    let decision = self.upgrade(&request);
                    // An accept may not reach the client before the writes made before it
                    // are durable.
                    let answer = move |durable: bool| {
                        let _ = reply.send(if durable { decision } else { UpgradeDecision::Failed });
                    };
                    match &self.sandbox.gate {
                        Some(gate) => gate.then(answer),
                        None => answer(true),
                    }
                }
            }
            Control::Timer(id, generation) => {
                if self.sandbox.timers.take(id, generation) {
                    self.call(Call::Timer(id));
                }
            }
        }
    }

    /// Asks `on-upgrade`; a trap or an overrun fails the handshake (and the instance).
    fn upgrade(&mut self, request: &UpgradeRequest) -> UpgradeDecision {
        let metrics = self.metrics.clone();
        let Some(Instance { store, exports, .. }) = self.live_instance() else {
            return UpgradeDecision::Failed;
        };
        start_call(store);
        let started = Instant::now();
        let Some(decided) = exports.on_upgrade(store, request) else {
            return UpgradeDecision::NoHook;
        };
        metrics.call(Export::OnUpgrade as usize, started.elapsed());
        match decided {
            Ok(decision) => {
                self.crash_loop.succeeded();
                decision
            }
            Err(error) => {
                let kind = trap_kind(&error, store);
                self.crashed(Crash {
                    conn: None,
                    failure: Failure::Trap(Export::OnUpgrade),
                    error,
                    kind,
                });
                UpgradeDecision::Failed
            }
        }
    }

    fn call(&mut self, call: Call) {
        let (conn, export) = (call.conn(), call.export());
        let metrics = self.metrics.clone();
        let Some(instance) = self.live_instance() else { return };
        let started = Instant::now();
        let delivered = deliver(instance, call);
        metrics.call(export as usize, started.elapsed());
        match delivered {
            Ok(()) => {
                self.crash_loop.succeeded();
            }
            Err(error) => {
                let kind = trap_kind(&error, &instance.store);
                self.crashed(Crash {
                    conn,
                    failure: Failure::Trap(export),
                    error,
                    kind,
                });
            }
        }
    }

    /// The current instance, or a new one with every open connection replayed.
    /// In a crash loop, waits before each restart; meanwhile events queue up and
    /// connections stop reading (back-pressure), but stay open.
    fn live_instance(&mut self) -> Option<&mut Instance> {
        // After a failed commit the instance's memory may hold writes the store lost: as
        // Durable Objects do, start again from what is durable.
        if self.sandbox.gate.as_ref().is_some_and(|gate| gate.take_lost()) && self.instance.take().is_some() {
            tracing::warn!(
                plugin = &*self.loaded.name,
                "store writes were lost: the plugin starts again from its stored state (a new instance, on-open replayed)"
            );
        }
        while self.instance.is_none() {
            if let Some(delay) = self.crash_loop.delay() {
                tracing::warn!(
                    plugin = &*self.loaded.name,
                    crashes = self.crash_loop.streak(),
                    "plugin keeps crashing: restarting in {delay:?}"
                );
                thread::sleep(delay);
            }
            // The replay re-runs what worked before: it does not end a streak.
            match self.sandbox.instantiate(&self.loaded) {
                Ok(mut instance) => match self.replay(&mut instance) {
                    Ok(()) => self.instance = Some(instance),
                    Err(crash) => self.crashed(crash),
                },
                Err(error) => self.crashed(Crash {
                    conn: None,
                    failure: Failure::Instantiate,
                    error,
                    kind: TrapKind::Trap,
                }),
            }
        }
        self.instance.as_mut()
    }

    /// Logs a failure, drops the poisoned instance and closes the connection whose event
    /// trapped with 1011. Its `on-close` is not delivered: no live instance saw it open.
    fn crashed(&mut self, crash: Crash) {
        crash.report(&self.loaded.name, &self.metrics);
        self.instance = None;
        self.crash_loop.failed(crash.failure);
        let still_open = crash.conn.is_some_and(|conn| self.opened.remove(&conn));
        crash.end_connection(&**self.sandbox.services(), still_open);
    }

    /// Calls `on-open` on a fresh instance for every open connection.
    fn replay(&self, instance: &mut Instance) -> Result<(), Crash> {
        for &conn in &self.opened {
            let started = Instant::now();
            let delivered = deliver(instance, Call::Event(&ConnectionEvent::Open(conn)));
            self.metrics.call(Export::OnOpen as usize, started.elapsed());
            delivered.map_err(|error| Crash {
                conn: Some(conn),
                failure: Failure::Trap(Export::OnOpen),
                kind: trap_kind(&error, &instance.store),
                error,
            })?;
        }
        Ok(())
    }

    /// Swaps in a new version between two events. The new version gets the old one's
    /// state (`snapshot`, then `restore`) if both have the `state` exports and the old
    /// instance is alive, else `on-open` for every open connection. If it cannot be
    /// instantiated, or any of those calls fails, the current version keeps serving.
    /// Neither is logged nor counted here: the caller does ([`super::reload::report`]).
    pub fn reload(&mut self, loaded: Loaded) -> Result<Reloaded, ReloadError> {
        let swap_started = Instant::now();
        let mut instance = self
            .sandbox
            .instantiate(&loaded)
            .map_err(|error| ReloadError::Instantiate(super::one_line(&error)))?;
        let state = match self.carry_state(&mut instance)? {
            Some(bytes) => Carried::Restored(bytes),
            None => {
                if let Err(Crash { conn, error, kind, .. }) = self.replay(&mut instance) {
                    self.metrics.trapped(kind);
                    return Err(ReloadError::Replay {
                        conn: conn.unwrap_or_default(),
                        error: super::one_line(&error),
                    });
                }
                Carried::Replayed
            }
        };
        self.decides_handshakes
            .store(loaded.linked.has_handshake(), Ordering::Relaxed);
        // A version without on-timer (0.1, or 0.3 without timers): the timers of the
        // version before would tick into nothing for ever.
        let mut timers_cancelled = 0;
        if !loaded.linked.has_timer_events() && !self.sandbox.timers.is_empty() {
            timers_cancelled = self.sandbox.timers.len();
            self.sandbox.timers.clear();
        }
        let swap = swap_started.elapsed();
        self.instance = Some(instance);
        self.loaded = Arc::new(loaded);
        if let Some(inline) = &self.inline {
            inline.serve(self.loaded.clone());
        }
        let reloaded = Reloaded {
            loaded: self.loaded.clone(),
            connections: self.opened.len(),
            state,
            swap,
            timers_cancelled,
        };
        self.crash_loop.reset();
        Ok(reloaded)
    }

    /// Moves the serving instance's state into `new` if both have the `state` exports:
    /// the size of what was carried, or `None` if nothing could be (the caller replays
    /// `on-open`). A refusal or trap in either call is the error; a trap in `snapshot`
    /// also drops the old instance, as any trap does.
    fn carry_state(&mut self, new: &mut Instance) -> Result<Option<usize>, ReloadError> {
        let metrics = self.metrics.clone();
        if !new.exports.has_state() {
            return Ok(None);
        }
        let Some(Instance { store, exports, .. }) = &mut self.instance else {
            return Ok(None);
        };
        start_call(store);
        let started = Instant::now();
        let Some(snapshot) = exports.snapshot(store) else {
            return Ok(None);
        };
        metrics.call(Export::Snapshot as usize, started.elapsed());
        let state = match snapshot {
            Ok(Ok(state)) => state,
            Ok(Err(why)) => return Err(ReloadError::SnapshotRefused(why)),
            Err(error) => {
                // Like any trap: the old version goes on from a fresh instance, with
                // on-open replayed, and the crash counts.
                metrics.trapped(trap_kind(&error, store));
                let why = ReloadError::SnapshotTrapped(super::one_line(&error));
                self.instance = None;
                self.crash_loop.failed(Failure::Trap(Export::Snapshot));
                return Err(why);
            }
        };
        start_call(&mut new.store);
        let started = Instant::now();
        // It has `restore` (checked above).
        let Some(restored) = new.exports.restore(&mut new.store, &state) else {
            return Ok(None);
        };
        metrics.call(Export::Restore as usize, started.elapsed());
        match restored {
            Ok(Ok(())) => Ok(Some(state.len())),
            Ok(Err(why)) => Err(ReloadError::RestoreRefused(why)),
            Err(error) => {
                metrics.trapped(trap_kind(&error, &new.store));
                Err(ReloadError::RestoreTrapped(super::one_line(&error)))
            }
        }
    }
}

/// The plugin thread's event loop ([`spawn_handler`]) answers barriers and keeps the
/// registry's record of open connections; the runner does the rest.
impl Handler for Runner {
    fn event(&mut self, _services: &dyn HostServices, event: ConnectionEvent) {
        self.handle(event);
    }

    fn control(&mut self, control: Control) {
        self.handle(control);
    }
}

/// What an export call costs in wasmtime's async calling style against the sync one,
/// on the same plugin and instance setup: the measurement behind the choice of calling
/// style (`cargo bench --bench plugin -- "plugin call style"`). Not used in serving.
#[doc(hidden)]
pub mod call_style {
    use std::time::Duration;

    use super::super::instance::deliver_async;
    use super::*;

    impl Runner {
        /// Makes an instance of `loaded` and calls its `on-text` with `text` `n` times, in
        /// the sync style; returns the time the calls took.
        pub fn time_sync_calls(&self, loaded: &Loaded, text: &str, n: u64) -> Duration {
            let mut instance = self.sandbox.instantiate(loaded).expect("instance");
            let event = ConnectionEvent::Text(1, text.to_owned());
            let started = Instant::now();
            for _ in 0..n {
                deliver(&mut instance, Call::Event(&event)).expect("call");
            }
            started.elapsed()
        }

        /// The same in the async style, as a stateless plugin's calls are made.
        pub async fn time_async_calls(&self, loaded: &Loaded, text: &str, n: u64) -> Duration {
            let mut instance = self.sandbox.instantiate_async(loaded).await.expect("instance");
            let event = ConnectionEvent::Text(1, text.to_owned());
            let started = Instant::now();
            for _ in 0..n {
                deliver_async(&mut instance, &event).await.expect("call");
            }
            started.elapsed()
        }
    }
}
