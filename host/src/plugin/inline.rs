//! Stateless plugins: a connection's events handled on the connection's own thread.
//!
//! A plugin that keeps nothing between calls (what it needs to remember lives in the
//! host: attachments, groups, the key-value store) can be called by any of several
//! instances. Each thread that runs connections then gets an instance of its own, and
//! a message goes from the socket to `on-text` and its reply back to the socket
//! without crossing a thread: no queue, no wake-up. The plugin's thread still serves
//! its timers and handshakes, and validates each new version before it is served here.
//!
//! What the plugin sends to the connection whose message it is handling goes back to
//! that connection directly (`replies::Replying`): no registry lookup, no queue, no lock.
//!
//! Calls are made in wasmtime's async style: a call that runs past an epoch tick (2 ms)
//! gives its thread back to the other connections at every tick (`deadline.rs`),
//! so that a call that spins costs its route, not the other routes, the accept loop or
//! `/healthz`. At most [`Inline::calls_at_once`] of a route's calls run at once (each
//! needs an instance, with its linear memory): past that a connection waits its turn.
//!
//! The cost: a host call that waits (a store call) holds up the other connections of
//! its thread while it waits, unless it hands them to another thread first (within
//! [`crate::blocking`]'s bound); every thread holds an instance (its linear memory).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use super::call_slots::CallSlots;
use super::crash_loop::{self, Crash, CrashLoop, Failure};
use super::instance::{AsyncInstance, Sandbox, deliver_async, trap_kind};
use super::replies::Replying;
use super::{ConnId, ConnectionEvent, Control, Loaded, Outgoing, PluginEvent, answer_barrier};
use crate::metrics::{PluginMetrics, TrapKind};

/// A stateless plugin's instances on the threads that run its connections.
pub struct Inline {
    /// Tells this plugin's instances from other routes' in a thread's list.
    id: u64,
    sandbox: Sandbox,
    /// The version to serve, and its number: a thread whose instance is of an older
    /// number makes a new one before its next call.
    version: Mutex<Arc<Loaded>>,
    generation: AtomicU64,
    /// The streak of failures that count, on any connection's thread (see [`crash_loop`]).
    crash_loop: CrashLoop,
    /// The streak of the plugin's thread (`on-timer`, `on-upgrade`), for the gauges.
    plugin_thread_streak: AtomicU32,
    /// Held while the gauges are set from the two counts, so that a crash and a success
    /// on two threads at once cannot leave them showing a streak that has ended.
    reporting: Mutex<()>,
    /// Calls that may run at once (each holds an instance).
    calls: CallSlots,
    /// In a crash loop: no event is handled before this time, in nanoseconds after
    /// [`Inline::epoch`] (0: none).
    restart_at: AtomicU64,
    epoch: Instant,
    metrics: Arc<PluginMetrics>,
    /// Names the route in what the plugin logs.
    span: tracing::Span,
}

/// Runs `call` (an instantiation or an export call), turning a panic in it into its
/// error. The host calls that wait do so through [`crate::blocking`], which a runtime
/// thread can use; WASI's others (files, sockets, which the sandbox does not offer
/// anyway) wait by entering the async runtime, which a thread of that runtime cannot
/// do: the host call panics. That panic fails the call like a trap, and its message,
/// printed nowhere, becomes the error. Each poll is in `span`, so that what the plugin
/// logs names its route.
async fn catching_panics<T>(
    span: &tracing::Span,
    call: impl Future<Output = wasmtime::Result<T>>,
) -> wasmtime::Result<T> {
    let mut call = std::pin::pin!(call);
    std::future::poll_fn(|cx| {
        let _route = span.enter();
        IN_CALL.set(true);
        let polled = panic::catch_unwind(AssertUnwindSafe(|| call.as_mut().poll(cx)));
        IN_CALL.set(false);
        polled.unwrap_or_else(|payload| {
            let why = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("a panic");
            Poll::Ready(Err(wasmtime::Error::msg(format!(
                "a host call the plugin made cannot run on a connection's thread (a stateless plugin \
                 has no WASI files or sockets): {why}"
            ))))
        })
    })
    .await
}

/// Keeps the panic hook from printing the panics [`catching_panics`] turns into errors;
/// any other panic is printed as before.
fn quiet_call_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let print = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !IN_CALL.get() {
                print(info);
            }
        }));
    });
}

thread_local! {
    /// A plugin call is being polled on this thread, under [`catching_panics`].
    static IN_CALL: Cell<bool> = const { Cell::new(false) };
}

/// One thread's idle instance of one plugin.
struct Local {
    owner: u64,
    generation: u64,
    /// Boxed: a call moves it out and back, and the call's future holds it.
    instance: Box<AsyncInstance>,
}

thread_local! {
    /// This thread's idle instances, one per stateless plugin it has called. A call
    /// takes its plugin's out and puts it back when done (in the pool of the thread it
    /// ends on); an instance stays until its plugin's next version replaces it, a trap
    /// drops it, or the thread ends.
    static INSTANCES: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// What became of a connection's event handed to the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handed {
    /// Handled.
    Taken,
    /// Handled here, and the plugin failed: the connection is being closed with 1011,
    /// and none of its later events (`on-close` neither) is for the plugin.
    Trapped,
}

impl Inline {
    /// Instances of `loaded` made in `sandbox`, counted in `metrics`, logging in `span`.
    pub(super) fn new(sandbox: Sandbox, loaded: Arc<Loaded>, metrics: Arc<PluginMetrics>, span: tracing::Span) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(1);
        quiet_call_panics();
        // Two per runtime thread: one running and one waiting in a host call that
        // handed its thread's other connections on ([`crate::blocking`]).
        let threads = tokio::runtime::Handle::try_current()
            .map(|runtime| runtime.metrics().num_workers())
            .unwrap_or_else(|_| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let calls_at_once = 2 * threads.max(1);
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            sandbox,
            version: Mutex::new(loaded),
            generation: AtomicU64::new(0),
            crash_loop: CrashLoop::new(),
            plugin_thread_streak: AtomicU32::new(0),
            reporting: Mutex::new(()),
            calls: CallSlots::new(calls_at_once),
            restart_at: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics,
            span,
        }
    }

    /// How many of this plugin's calls may run at once: two per runtime thread.
    pub fn calls_at_once(&self) -> usize {
        self.calls.limit()
    }

    /// Serves `loaded` from the next call on, on every thread.
    pub(super) fn serve(&self, loaded: Arc<Loaded>) {
        *self.version.lock().expect("not poisoned") = loaded;
        self.generation.fetch_add(1, Ordering::Release);
        self.crash_loop.reset();
        self.restart_at.store(0, Ordering::Relaxed);
        self.report_crashes();
    }

    /// In a crash loop, the time before which no event is handled.
    pub fn restart_at(&self) -> Option<Instant> {
        let at = self.restart_at.load(Ordering::Relaxed);
        (at != 0)
            .then(|| self.epoch + Duration::from_nanos(at))
            .filter(|&at| at > Instant::now())
    }

    /// Handles one of a connection's events on this thread: calls its export on an
    /// instance of the current version (this thread's, or a new one), once fewer than
    /// [`Inline::calls_at_once`] calls of this plugin are running. A trap closes the
    /// connection with 1011 and drops the instance; in a crash loop,
    /// [`Inline::restart_at`] says how long to wait before the next event.
    ///
    /// With `replies`, what a message's call sends to its own connection is added
    /// there (up to a bound), for the connection to encode before anything queued for
    /// it meanwhile; the caller must have taken everything queued before.
    pub(super) async fn handle(&self, event: PluginEvent, replies: Option<&mut Vec<Outgoing>>) -> Handed {
        let event = match event {
            PluginEvent::Connection(event) => event,
            PluginEvent::Control(Control::Barrier(done)) => {
                // Every earlier event was handled, here; once what they sent has left too.
                answer_barrier(&**self.sandbox.services(), done);
                return Handed::Taken;
            }
            // Not a connection's: the plugin's thread handles these.
            PluginEvent::Control(_) => return Handed::Taken,
        };
        let conn = event.conn();
        if let ConnectionEvent::Open(_) = event {
            self.sandbox.services().opened(conn);
        }
        let replies = replies.filter(|_| matches!(event, ConnectionEvent::Text(..) | ConnectionEvent::Binary(..)));
        // Boxed: a call's future is large (about 1 KiB, most of it wasmtime's), and a
        // connection's task, which awaits this, would otherwise be as large when idle.
        // The event stays out of the box, which glibc's per-thread cache then serves
        // (it takes up to 1032 bytes).
        let called = Box::pin(self.call_in_turn(conn, &event, replies)).await;
        let handed = match called {
            Ok(()) => {
                if self.crash_loop.succeeded() {
                    // A call worked: the crash loop is over, on every thread.
                    self.restart_at.store(0, Ordering::Relaxed);
                    self.report_crashes();
                }
                Handed::Taken
            }
            Err(crash) => {
                self.crashed(crash);
                Handed::Trapped
            }
        };
        if matches!(event, ConnectionEvent::Close(..)) {
            self.forget(conn);
        }
        handed
    }

    /// Notes the crash streak of the plugin's thread, which serves this plugin's
    /// `on-timer` and `on-upgrade`: the gauges show the longer of the two streaks.
    pub(super) fn plugin_thread_streak(&self, streak: u32) {
        self.plugin_thread_streak.store(streak, Ordering::Relaxed);
        self.report_crashes();
    }

    fn report_crashes(&self) {
        // The counts are read under the lock: the last to set the gauges read the latest.
        let _reporting = self.reporting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let longest = self
            .crash_loop
            .streak()
            .max(self.plugin_thread_streak.load(Ordering::Relaxed));
        crash_loop::report(&self.metrics, longest);
    }

    /// Ends the host's record of a connection whose `on-close` is not called.
    pub(super) fn forget(&self, conn: ConnId) {
        self.sandbox.services().closed(conn);
    }

    /// [`Inline::call`] once fewer than [`Inline::calls_at_once`] calls run.
    async fn call_in_turn(
        &self,
        conn: ConnId,
        event: &ConnectionEvent,
        replies: Option<&mut Vec<Outgoing>>,
    ) -> Result<(), Crash> {
        let _turn = self.calls.take().await;
        self.call(conn, event, replies).await
    }

    /// Calls `event`'s export on an instance of the current version, keeping its
    /// replies to `conn` in `replies` if given.
    async fn call(
        &self,
        conn: ConnId,
        event: &ConnectionEvent,
        mut replies: Option<&mut Vec<Outgoing>>,
    ) -> Result<(), Crash> {
        let export = event.export();
        let generation = self.generation.load(Ordering::Acquire);
        let mut instance = match self.take_idle(generation) {
            Some(instance) => instance,
            None => {
                let loaded = self.version.lock().expect("not poisoned").clone();
                // Boxed: rare, and large, it would grow every call's future.
                catching_panics(&self.span, Box::pin(self.sandbox.instantiate_async(&loaded)))
                    .await
                    .map_err(|error| Crash {
                        conn: Some(conn),
                        failure: Failure::Instantiate,
                        error,
                        kind: TrapKind::Trap,
                    })
                    .map(Box::new)?
            }
        };
        if let Some(replies) = replies.as_deref_mut() {
            instance.store.data_mut().replying = Some(Replying::new(conn, std::mem::take(replies)));
        }
        let started = Instant::now();
        let delivered = catching_panics(&self.span, deliver_async(&mut instance, event)).await;
        self.metrics.call(export as usize, started.elapsed());
        if let Some(replying) = instance.store.data_mut().replying.take()
            && let Some(replies) = replies
        {
            *replies = replying.into_replies();
        }
        match delivered {
            Ok(()) => {
                self.put_idle(generation, instance);
                Ok(())
            }
            Err(error) => Err(Crash {
                conn: Some(conn),
                failure: Failure::Trap(export),
                kind: trap_kind(&error, &instance.store),
                error,
            }),
        }
    }

    /// This thread's idle instance of this plugin, if it has one of `generation`; one
    /// of an older version is dropped.
    fn take_idle(&self, generation: u64) -> Option<Box<AsyncInstance>> {
        INSTANCES.with_borrow_mut(|idle| {
            let at = idle.iter().position(|local| local.owner == self.id)?;
            let local = idle.swap_remove(at);
            (local.generation == generation).then_some(local.instance)
        })
    }

    /// Keeps `instance` for this thread's next call, unless a new version is served
    /// meanwhile or the thread has one already (a call that yielded let another start).
    fn put_idle(&self, generation: u64, instance: Box<AsyncInstance>) {
        if generation != self.generation.load(Ordering::Acquire) {
            return;
        }
        INSTANCES.with_borrow_mut(|idle| {
            if !idle.iter().any(|local| local.owner == self.id) {
                idle.push(Local {
                    owner: self.id,
                    generation,
                    instance,
                });
            }
        });
    }

    /// Logs a failure and closes the connection whose event failed. From the
    /// [`crash_loop::BACKOFF_AFTER`]th failure in a row that counts (no instance, or
    /// `on-open` trapped), events wait before the next call; a message's or a close's
    /// trap costs its connection only.
    fn crashed(&self, crash: Crash) {
        let _route = self.span.enter();
        let name = self.version.lock().expect("not poisoned").name.clone();
        crash.report(&name, &self.metrics);
        if self.crash_loop.failed(crash.failure).is_some() {
            self.report_crashes();
            if let Some(delay) = self.crash_loop.delay() {
                tracing::warn!(
                    plugin = &*name,
                    crashes = self.crash_loop.streak(),
                    "plugin keeps crashing: next call in {delay:?}"
                );
                let at = (Instant::now() + delay).duration_since(self.epoch);
                self.restart_at.store(at.as_nanos().max(1) as u64, Ordering::Relaxed);
            }
        }
        crash.end_connection(&**self.sandbox.services(), true);
    }
}
