//! What became of a reload: [`Reloaded`] (the new version serves) or [`ReloadError`]
//! (the version before keeps serving), returned by the plugin's thread to whoever asked
//! ([`super::watcher`]), which logs it and counts it once ([`report`]).

use std::sync::Arc;
use std::time::Duration;

use super::ConnId;
use super::loader::Loaded;
use crate::metrics::PluginMetrics;

/// A new version swapped in.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The version now serving.
    pub loaded: Arc<Loaded>,
    /// Open connections it took over.
    pub connections: usize,
    /// How the connections' state reached it.
    pub state: Carried,
    /// Instantiating it and carrying the state over took.
    pub swap: Duration,
    /// Timers cancelled because it has no `on-timer` (a 0.1 plugin, or 0.3 without timers).
    pub timers_cancelled: usize,
}

/// How the connections' state reached a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carried {
    /// Through `snapshot` and `restore`: this many bytes.
    Restored(usize),
    /// By calling `on-open` again for every open connection.
    Replayed,
}

/// Why a new version was not swapped in; the version before keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read.
    #[error("cannot read {file}: {error}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        error: String,
    },
    /// It is not a plugin this host can run (not a component, a wrong world, ...).
    #[error("{0}")]
    Load(String),
    /// Its start-up code failed.
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    /// The serving version's `snapshot` returned an error.
    #[error("snapshot refused: {0}")]
    SnapshotRefused(String),
    /// The serving version's `snapshot` trapped (it restarts from a fresh instance).
    #[error("snapshot trapped: {0}")]
    SnapshotTrapped(String),
    /// The new version's `restore` returned an error.
    #[error("restore refused: {0}")]
    RestoreRefused(String),
    /// The new version's `restore` trapped.
    #[error("restore trapped: {0}")]
    RestoreTrapped(String),
    /// The new version's `on-open`, replayed for an open connection, trapped.
    #[error("on-open of {conn} trapped: {error}")]
    Replay {
        /// The connection whose `on-open` trapped.
        conn: ConnId,
        /// The trap.
        error: String,
    },
    /// The plugin's thread has stopped (the host is shutting down).
    #[error("the plugin has stopped")]
    Stopped,
}

/// Logs what became of a reload of `file` and counts it in `metrics`.
pub fn report(file: &str, outcome: &Result<Reloaded, ReloadError>, metrics: &PluginMetrics) {
    match outcome {
        Ok(reloaded) => {
            metrics.reloaded.inc();
            let loaded = &reloaded.loaded;
            let state = match reloaded.state {
                Carried::Restored(bytes) => format!("restored {bytes} bytes"),
                Carried::Replayed => "on-open replayed".to_owned(),
            };
            tracing::info!(
                plugin = &*loaded.name,
                file,
                connections = reloaded.connections,
                api = %loaded.linked.api(),
                exports = %loaded.linked.optional_exports(),
                state,
                language = %loaded.language,
                size = loaded.size,
                load_ms = loaded.load_time.as_millis() as u64,
                cache_hit = loaded.cache_hit,
                swap_ms = reloaded.swap.as_millis() as u64,
                total_ms = loaded.requested_at.elapsed().as_millis() as u64,
                "plugin reloaded"
            );
            if reloaded.timers_cancelled > 0 {
                tracing::warn!(
                    plugin = &*loaded.name,
                    timers = reloaded.timers_cancelled,
                    "the new version has no on-timer: its timers are cancelled"
                );
            }
        }
        Err(ReloadError::Stopped) => {}
        Err(error) => {
            metrics.reload_failed.inc();
            tracing::error!(file, "reload failed, previous version keeps serving: {error}");
        }
    }
}
