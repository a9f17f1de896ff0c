//! How connections reach a running plugin: [`PluginHandle`], the bounded queue to its
//! thread, or for a stateless plugin its instances on the connections' own threads;
//! and that thread's event loop ([`spawn_handler`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use tokio::sync::mpsc;

use super::inline::{Handed, Inline};
use super::loader::Loaded;
use super::reload::{ReloadError, Reloaded};
use super::{ConnId, HostServices, Outgoing, PluginEvent};

/// The sending side of a running plugin's event queue.
#[derive(Clone)]
pub struct PluginHandle {
    pub(super) events: mpsc::Sender<PluginEvent>,
    /// Whether the version being served has `on-upgrade`.
    pub(super) decides_handshakes: Arc<AtomicBool>,
    /// A stateless plugin's connection events are handled here instead, on the
    /// connections' own threads.
    pub(super) inline: Option<Arc<Inline>>,
}

/// Why a connection's event was not handed to the plugin.
#[derive(Debug)]
pub enum Refused {
    /// Not now: the plugin's queue is full, or it is waiting out a crash loop.
    Busy(PluginEvent),
    /// The plugin has stopped.
    Stopped,
}

/// Room for one connection event, from [`PluginHandle::ready`].
pub enum Ready<'a> {
    /// A place in the plugin thread's queue.
    Queued(mpsc::Permit<'a, PluginEvent>),
    /// The connection's thread handles it.
    Inline(&'a Inline),
}

impl Ready<'_> {
    /// Hands `event` over.
    pub async fn send(self, event: PluginEvent) -> Handed {
        match self {
            Ready::Queued(permit) => {
                permit.send(event);
                Handed::Taken
            }
            Ready::Inline(inline) => inline.handle(event, None).await,
        }
    }
}

impl PluginHandle {
    /// The queue that delivers events to the plugin, in order.
    pub fn events(&self) -> &mpsc::Sender<PluginEvent> {
        &self.events
    }

    /// Whether handshakes should wait for the plugin's `on-upgrade`
    /// ([`PluginEvent::Upgrade`]): the version being served has one.
    pub fn decides_handshakes(&self) -> bool {
        self.decides_handshakes.load(Ordering::Relaxed)
    }

    /// Hands a connection's event (open, message, close, barrier) to the plugin if it
    /// can take it now: queues it, or for a stateless plugin handles it on this thread,
    /// adding what it sends back to the connection to `replies` if given (see
    /// [`Inline::handle`]).
    pub async fn try_deliver(
        &self,
        event: PluginEvent,
        replies: Option<&mut Vec<Outgoing>>,
    ) -> Result<Handed, Refused> {
        match &self.inline {
            Some(inline) if inline.restart_at().is_some() => Err(Refused::Busy(event)),
            Some(inline) => Ok(inline.handle(event, replies).await),
            None => match self.events.try_send(event) {
                Ok(()) => Ok(Handed::Taken),
                Err(mpsc::error::TrySendError::Full(event)) => Err(Refused::Busy(event)),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(Refused::Stopped),
            },
        }
    }

    /// Waits until the plugin can take a connection's event. Cancel-safe: nothing is
    /// lost if the wait is dropped.
    pub async fn ready(&self) -> Result<Ready<'_>, Refused> {
        match &self.inline {
            Some(inline) => {
                while let Some(at) = inline.restart_at() {
                    tokio::time::sleep_until(at.into()).await;
                }
                Ok(Ready::Inline(inline))
            }
            None => self
                .events
                .reserve()
                .await
                .map(Ready::Queued)
                .map_err(|_| Refused::Stopped),
        }
    }

    /// Hands a connection's event to the plugin, waiting for room as needed.
    pub async fn deliver(&self, event: PluginEvent) -> Result<Handed, Refused> {
        Ok(self.ready().await?.send(event).await)
    }

    /// Ends the host's record of a connection whose plugin trapped ([`Handed::Trapped`]):
    /// its `on-close` is not called.
    pub fn forget(&self, conn: ConnId) {
        if let Some(inline) = &self.inline {
            inline.forget(conn);
        }
    }

    /// Queues a new version; it takes over after the events already queued, unless it
    /// fails (then the version before keeps serving). What became of it.
    pub async fn reload(&self, loaded: Loaded) -> Result<Reloaded, ReloadError> {
        let (outcome, became) = tokio::sync::oneshot::channel();
        if self
            .events
            .send(PluginEvent::Reload(Box::new(loaded), outcome))
            .await
            .is_err()
        {
            return Err(ReloadError::Stopped);
        }
        became.await.unwrap_or(Err(ReloadError::Stopped))
    }
}

/// Runs `handle` on a thread of its own (its log lines in a span naming `route`) for every queued event, in order, and tells
/// `services` of each connection just before its `on-open` (from then on broadcasts
/// include it), and after each `on-close` (its attachment goes). The event loop of [`spawn`], open to other handlers: the benchmarks
/// compare the WebAssembly echo plugin with a native one on this same path.
pub fn spawn_handler(
    route: &str,
    queue_len: usize,
    services: Arc<dyn HostServices>,
    mut handle: impl FnMut(&dyn HostServices, PluginEvent) + Send + 'static,
) -> std::io::Result<PluginHandle> {
    let (events, mut queue) = mpsc::channel(queue_len.max(1));
    // Every line the plugin's thread logs names the route.
    let span = route_span(route);
    thread::Builder::new().name("plugin".into()).spawn(move || {
        let _route = span.enter();
        while let Some(event) = next_event(&mut queue) {
            let closed = match event {
                PluginEvent::Open(conn) => {
                    services.opened(conn);
                    None
                }
                PluginEvent::Close(conn, ..) => Some(conn),
                _ => None,
            };
            handle(&*services, event);
            if let Some(conn) = closed {
                services.closed(conn);
            }
        }
    })?;
    Ok(PluginHandle {
        events,
        decides_handshakes: Arc::default(),
        inline: None,
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
