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
//! that connection directly ([`reply_here`]): no registry lookup, no queue, no lock.
//!
//! The cost: a call runs on a thread that also runs other connections, which wait for
//! it (up to the CPU deadline; a host call that waits hands them to another thread
//! first, within [`crate::blocking`]'s bound), and every thread holds an instance (its
//! linear memory).

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::crash_loop::{self, CrashLoop, Failure};
use super::runner::{self, Crash, Instance, Sandbox};
use super::{CloseCode, ConnId, Loaded, Outgoing, PluginEvent};
use crate::metrics::PluginMetrics;

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
    /// In a crash loop: no event is handled before this time, in nanoseconds after
    /// [`Inline::epoch`] (0: none).
    restart_at: AtomicU64,
    epoch: Instant,
    metrics: Arc<PluginMetrics>,
    /// Names the route in what the plugin logs.
    span: tracing::Span,
}

/// Calls `event`'s export on this thread. The host calls that wait do so through
/// [`crate::blocking`], which a runtime thread can use; WASI's others (files, sockets,
/// which the sandbox does not offer anyway) wait by entering the async runtime, which a
/// thread of that runtime cannot do: the host call panics. That panic fails the call
/// like a trap, and its message, printed nowhere, becomes the error.
fn deliver_here(instance: &mut Instance, event: &PluginEvent) -> wasmtime::Result<()> {
    IN_CALL.set(true);
    let delivered = panic::catch_unwind(AssertUnwindSafe(|| runner::deliver(instance, event)));
    IN_CALL.set(false);
    delivered.unwrap_or_else(|payload| {
        let why = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a panic");
        Err(wasmtime::Error::msg(format!(
            "a host call the plugin made cannot run on a connection's thread (a stateless plugin \
             has no WASI files or sockets): {why}"
        )))
    })
}

/// Keeps the panic hook from printing the panics [`deliver_here`] turns into errors; any
/// other panic is printed as before.
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
    /// A plugin call is running on this thread, under [`deliver_here`].
    static IN_CALL: Cell<bool> = const { Cell::new(false) };
}

/// Messages one call may send straight back to its connection; later ones take the
/// connection's queue (and its limits), after these.
const REPLIES_HERE: usize = 64;
/// Bytes one call may send straight back to its connection.
const REPLY_BYTES_HERE: usize = 256 * 1024;

/// The call running on this thread handles a message of `conn`, whose sends to `conn`
/// are kept in `replies` for the connection to encode when the call returns.
struct Replying {
    conn: ConnId,
    replies: Vec<Outgoing>,
    bytes: usize,
    /// Something for `conn` took its queue (a close, or a send past the bounds): later
    /// sends take it too, to stay in order.
    queued: bool,
}

thread_local! {
    static REPLYING: RefCell<Option<Replying>> = const { RefCell::new(None) };
}

/// Keeps `message` for `conn` if the call running on this thread handles a message of
/// `conn` (a stateless plugin replying): returns it if it must go through the
/// connection's queue instead.
pub(super) fn reply_here(conn: ConnId, message: Outgoing) -> Option<Outgoing> {
    REPLYING.with_borrow_mut(|replying| {
        let Some(replying) = replying
            .as_mut()
            .filter(|replying| replying.conn == conn && !replying.queued)
        else {
            return Some(message);
        };
        let bytes = replying.bytes + message.len();
        if replying.replies.len() >= REPLIES_HERE || bytes > REPLY_BYTES_HERE {
            replying.queued = true;
            return Some(message);
        }
        replying.bytes = bytes;
        replying.replies.push(message);
        None
    })
}

/// Notes that something for `conn` takes its queue: if the call running on this thread
/// replies to `conn`, its later sends take the queue too, so that they stay in order.
pub(super) fn queued_for(conn: ConnId) {
    REPLYING.with_borrow_mut(|replying| {
        if let Some(replying) = replying.as_mut().filter(|replying| replying.conn == conn) {
            replying.queued = true;
        }
    });
}

/// One thread's instance of one plugin.
struct Local {
    owner: u64,
    generation: u64,
    instance: Instance,
}

thread_local! {
    /// This thread's instances, one per stateless plugin it has called. An instance
    /// stays until its plugin's next version replaces it, or the thread ends.
    static INSTANCES: RefCell<Vec<Local>> = const { RefCell::new(Vec::new()) };
}

/// What became of a connection's event handed to the plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// Queued for the plugin's thread, or handled.
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
        Self {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            sandbox,
            version: Mutex::new(loaded),
            generation: AtomicU64::new(0),
            crash_loop: CrashLoop::new(),
            plugin_thread_streak: AtomicU32::new(0),
            reporting: Mutex::new(()),
            restart_at: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics,
            span,
        }
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

    /// Handles one of a connection's events on this thread: calls its export on this
    /// thread's instance (made first if there is none, or it is of an older version).
    /// A trap closes the connection with 1011 and drops the instance; in a crash loop,
    /// [`Inline::restart_at`] says how long to wait before the next event.
    ///
    /// With `replies`, what a message's call sends to its own connection is added
    /// there (up to a bound), for the connection to encode before anything queued for
    /// it meanwhile; the caller must have taken everything queued before.
    pub fn handle(&self, event: PluginEvent, replies: Option<&mut Vec<Outgoing>>) -> Handed {
        let conn = match &event {
            PluginEvent::Open(conn) => {
                self.sandbox.services().opened(*conn);
                *conn
            }
            PluginEvent::Text(conn, _) | PluginEvent::Binary(conn, _) | PluginEvent::Close(conn, ..) => *conn,
            PluginEvent::Barrier(_, _) => {
                if let PluginEvent::Barrier(_, done) = event {
                    let _ = done.send(()); // every earlier event was handled, here
                }
                return Handed::Taken;
            }
            // Not a connection's: the plugin's thread handles these.
            PluginEvent::Upgrade(..) | PluginEvent::Timer(..) | PluginEvent::Reload(_) => return Handed::Taken,
        };
        let replies = replies.filter(|_| matches!(event, PluginEvent::Text(..) | PluginEvent::Binary(..)));
        let called = match replies {
            Some(replies) => {
                REPLYING.set(Some(Replying {
                    conn,
                    replies: std::mem::take(replies),
                    bytes: 0,
                    queued: false,
                }));
                let called = self.span.in_scope(|| self.call(conn, &event));
                *replies = REPLYING.take().map(|replying| replying.replies).unwrap_or_default();
                called
            }
            None => self.span.in_scope(|| self.call(conn, &event)),
        };
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
        if matches!(event, PluginEvent::Close(..)) {
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
    pub fn forget(&self, conn: ConnId) {
        self.sandbox.services().closed(conn);
    }

    /// Calls `event`'s export on this thread's instance of the current version.
    fn call(&self, conn: ConnId, event: &PluginEvent) -> Result<(), Crash> {
        // `handle` passes only a connection's events, which all have an export.
        let Some(export) = event.export() else { return Ok(()) };
        INSTANCES.with_borrow_mut(|instances| {
            let generation = self.generation.load(Ordering::Acquire);
            let at = instances.iter().position(|local| local.owner == self.id);
            if let Some(i) = at
                && instances[i].generation != generation
            {
                instances.swap_remove(i);
            }
            let at = match instances.iter().position(|local| local.owner == self.id) {
                Some(i) => i,
                None => {
                    let loaded = self.version.lock().expect("not poisoned").clone();
                    let instance = self.sandbox.instantiate(&loaded).map_err(|error| Crash {
                        conn: Some(conn),
                        failure: Failure::Instantiate,
                        error,
                        kind: crate::metrics::TrapKind::Trap,
                    })?;
                    instances.push(Local {
                        owner: self.id,
                        generation,
                        instance,
                    });
                    instances.len() - 1
                }
            };
            let instance = &mut instances[at].instance;
            let started = Instant::now();
            let delivered = deliver_here(instance, event);
            self.metrics.call(export as usize, started.elapsed());
            delivered.map_err(|error| {
                let kind = runner::trap_kind(&error, &instances[at].instance.store);
                instances.swap_remove(at);
                Crash {
                    conn: Some(conn),
                    failure: Failure::Trap(export),
                    error,
                    kind,
                }
            })
        })
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
        if let Some(conn) = crash.conn {
            let _ = self
                .sandbox
                .services()
                .close(conn, CloseCode::INTERNAL_ERROR, "internal error".into());
        }
    }
}
