//! The plugin's timers. They belong to the host, not to an instance: a thread of their
//! own puts a [`Control::Timer`] on the plugin's queue when one is due, so a timer
//! fires in order with the connections' events, and goes on firing across reloads and
//! traps. Whether a queued tick still fires is decided when the plugin thread reaches
//! it ([`Timers::take`]), so a timer cancelled or set again in between never fires late.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::WeakSender;

use super::{Control, HostError, PluginEvent, TimerId};

/// Pending timers a plugin may have at once.
pub const MAX_TIMERS: usize = 10_000;
/// Longest delay or repetition.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// How often an idle timer thread checks that the plugin still runs.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// One plugin's timers, shared by its imports, its event loop and the timer thread.
#[derive(Default)]
pub struct Timers {
    state: Mutex<State>,
    /// Wakes the timer thread when a timer is set.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    timers: HashMap<TimerId, Timer>,
    /// When each timer is next due, earliest first: (due, generation, id).
    schedule: BTreeSet<(Instant, u64, TimerId)>,
    /// Numbers each `set`, so that a tick of an older setting can be told apart.
    generations: u64,
}

struct Timer {
    generation: u64,
    /// Its entry in the schedule, if it has one (a fired one-shot timer has none).
    due: Option<Instant>,
    repeat: Option<Duration>,
    /// A tick is on the plugin's queue: a repeating timer skips ticks until it is taken.
    queued: bool,
}

impl Timers {
    /// No timers; [`Timers::start`] makes them fire.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Starts the thread that queues due timers on `events`. It ends once the plugin's
    /// queue is gone.
    pub fn start(self: &Arc<Self>, events: WeakSender<PluginEvent>) -> std::io::Result<()> {
        let timers = self.clone();
        thread::Builder::new()
            .name("plugin-timers".into())
            .spawn(move || timers.run(events))?;
        Ok(())
    }

    /// Sets (or resets) timer `id` to fire after `delay`, then every `repeat`.
    pub fn set(&self, id: TimerId, delay: Duration, repeat: Option<Duration>) -> Result<(), HostError> {
        if delay > MAX_DURATION || repeat.is_some_and(|r| r.is_zero() || r > MAX_DURATION) {
            return Err(HostError::InvalidDuration);
        }
        let mut state = self.lock();
        if !state.timers.contains_key(&id) && state.timers.len() >= MAX_TIMERS {
            return Err(HostError::TooManyTimers);
        }
        state.remove(id);
        state.generations += 1;
        let generation = state.generations;
        let due = Instant::now() + delay;
        state.schedule.insert((due, generation, id));
        state.timers.insert(
            id,
            Timer {
                generation,
                due: Some(due),
                repeat,
                queued: false,
            },
        );
        drop(state);
        self.changed.notify_one();
        Ok(())
    }

    /// Cancels timer `id`; returns whether it was pending.
    pub fn cancel(&self, id: TimerId) -> bool {
        self.lock().remove(id)
    }

    /// Whether timer `id` is pending: set, not cancelled, and (one-shot) not yet handled.
    pub fn pending(&self, id: TimerId) -> bool {
        self.lock().timers.contains_key(&id)
    }

    /// Cancels every timer.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.timers.clear();
        state.schedule.clear();
    }

    /// How many timers are pending.
    pub fn len(&self) -> usize {
        self.lock().timers.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Called by the event loop for a queued tick: whether the plugin gets it. A
    /// one-shot timer is done once taken.
    pub fn take(&self, id: TimerId, generation: u64) -> bool {
        let mut state = self.lock();
        let Some(timer) = state.timers.get_mut(&id).filter(|t| t.generation == generation) else {
            return false;
        };
        timer.queued = false;
        if timer.repeat.is_none() {
            state.timers.remove(&id);
        }
        true
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn run(&self, events: WeakSender<PluginEvent>) {
        let mut due = Vec::new();
        loop {
            let mut state = self.lock();
            loop {
                let now = Instant::now();
                state.collect_due(now, &mut due);
                if !due.is_empty() {
                    break;
                }
                let wait = state
                    .schedule
                    .first()
                    .map_or(IDLE_CHECK, |(at, ..)| at.saturating_duration_since(now).min(IDLE_CHECK));
                let (guard, timed_out) = self
                    .changed
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                state = guard;
                if timed_out.timed_out() && state.schedule.is_empty() && events.upgrade().is_none() {
                    return;
                }
            }
            drop(state);
            let Some(events) = events.upgrade() else { return };
            for (id, generation) in due.drain(..) {
                // Blocks while the plugin's queue is full: timers then wait like
                // everything else (repeating ones skip the ticks they miss).
                if events.blocking_send(Control::Timer(id, generation).into()).is_err() {
                    return;
                }
            }
        }
    }
}

impl State {
    fn remove(&mut self, id: TimerId) -> bool {
        let Some(timer) = self.timers.remove(&id) else {
            return false;
        };
        if let Some(due) = timer.due {
            self.schedule.remove(&(due, timer.generation, id));
        }
        true
    }

    /// Moves every timer due at `now` into `due`, and reschedules the repeating ones.
    fn collect_due(&mut self, now: Instant, due: &mut Vec<(TimerId, u64)>) {
        while let Some(&(at, generation, id)) = self.schedule.first() {
            if at > now {
                break;
            }
            self.schedule.pop_first();
            let Some(timer) = self.timers.get_mut(&id) else {
                continue;
            };
            if !timer.queued {
                timer.queued = true;
                due.push((id, generation));
            }
            timer.due = timer.repeat.map(|period| next_tick(at, period, now));
            if let Some(next) = timer.due {
                self.schedule.insert((next, generation, id));
            }
        }
    }
}

/// The first tick of a timer with `period`, last due `at`, that is after `now`:
/// ticks missed while the plugin was busy are skipped, the cadence is kept.
fn next_tick(at: Instant, period: Duration, now: Instant) -> Instant {
    let behind = now.saturating_duration_since(at).as_nanos();
    let skipped = behind / period.as_nanos();
    let skipped = u32::try_from(skipped + 1).unwrap_or(u32::MAX);
    at + period.saturating_mul(skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeating_timer_keeps_its_cadence_and_skips_what_it_missed() {
        let at = Instant::now();
        let period = Duration::from_millis(10);
        assert_eq!(next_tick(at, period, at), at + period);
        assert_eq!(next_tick(at, period, at + Duration::from_millis(9)), at + period);
        assert_eq!(next_tick(at, period, at + Duration::from_millis(10)), at + 2 * period);
        assert_eq!(next_tick(at, period, at + Duration::from_millis(35)), at + 4 * period);
    }

    #[test]
    fn due_timers_are_collected_once_and_taken_by_generation() {
        let timers = Timers::new();
        timers.set(1, Duration::ZERO, None).unwrap();
        timers.set(2, Duration::ZERO, Some(Duration::from_secs(60))).unwrap();
        timers.set(3, Duration::from_secs(60), None).unwrap();
        let mut due = Vec::new();
        timers.lock().collect_due(Instant::now(), &mut due);
        due.sort();
        let generation = |id| due.iter().find(|(i, _)| *i == id).unwrap().1;
        assert_eq!(due.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2]);

        // A fired one-shot stays pending until the plugin gets it, then is gone.
        assert!(timers.pending(1));
        assert!(timers.take(1, generation(1)));
        assert!(!timers.pending(1));
        assert!(!timers.take(1, generation(1)));
        // A repeating one stays; a stale generation does not fire.
        assert!(timers.take(2, generation(2)));
        assert!(timers.pending(2));
        assert!(!timers.take(2, generation(2) + 100));
        assert_eq!(timers.len(), 2);
    }

    #[test]
    fn a_cancelled_or_reset_timer_does_not_fire_its_queued_tick() {
        let timers = Timers::new();
        timers.set(7, Duration::ZERO, None).unwrap();
        let mut due = Vec::new();
        timers.lock().collect_due(Instant::now(), &mut due);
        let [(7, first)] = due[..] else { panic!("{due:?}") };
        assert!(timers.cancel(7));
        assert!(!timers.take(7, first));

        timers.set(8, Duration::ZERO, None).unwrap();
        due.clear();
        timers.lock().collect_due(Instant::now(), &mut due);
        let [(8, stale)] = due[..] else { panic!("{due:?}") };
        timers.set(8, Duration::from_secs(60), None).unwrap();
        assert!(!timers.take(8, stale));
        assert!(timers.pending(8));
    }

    #[test]
    fn a_repeating_timer_with_a_tick_still_queued_skips_the_next() {
        let timers = Timers::new();
        timers.set(1, Duration::ZERO, Some(Duration::from_millis(1))).unwrap();
        let mut due = Vec::new();
        let start = Instant::now();
        timers.lock().collect_due(start, &mut due);
        timers.lock().collect_due(start + Duration::from_millis(5), &mut due);
        assert_eq!(due.len(), 1, "{due:?}");
    }

    #[test]
    fn limits_are_errors() {
        let timers = Timers::new();
        assert_eq!(
            timers.set(1, Duration::ZERO, Some(Duration::ZERO)),
            Err(HostError::InvalidDuration)
        );
        assert_eq!(
            timers.set(1, MAX_DURATION + Duration::from_millis(1), None),
            Err(HostError::InvalidDuration)
        );
        for id in 0..MAX_TIMERS as u64 {
            timers.set(id, Duration::from_secs(60), None).unwrap();
        }
        assert_eq!(
            timers.set(u64::MAX, Duration::from_secs(1), None),
            Err(HostError::TooManyTimers)
        );
        // Setting a pending one again is not a new timer.
        timers.set(0, Duration::from_secs(1), None).unwrap();
    }
}
