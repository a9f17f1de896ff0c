//! The one crash-loop policy of a plugin, whichever way it is served: which failures
//! count towards the back-off, what ends a streak, and how long the next start waits.
//! The plugin's thread keeps one; a stateless plugin's connections' threads share
//! another (the route's gauges show the longer streak).
//!
//! A failure counts when it shows the plugin cannot work: no instance can be made, or
//! `on-open` (a connection cannot be served at all), `on-timer` or `snapshot` trapped.
//! A trap in a connection's message (`on-text`, `on-binary`), in its `on-close` or in a
//! handshake's `on-upgrade` is that event's fault: it costs its client (1011, or 503)
//! and nobody else, so that a burst of bad messages from many clients puts nobody into
//! back-off. A new event's successful call ends a streak; `on-open` replayed into a
//! fresh instance does not (it re-runs what worked before: a plugin whose every new
//! event fails must still back off). From the [`BACKOFF_AFTER`]th counted failure in a
//! row, the next start waits [`backoff`] of the streak.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use wasmtime::Trap;

use super::{CloseCode, ConnId, Export, HostServices};
use crate::metrics::{PluginMetrics, TrapKind};

/// Consecutive counted failures after which restarts are delayed.
pub const BACKOFF_AFTER: u32 = 3;
/// First and longest delay of a restart in a crash loop.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No instance could be made: the component traps at start, or wants more memory
    /// than its cap.
    Instantiate,
    /// An export trapped (or ran past its deadline).
    Trap(Export),
}

impl Failure {
    /// What failed, for logs: the export's name, or `(instantiate)`.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Instantiate => "(instantiate)",
            Failure::Trap(export) => export.name(),
        }
    }

    /// Whether it counts towards the back-off (see the module's documentation).
    pub fn counts(self) -> bool {
        match self {
            Failure::Instantiate => true,
            Failure::Trap(export) => matches!(export, Export::OnOpen | Export::OnTimer | Export::Snapshot),
        }
    }
}

/// A streak of counted failures; shared between threads where a plugin is called on several.
#[derive(Debug, Default)]
pub struct CrashLoop {
    streak: AtomicU32,
}

impl CrashLoop {
    /// No failure yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Notes `failure`; the streak it makes, if it counts.
    pub fn failed(&self, failure: Failure) -> Option<u32> {
        failure
            .counts()
            .then(|| self.streak.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// A new event's call worked: whether that ended a streak.
    pub fn succeeded(&self) -> bool {
        // A load first: the common case (no streak) writes nothing.
        self.streak.load(Ordering::Relaxed) != 0 && self.streak.swap(0, Ordering::Relaxed) != 0
    }

    /// Forgets the streak (a new version is served).
    pub fn reset(&self) {
        self.streak.store(0, Ordering::Relaxed);
    }

    /// Counted failures in a row.
    pub fn streak(&self) -> u32 {
        self.streak.load(Ordering::Relaxed)
    }

    /// How long the next start must wait, in a crash loop.
    pub fn delay(&self) -> Option<Duration> {
        let streak = self.streak();
        (streak >= BACKOFF_AFTER).then(|| backoff(streak))
    }
}

/// Delay before the next restart after `streak` counted failures in a row.
pub fn backoff(streak: u32) -> Duration {
    let doublings = streak.saturating_sub(BACKOFF_AFTER).min(16);
    (BACKOFF_MIN * 2u32.pow(doublings)).min(BACKOFF_MAX)
}

/// Sets the crash-loop gauges for a streak of `streak`.
pub fn report(metrics: &PluginMetrics, streak: u32) {
    metrics.crashes.set(streak.into());
    let delay = if streak >= BACKOFF_AFTER {
        backoff(streak)
    } else {
        Duration::ZERO
    };
    metrics.backoff.set(delay.as_secs_f64());
}

/// A failure: what failed, the connection whose event it was (if any), and the error.
pub(super) struct Crash {
    pub(super) conn: Option<ConnId>,
    pub(super) failure: Failure,
    pub(super) error: wasmtime::Error,
    pub(super) kind: TrapKind,
}

impl Crash {
    /// Counts the crash in `metrics` and logs it.
    pub(super) fn report(&self, plugin: &str, metrics: &PluginMetrics) {
        metrics.trapped(self.kind);
        let trap = self
            .error
            .downcast_ref::<Trap>()
            .map_or_else(|| "error".to_owned(), Trap::to_string);
        tracing::error!(
            plugin,
            export = self.failure.name(),
            conn = self.conn,
            trap,
            "plugin trapped: {}",
            super::one_line(&self.error)
        );
    }

    /// Closes the connection whose event failed with 1011 (if it is `still_open` to the
    /// plugin), and holds a call of its that ran past the deadline against its client,
    /// the same in both modes.
    pub(super) fn end_connection(&self, services: &dyn HostServices, still_open: bool) {
        let Some(conn) = self.conn else { return };
        // Held first: once the client sees its 1011, its next handshake must find it.
        if self.kind == TrapKind::Deadline {
            services.overran(conn);
        }
        if still_open {
            let _ = services.close(conn, CloseCode::INTERNAL_ERROR, "internal error".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_ceiling() {
        assert_eq!(backoff(3), Duration::from_millis(100));
        assert_eq!(backoff(4), Duration::from_millis(200));
        assert_eq!(backoff(6), Duration::from_millis(800));
        assert_eq!(backoff(100), BACKOFF_MAX);
    }

    #[test]
    fn what_counts_is_what_shows_the_plugin_cannot_work() {
        let counted = [
            Failure::Instantiate,
            Failure::Trap(Export::OnOpen),
            Failure::Trap(Export::OnTimer),
            Failure::Trap(Export::Snapshot),
        ];
        let contained = [
            Failure::Trap(Export::OnText),
            Failure::Trap(Export::OnBinary),
            Failure::Trap(Export::OnClose),
            Failure::Trap(Export::OnUpgrade),
            Failure::Trap(Export::Restore),
        ];
        assert!(counted.iter().all(|f| f.counts()));
        assert!(contained.iter().all(|f| !f.counts()));
    }

    #[test]
    fn a_streak_backs_off_from_its_third_counted_failure_and_a_success_ends_it() {
        let lp = CrashLoop::new();
        // A burst of bad messages: contained, no streak, no wait.
        for _ in 0..50 {
            assert_eq!(lp.failed(Failure::Trap(Export::OnText)), None);
        }
        assert_eq!((lp.streak(), lp.delay()), (0, None));
        assert!(!lp.succeeded(), "nothing to end");
        // A plugin that cannot open a connection.
        assert_eq!(lp.failed(Failure::Trap(Export::OnOpen)), Some(1));
        assert_eq!(lp.failed(Failure::Instantiate), Some(2));
        assert_eq!(lp.delay(), None);
        assert_eq!(lp.failed(Failure::Trap(Export::OnOpen)), Some(3));
        assert_eq!(lp.delay(), Some(Duration::from_millis(100)));
        assert_eq!(lp.failed(Failure::Trap(Export::OnTimer)), Some(4));
        assert_eq!(lp.delay(), Some(Duration::from_millis(200)));
        // A contained trap neither adds nor ends it.
        assert_eq!(lp.failed(Failure::Trap(Export::OnClose)), None);
        assert_eq!(lp.streak(), 4);
        assert!(lp.succeeded());
        assert_eq!((lp.streak(), lp.delay()), (0, None));
        lp.failed(Failure::Instantiate);
        lp.reset();
        assert_eq!(lp.streak(), 0);
    }
}
