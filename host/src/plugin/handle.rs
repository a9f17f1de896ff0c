//! How connections reach a running plugin: [`PluginHandle`], the bounded queue to its
//! thread, or for a stateless plugin its instances on the connections' own threads;
//! [`PluginLink`], one connection's way to it; and that thread's event loop
//! ([`spawn_handler`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use tokio::sync::{mpsc, oneshot};

use super::inline::{Handed, Inline};
use super::loader::Loaded;
use super::reload::{ReloadError, Reloaded};
use super::{
    ConnId, ConnectionEvent, Control, HostServices, Outgoing, PluginEvent, UpgradeDecision, UpgradeRequest,
    answer_barrier,
};

/// A running plugin, as the server reaches it.
#[derive(Clone)]
pub struct PluginHandle {
    /// The plugin thread's queue: every event in one mode, the control messages in both.
    pub(super) queue: mpsc::Sender<PluginEvent>,
    /// Whether the version being served has `on-upgrade`.
    pub(super) decides_handshakes: Arc<AtomicBool>,
    pub(super) mode: Mode,
}

/// Where a connection's events are handled.
#[derive(Clone)]
pub(super) enum Mode {
    /// On the plugin's thread, through its queue, in order.
    Threaded,
    /// On the connection's own thread ([`Inline`]): a stateless plugin.
    Stateless(Arc<Inline>),
}

/// Why a connection's event was not handed to the plugin.
#[derive(Debug)]
pub enum Refused {
    /// Not now: the plugin's queue is full, or it is waiting out a crash loop.
    Busy(PluginEvent),
    /// The plugin has stopped.
    Stopped,
}

/// Room for one event, from [`PluginLink::ready`].
pub enum Ready<'a> {
    /// A place in the plugin thread's queue.
    Queued(mpsc::Permit<'a, PluginEvent>),
    /// The connection's thread handles it.
    Inline(&'a Inline),
}

impl PluginHandle {
    /// Whether handshakes should wait for the plugin's `on-upgrade`
    /// ([`PluginHandle::upgrade`]): the version being served has one.
    pub fn decides_handshakes(&self) -> bool {
        self.decides_handshakes.load(Ordering::Relaxed)
    }

    /// Events waiting in the plugin thread's queue.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Hands a new connection's `on-open` to the plugin, waiting for room as needed: the
    /// connection's way to the plugin from then on.
    pub async fn open(&self, conn: ConnId) -> Result<PluginLink<'_>, Refused> {
        let mut link = PluginLink {
            plugin: self,
            conn,
            trapped: false,
            closed: false,
        };
        link.send(ConnectionEvent::Open(conn).into()).await?;
        Ok(link)
    }

    /// Asks the plugin's `on-upgrade` about a handshake. [`UpgradeDecision::Failed`] if
    /// the plugin has stopped or dropped the question.
    pub async fn upgrade(&self, request: UpgradeRequest) -> UpgradeDecision {
        let (reply, decision) = oneshot::channel();
        if self.control(Control::Upgrade(Box::new(request), reply)).await.is_err() {
            return UpgradeDecision::Failed;
        }
        decision.await.unwrap_or(UpgradeDecision::Failed)
    }

    /// Returns once the plugin's thread has handled every event queued before.
    pub async fn barrier(&self) {
        let (done, handled) = oneshot::channel();
        if self.control(Control::Barrier(done)).await.is_ok() {
            let _ = handled.await;
        }
    }

    /// Queues a new version; it takes over after the events already queued, unless it
    /// fails (then the version before keeps serving). What became of it.
    pub async fn reload(&self, loaded: Loaded) -> Result<Reloaded, ReloadError> {
        let (outcome, became) = oneshot::channel();
        if self.control(Control::Reload(Box::new(loaded), outcome)).await.is_err() {
            return Err(ReloadError::Stopped);
        }
        became.await.unwrap_or(Err(ReloadError::Stopped))
    }

    /// Queues a control message for the plugin's thread.
    async fn control(&self, control: Control) -> Result<(), Refused> {
        self.queue.send(control.into()).await.map_err(|_| Refused::Stopped)
    }
}

/// One connection's way to its plugin, from [`PluginHandle::open`]: hands over its
/// events in order, and keeps the rule that after the plugin failed on one of them
/// (the connection is being closed with 1011) none of the later ones, `on-close`
/// neither, is for the plugin; [`PluginLink::close`] ends it.
pub struct PluginLink<'a> {
    plugin: &'a PluginHandle,
    conn: ConnId,
    /// A stateless plugin failed on one of this connection's events, on this thread.
    /// (The plugin's thread keeps its own record of the connections it failed on.)
    trapped: bool,
    /// [`PluginLink::close`] was called.
    closed: bool,
}

impl<'a> PluginLink<'a> {
    /// The connection.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// Hands `event` (a message or a barrier) to the plugin if it can take it now:
    /// queues it, or for a stateless plugin handles it on this thread, adding what it
    /// sends back to the connection to `replies` if given (see [`Inline::handle`]).
    /// An event no longer for the plugin is dropped.
    pub async fn try_send(&mut self, event: PluginEvent, replies: Option<&mut Vec<Outgoing>>) -> Result<(), Refused> {
        let Some(event) = self.for_plugin(event) else {
            return Ok(());
        };
        let plugin = self.plugin;
        match &plugin.mode {
            Mode::Stateless(inline) if self.needs_room(&event) && inline.restart_at().is_some() => {
                Err(Refused::Busy(event))
            }
            Mode::Stateless(inline) => {
                self.trapped |= inline.handle(event, replies).await == Handed::Trapped;
                Ok(())
            }
            Mode::Threaded => match plugin.queue.try_send(event) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(event)) => Err(Refused::Busy(event)),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(Refused::Stopped),
            },
        }
    }

    /// Waits until the plugin can take an event. Cancel-safe: nothing is lost if the
    /// wait is dropped.
    pub async fn ready(&self) -> Result<Ready<'a>, Refused> {
        match &self.plugin.mode {
            Mode::Stateless(inline) => {
                while let Some(at) = inline.restart_at() {
                    tokio::time::sleep_until(at.into()).await;
                }
                Ok(Ready::Inline(inline))
            }
            Mode::Threaded => self
                .plugin
                .queue
                .reserve()
                .await
                .map(Ready::Queued)
                .map_err(|_| Refused::Stopped),
        }
    }

    /// Hands `event` over in the room `ready` holds (an event no longer for the plugin
    /// is dropped, and the room given back).
    pub async fn send_in(&mut self, ready: Ready<'a>, event: PluginEvent) {
        let Some(event) = self.for_plugin(event) else { return };
        match ready {
            Ready::Queued(permit) => permit.send(event),
            Ready::Inline(inline) => self.trapped |= inline.handle(event, None).await == Handed::Trapped,
        }
    }

    /// Hands `event` to the plugin, waiting for room as needed (not for an event no
    /// longer for the plugin: a connection its plugin failed on does not wait out the
    /// crash loop's back-off to drop its last messages).
    pub async fn send(&mut self, event: PluginEvent) -> Result<(), Refused> {
        let Some(event) = self.for_plugin(event) else {
            return Ok(());
        };
        if !self.needs_room(&event) {
            return self.try_send(event, None).await;
        }
        let ready = self.ready().await?;
        self.send_in(ready, event).await;
        Ok(())
    }

    /// The connection has closed: delivers its `on-close` with `code` and `reason`
    /// (waiting for room), or, if the plugin failed on it, ends the host's record of it
    /// without. Nothing more is handed over.
    pub async fn close(&mut self, code: u16, reason: &str) {
        if self.trapped {
            if let Mode::Stateless(inline) = &self.plugin.mode {
                inline.forget(self.conn);
            }
        } else {
            let _ = self
                .send(ConnectionEvent::Close(self.conn, code, reason.to_owned()).into())
                .await;
        }
        self.closed = true;
    }

    /// Whether `event` must wait for room (a place in the queue, the end of a crash
    /// loop's back-off). A stateless plugin's barrier need not: it calls no export, and
    /// the connection's earlier events were all handled on this thread.
    fn needs_room(&self, event: &PluginEvent) -> bool {
        !(is_barrier(event) && matches!(self.plugin.mode, Mode::Stateless(_)))
    }

    /// `event`, if it is still for the plugin: nothing after the close, and after a
    /// failure only a barrier (which calls no export).
    fn for_plugin(&self, event: PluginEvent) -> Option<PluginEvent> {
        (!self.closed && (!self.trapped || is_barrier(&event))).then_some(event)
    }
}

/// Whether `event` is a barrier, which calls no export.
fn is_barrier(event: &PluginEvent) -> bool {
    matches!(event, PluginEvent::Control(Control::Barrier(_)))
}

/// What a plugin's thread does with the events of its queue ([`spawn_handler`]). A
/// closure over a connection's events is one; barriers are answered for it.
pub trait Handler: Send + 'static {
    /// Handles a connection's event.
    fn event(&mut self, services: &dyn HostServices, event: ConnectionEvent);

    /// Handles a control message other than a barrier (which the event loop answers):
    /// a handshake, a timer or a reload. By default, drops it: a handshake so dropped
    /// fails closed, a reload reports the plugin stopped.
    fn control(&mut self, control: Control) {
        drop(control);
    }
}

impl<F: FnMut(&dyn HostServices, ConnectionEvent) + Send + 'static> Handler for F {
    fn event(&mut self, services: &dyn HostServices, event: ConnectionEvent) {
        self(services, event)
    }
}

/// Runs `handler` on a thread of its own (its log lines in a span naming `route`) for
/// every queued event, in order; answers barriers; and tells `services` of each
/// connection just before its `on-open` (from then on broadcasts include it), and after
/// each `on-close` (its attachment goes). The event loop of [`super::spawn`], open to
/// other handlers: the benchmarks compare the WebAssembly echo plugin with a native one
/// on this same path.
pub fn spawn_handler(
    route: &str,
    queue_len: usize,
    services: Arc<dyn HostServices>,
    mut handler: impl Handler,
) -> std::io::Result<PluginHandle> {
    let (queue, mut events) = mpsc::channel(queue_len.max(1));
    // Every line the plugin's thread logs names the route.
    let span = route_span(route);
    thread::Builder::new().name("plugin".into()).spawn(move || {
        let _route = span.enter();
        while let Some(event) = next_event(&mut events) {
            match event {
                PluginEvent::Connection(event) => {
                    let (conn, closes) = (event.conn(), matches!(event, ConnectionEvent::Close(..)));
                    if let ConnectionEvent::Open(_) = event {
                        services.opened(conn);
                    }
                    handler.event(&*services, event);
                    if closes {
                        services.closed(conn);
                    }
                }
                PluginEvent::Control(Control::Barrier(done)) => {
                    // Every earlier event was handled; once what they sent has left too.
                    answer_barrier(&*services, done);
                }
                PluginEvent::Control(control) => handler.control(control),
            }
        }
    })?;
    Ok(PluginHandle {
        queue,
        decides_handshakes: Arc::default(),
        mode: Mode::Threaded,
    })
}

/// The next event, or none once every sender is gone. An empty queue is polled
/// [`SPINS`] times, yielding the core in between, before the thread parks: under load
/// the next event is usually microseconds away, and a parked thread makes its sender
/// pay a futex wake-up and itself a context switch (measured: echo 20 B 1.03 x and at
/// 1 in flight 1.07 x, with less CPU per message). The price is paid when events are
/// sparse: one burst of yields after each, about 10 µs of CPU (a client echoing every
/// millisecond: 65 µs of server CPU per message instead of 51-58).
fn next_event(queue: &mut mpsc::Receiver<PluginEvent>) -> Option<PluginEvent> {
    for _ in 0..SPINS {
        match queue.try_recv() {
            Ok(event) => return Some(event),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => thread::yield_now(),
        }
    }
    queue.blocking_recv()
}

/// Polls of an empty queue before the plugin thread parks (16 and 256 measured no better).
const SPINS: u32 = 64;

/// The span of everything a route's plugin logs.
pub(super) fn route_span(route: &str) -> tracing::Span {
    tracing::info_span!("route", name = route)
}
