//! The CPU deadline of one export call, kept on the engine's epoch (one tick every
//! [`EPOCH_TICK`]): the time the plugin's code runs counts, the time it waits in host
//! calls (a key-value write waiting for the disk) or for its thread does not, up to
//! [`WAITING_FACTOR`] times the deadline in all.
//!
//! A call in the sync style (the plugin's own thread) is given its whole deadline in
//! ticks at its start, without a clock read; when they have passed, what it waited is
//! taken off and it gets what is left. A call in the async style (a stateless plugin,
//! on the connections' threads) is given one tick at a time and yields its thread to
//! the other connections at every tick, so that a call that spins costs its own route,
//! not every route and endpoint that shares the thread.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::{Trap, UpdateDeadline};

/// How often the engine's epoch advances ([`super::loader`]'s ticker): deadlines are
/// counted in these ticks, and a call in the async style yields at each. Measured: at
/// 10 ms, a stateless route spinning on both runtime threads put another route's echo
/// p99 at 40 ms and a new connection's at 50 ms; at 2 ms, 11.5 ms and 14-19 ms. The
/// price is the ticker's wake-ups: an idle host uses 0.9 % of a core instead of 0.3 %.
pub const EPOCH_TICK: Duration = Duration::from_millis(2);

/// An export call may take this many times its CPU deadline in all, time spent waiting
/// in host calls and for its thread included.
pub const WAITING_FACTOR: u32 = 10;

/// The least a call in the async style runs between two yields.
const MIN_SLICE: Duration = Duration::from_millis(1);

/// What one instance's current call has spent of its deadline.
#[derive(Debug)]
pub struct CallClock {
    deadline: Duration,
    /// Ticks given so far (sync style): when they have passed, this is the call's time.
    granted_ticks: u64,
    /// Time the call waited in host calls.
    in_host: Duration,
    /// The async style's state; `None` in the sync style.
    yields: Option<Yields>,
}

/// A call in the async style: when it began to be timed, and its time given back.
#[derive(Debug, Default)]
struct Yields {
    /// Set at the call's first tick: a call that ends within a tick reads no clock.
    running_since: Option<Instant>,
    /// Shared with the futures the call yields to, which note how long they waited.
    given_back: Arc<Mutex<GivenBack>>,
    /// The call has yielded (so `given_back` must be cleared at the next start).
    yielded: bool,
}

#[derive(Debug, Default)]
struct GivenBack {
    /// Time spent yielded.
    total: Duration,
    /// When the call last got its thread back.
    resumed_at: Option<Instant>,
}

impl CallClock {
    /// A clock for calls of `deadline`, in the async style if `yields`.
    pub fn new(deadline: Duration, yields: bool) -> Self {
        Self {
            deadline,
            granted_ticks: 0,
            in_host: Duration::ZERO,
            yields: yields.then(Yields::default),
        }
    }

    /// Starts a call: the epoch ticks to set as its first deadline.
    pub fn start(&mut self) -> u64 {
        self.in_host = Duration::ZERO;
        match &mut self.yields {
            None => {
                self.granted_ticks = ticks(self.deadline);
                self.granted_ticks
            }
            Some(yields) => {
                yields.running_since = None;
                if std::mem::take(&mut yields.yielded) {
                    *yields.given_back.lock().unwrap_or_else(|p| p.into_inner()) = GivenBack::default();
                }
                1
            }
        }
    }

    /// Takes `waited`, spent in a host call, off the call's time.
    pub fn waited(&mut self, waited: Duration) {
        self.in_host += waited;
    }

    /// The deadline set by [`CallClock::start`] (or the last tick) is reached: whether
    /// the call goes on, yields first, or is interrupted.
    pub fn tick(&mut self) -> wasmtime::Result<UpdateDeadline> {
        let deadline = self.deadline;
        let Some(yields) = &mut self.yields else {
            let elapsed = EPOCH_TICK * u32::try_from(self.granted_ticks).unwrap_or(u32::MAX);
            let left = charge(deadline, elapsed, self.in_host)?;
            let more = ticks(left);
            self.granted_ticks += more;
            return Ok(UpdateDeadline::Continue(more));
        };
        let now = Instant::now();
        // Timed from its first tick (a call that ends before reads no clock): within a
        // tick of the truth, as the sync style's count of ticks is. Nor does a call
        // yield at its first tick, which comes anywhere from at once to a tick after it
        // began: a yield lets the call move to another thread, whose pool then has two
        // instances of the plugin and drops one (measured with the JavaScript echo,
        // 14 µs a call: yielding at the first tick halved its throughput). A call yields
        // once it has run a whole tick.
        let Some(since) = yields.running_since else {
            yields.running_since = Some(now);
            return Ok(UpdateDeadline::Continue(1));
        };
        let (given_back, resumed_at) = {
            let given = yields.given_back.lock().unwrap_or_else(|p| p.into_inner());
            (given.total, given.resumed_at)
        };
        charge(deadline, now - since, self.in_host + given_back)?;
        // Run a little between two yields: a call resumed after the epoch moved on
        // would otherwise yield again at once, and never make progress.
        if resumed_at.is_some_and(|at| now - at < MIN_SLICE) {
            return Ok(UpdateDeadline::Continue(1));
        }
        yields.yielded = true;
        let given_back = yields.given_back.clone();
        Ok(UpdateDeadline::YieldCustom(
            1,
            Box::pin(async move {
                let yielded_at = Instant::now();
                tokio::task::yield_now().await;
                let resumed_at = Instant::now();
                let mut given = given_back.lock().unwrap_or_else(|p| p.into_inner());
                given.total += resumed_at - yielded_at;
                given.resumed_at = Some(resumed_at);
            }),
        ))
    }
}

/// What is left of `deadline` after `elapsed`, of which `off` did not count; an
/// interrupt if nothing is, or if `elapsed` reached the bound on waiting.
fn charge(deadline: Duration, elapsed: Duration, off: Duration) -> wasmtime::Result<Duration> {
    if elapsed >= deadline * WAITING_FACTOR {
        // Waiting is off the deadline, but not without end: a loop of store writes
        // would otherwise hold its thread for ever.
        return Err(Trap::Interrupt.into());
    }
    deadline
        .checked_sub(elapsed.saturating_sub(off))
        .filter(|left| !left.is_zero())
        .ok_or_else(|| Trap::Interrupt.into())
}

/// Epoch ticks in `time`, at least one.
fn ticks(time: Duration) -> u64 {
    time.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interrupted(decision: wasmtime::Result<UpdateDeadline>) -> bool {
        decision.is_err_and(|error| error.downcast_ref::<Trap>() == Some(&Trap::Interrupt))
    }

    #[test]
    fn a_sync_call_gets_its_deadline_less_what_it_waited_in_host_calls() {
        let mut clock = CallClock::new(EPOCH_TICK * 10, false);
        assert_eq!(clock.start(), 10);
        // Half of it waited for the disk: five more ticks.
        clock.waited(EPOCH_TICK * 5);
        assert!(matches!(clock.tick(), Ok(UpdateDeadline::Continue(5))));
        assert!(interrupted(clock.tick()), "15 ticks, 5 waited: the 10 ran");
        // A fresh call starts afresh; waiting is bounded too.
        clock.start();
        clock.waited(Duration::from_secs(3600));
        for _ in 0..100 {
            match clock.tick() {
                Ok(UpdateDeadline::Continue(_)) => {}
                other => return assert!(interrupted(other)),
            }
        }
        panic!("a call that waits for ever is never interrupted");
    }

    #[test]
    fn an_async_call_yields_at_every_tick_but_its_first_and_is_interrupted_at_its_deadline() {
        let mut clock = CallClock::new(Duration::from_millis(200), true);
        assert_eq!(clock.start(), 1);
        // The first tick may come at once: the call has not run a whole tick yet.
        assert!(matches!(clock.tick(), Ok(UpdateDeadline::Continue(1))));
        std::thread::sleep(EPOCH_TICK); // the call runs on
        assert!(matches!(clock.tick(), Ok(UpdateDeadline::YieldCustom(1, _))));
        std::thread::sleep(EPOCH_TICK);
        assert!(matches!(clock.tick(), Ok(UpdateDeadline::YieldCustom(1, _))));
        std::thread::sleep(Duration::from_millis(200));
        assert!(interrupted(clock.tick()));
        // The next call is timed from its own first tick.
        assert_eq!(clock.start(), 1);
        assert!(matches!(clock.tick(), Ok(UpdateDeadline::Continue(1))));
        std::thread::sleep(EPOCH_TICK);
        assert!(matches!(clock.tick(), Ok(UpdateDeadline::YieldCustom(1, _))));
    }

    #[test]
    fn time_given_back_to_other_connections_is_not_charged() {
        let mut clock = CallClock::new(Duration::from_millis(200), true);
        clock.start();
        assert!(matches!(clock.tick(), Ok(UpdateDeadline::Continue(1))));
        std::thread::sleep(EPOCH_TICK);
        let Ok(UpdateDeadline::YieldCustom(_, mut wait)) = clock.tick() else {
            panic!("no yield at a tick")
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        // Other connections run for longer than the whole deadline meanwhile.
        std::thread::sleep(Duration::from_millis(250));
        assert!(wait.as_mut().poll(&mut cx).is_ready());
        // Not charged; and just resumed, the call runs a tick before it yields again.
        assert!(matches!(clock.tick(), Ok(UpdateDeadline::Continue(1))));
    }
}
