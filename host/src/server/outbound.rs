//! A connection's outbound queue, from the plugin thread to the connection's task, and
//! the rule that tells a slow reader from a prompt one.
//!
//! What counts is the data waiting for the client beyond what its socket accepted:
//! the commands queued here plus the frames the connection encoded and has not started
//! to write. While the socket keeps taking data, the client keeps up, however large a
//! burst is: it is never dropped. Once the socket has taken nothing for a while (the
//! connection decides when: it knows the socket), the client is stalled, and dropped
//! with 1008 as soon as more than `max_messages` messages or `max_bytes` bytes wait
//! for it. A hard cap bounds the queue's memory in every case.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use std::task::Poll;

use atomic_waker::AtomicWaker;

use crate::conn::{CloseCode, HostError, Outgoing};
use crate::ws::output::Backlog;

/// What the plugin asks a connection's task to do.
#[derive(Debug)]
pub enum Command {
    /// Send a message.
    Send(Outgoing),
    /// Start the closing handshake.
    Close(CloseCode, String),
}

impl Command {
    /// Bytes the command holds, with a fixed allowance for its bookkeeping, so that a
    /// flood of empty messages is bounded too.
    fn size(&self) -> usize {
        const OVERHEAD: usize = 64;
        OVERHEAD
            + match self {
                Command::Send(message) => message.len(),
                Command::Close(_, reason) => reason.len(),
            }
    }
}

/// What [`Mailbox::recv`] is to wait for: one wake-up serves them all, so that a
/// connection's wait registers once.
#[derive(Clone, Copy, Debug, Default)]
pub struct Wants {
    /// Commands from the plugin.
    pub commands: bool,
    /// The client being found too slow.
    pub overflow: bool,
    /// The server shutting down.
    pub shutdown: bool,
}

impl Wants {
    /// Whether it waits for anything.
    pub fn any(&self) -> bool {
        self.commands || self.overflow || self.shutdown
    }
}

/// What [`Mailbox::recv`] returns.
#[derive(Debug)]
pub enum Inbound {
    /// A command from the plugin.
    Command(Command),
    /// The client was found too slow: it is to be dropped.
    Overflowed,
    /// The server is shutting down.
    ShuttingDown,
}

/// How much may wait for a client that does not take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboundLimits {
    /// Messages (frames) waiting beyond what the socket accepted.
    pub max_messages: usize,
    /// Bytes waiting beyond what the socket accepted.
    pub max_bytes: usize,
}

impl Default for OutboundLimits {
    /// The original library's `maxMessagesBuffering` (100), and 1 MiB.
    fn default() -> Self {
        Self {
            max_messages: 100,
            max_bytes: 1 << 20,
        }
    }
}

impl OutboundLimits {
    /// Whether `waiting` is more than these limits allow.
    pub fn exceeded_by(&self, waiting: Backlog) -> bool {
        waiting.frames > self.max_messages || waiting.bytes > self.max_bytes
    }

    /// Commands the queue holds at most while the socket still takes data, however
    /// briefly the connection's task lags behind the plugin: the memory bound of a
    /// client that reads, but is not scheduled as fast as the plugin sends.
    fn hard_cap(&self) -> Backlog {
        Backlog {
            frames: self.max_messages.saturating_mul(16).max(4096),
            bytes: self.max_bytes.saturating_mul(4),
        }
    }
}

#[derive(Default)]
struct Pending {
    commands: VecDeque<Command>,
    /// Sum of the commands' [`Command::size`].
    bytes: usize,
}

/// The queue both sides share.
struct Queue {
    pending: Mutex<Pending>,
    /// How many commands `pending` holds, readable without the lock: a connection
    /// looks for commands far more often than there are any.
    queued: AtomicUsize,
    limits: OutboundLimits,
    /// Wakes the connection's task when a command is queued or the client is found too
    /// slow: one waiter, so an atomic slot rather than a [`Notify`]'s list (which takes
    /// a lock at every wait), and one for both, so that a wait registers once.
    ready: AtomicWaker,
    /// Set once, when the client is found too slow.
    overflowed: AtomicBool,
    /// Set once, when the server shuts down.
    shutting_down: AtomicBool,
    /// The connection's socket has stopped taking data.
    stalled: AtomicBool,
    /// The connection's encoded backlog, as of its last write.
    output_frames: AtomicUsize,
    output_bytes: AtomicUsize,
}

/// Creates a connection's queue: the side the registry pushes to, and the side the
/// connection's task takes from.
pub fn queue(limits: OutboundLimits) -> (Outbox, Mailbox) {
    let queue = Arc::new(Queue {
        pending: Mutex::default(),
        queued: AtomicUsize::new(0),
        limits,
        ready: AtomicWaker::new(),
        overflowed: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
        stalled: AtomicBool::new(false),
        output_frames: AtomicUsize::new(0),
        output_bytes: AtomicUsize::new(0),
    });
    (Outbox { queue: queue.clone() }, Mailbox { queue })
}

/// The plugin's side of a connection's queue.
pub struct Outbox {
    queue: Arc<Queue>,
}

impl Outbox {
    /// Queues a command without waiting. If the client is too slow for it (see the
    /// module doc), the connection is told to drop the client, and the command is lost
    /// with it.
    pub fn push(&self, command: Command) -> Result<(), HostError> {
        let queue = &*self.queue;
        if queue.overflowed.load(Ordering::Acquire) {
            return Err(HostError::Gone);
        }
        let mut pending = lock(&queue.pending);
        let queued = Backlog {
            frames: pending.commands.len() + 1,
            bytes: pending.bytes + command.size(),
        };
        let waiting = Backlog {
            frames: queued.frames + queue.output_frames.load(Ordering::Relaxed),
            bytes: queued.bytes + queue.output_bytes.load(Ordering::Relaxed),
        };
        let stalled = queue.stalled.load(Ordering::Acquire);
        let cap = queue.limits.hard_cap();
        if (stalled && queue.limits.exceeded_by(waiting)) || queued.frames > cap.frames || queued.bytes > cap.bytes {
            drop(pending);
            if !queue.overflowed.swap(true, Ordering::AcqRel) {
                queue.ready.wake();
            }
            return Err(HostError::Gone);
        }
        pending.bytes = queued.bytes;
        pending.commands.push_back(command);
        queue.queued.store(queued.frames, Ordering::Release);
        drop(pending);
        queue.ready.wake();
        Ok(())
    }

    /// Tells the connection that the server is shutting down.
    pub fn shut_down(&self) {
        self.queue.shutting_down.store(true, Ordering::Release);
        self.queue.ready.wake();
    }
}

/// A connection's side of its queue.
pub struct Mailbox {
    queue: Arc<Queue>,
}

impl Mailbox {
    /// The next queued command, if any, without waiting.
    pub fn try_recv(&self) -> Option<Command> {
        if self.queue.queued.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut pending = lock(&self.queue.pending);
        let command = pending.commands.pop_front()?;
        pending.bytes -= command.size();
        self.queue.queued.store(pending.commands.len(), Ordering::Release);
        if pending.commands.capacity() > 64 && pending.commands.is_empty() {
            pending.commands = VecDeque::new(); // an idle connection holds no allocation
        }
        Some(command)
    }

    /// Waits for what `wants` names. Cancel-safe: a command is taken only when
    /// returned.
    pub fn recv(&self, wants: Wants) -> impl Future<Output = Inbound> + '_ {
        std::future::poll_fn(move |cx| {
            // Registered before looking, so that a command queued after the look wakes it.
            self.queue.ready.register(cx.waker());
            if wants.overflow && self.queue.overflowed.load(Ordering::Acquire) {
                return Poll::Ready(Inbound::Overflowed);
            }
            if wants.shutdown && self.queue.shutting_down.load(Ordering::Acquire) {
                return Poll::Ready(Inbound::ShuttingDown);
            }
            match wants.commands.then(|| self.try_recv()).flatten() {
                Some(command) => Poll::Ready(Inbound::Command(command)),
                None => Poll::Pending,
            }
        })
    }

    /// Whether the client was found too slow.
    pub fn overflowed(&self) -> bool {
        self.queue.overflowed.load(Ordering::Acquire)
    }

    /// Records the connection's encoded backlog, and whether its socket has stopped
    /// taking data; returns whether the client is now too slow.
    pub fn update(&self, output: Backlog, stalled: bool) -> bool {
        let queue = &*self.queue;
        queue.output_frames.store(output.frames, Ordering::Relaxed);
        queue.output_bytes.store(output.bytes, Ordering::Relaxed);
        queue.stalled.store(stalled, Ordering::Release);
        if queue.overflowed.load(Ordering::Acquire) {
            return true;
        }
        let too_slow = stalled && queue.limits.exceeded_by(self.waiting(output));
        if too_slow {
            queue.overflowed.store(true, Ordering::Release);
        }
        too_slow
    }

    /// Everything waiting for the client: the queue plus `output`.
    pub fn waiting(&self, output: Backlog) -> Backlog {
        let pending = lock(&self.queue.pending);
        Backlog {
            frames: pending.commands.len() + output.frames,
            bytes: pending.bytes + output.bytes,
        }
    }

    /// The limits this queue enforces.
    pub fn limits(&self) -> OutboundLimits {
        self.queue.limits
    }
}

/// Locks a queue. A panic while holding it cannot leave it half-updated in a way that
/// matters more than losing the connection would, so carry on.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: OutboundLimits = OutboundLimits {
        max_messages: 3,
        max_bytes: 1 << 20,
    };

    fn text(s: &'static str) -> Command {
        Command::Send(Outgoing::Text(s.into()))
    }

    #[test]
    fn a_burst_beyond_the_bound_is_kept_while_the_socket_takes_data() {
        let (outbox, mailbox) = queue(LIMITS);
        for _ in 0..100 {
            outbox.push(text("burst")).unwrap();
        }
        assert!(!mailbox.update(Backlog::default(), false));
        let mut taken = 0;
        while mailbox.try_recv().is_some() {
            taken += 1;
        }
        assert_eq!(taken, 100);
    }

    #[tokio::test]
    async fn a_stalled_socket_with_too_much_waiting_overflows_once_and_refuses_more() {
        let (outbox, mailbox) = queue(LIMITS);
        // The socket refused part of a write; two frames wait in the output.
        assert!(!mailbox.update(Backlog { frames: 2, bytes: 20 }, true));
        outbox.push(text("third")).unwrap();
        assert_eq!(outbox.push(text("fourth")), Err(HostError::Gone));
        // Resolves: the queue overflowed before the wait.
        let wants = Wants {
            overflow: true,
            ..Wants::default()
        };
        assert!(matches!(mailbox.recv(wants).await, Inbound::Overflowed));
        assert_eq!(outbox.push(text("fifth")), Err(HostError::Gone));
        assert!(mailbox.update(Backlog { frames: 2, bytes: 20 }, true));
    }

    #[test]
    fn the_connection_finds_a_stalled_client_too_slow_by_its_bytes() {
        let (outbox, mailbox) = queue(OutboundLimits {
            max_messages: 100,
            max_bytes: 1000,
        });
        outbox.push(text("queued")).unwrap();
        assert!(!mailbox.update(Backlog { frames: 1, bytes: 950 }, false));
        assert!(mailbox.update(Backlog { frames: 1, bytes: 950 }, true));
    }

    #[test]
    fn the_hard_cap_bounds_memory_even_while_the_socket_takes_data() {
        let (outbox, _mailbox) = queue(OutboundLimits {
            max_messages: 1,
            max_bytes: 1000,
        });
        let mut accepted = 0;
        while outbox.push(text("x")).is_ok() {
            accepted += 1;
            assert!(accepted < 100, "the queue grew past its hard cap");
        }
        assert_eq!(accepted, 4000 / 65);
    }
}
