//! Hot reload: watches the plugin file and reloads it when it changes or when the
//! process gets SIGHUP. Loading (compiling) happens here, off the plugin thread; the
//! plugin thread only swaps instances between two events.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher as _};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::handle::PluginHandle;
use super::loader::{self, Loader};
use super::reload::{self, ReloadError};
use crate::metrics::PluginMetrics;

/// File events closer together than this are one change (a `cp` writes in pieces).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Reloads `path`, whose version `serving` (its SHA-256) is running now, on SIGHUP
/// and, if `follow_file`, whenever the file changes; counts the loads and the versions
/// that fail to load in `metrics`. Must be called inside a tokio runtime.
pub fn watch(
    loader: Arc<Loader>,
    path: PathBuf,
    plugin: PluginHandle,
    serving: [u8; 32],
    follow_file: bool,
    metrics: Arc<PluginMetrics>,
) -> std::io::Result<()> {
    let (changed, mut changes) = mpsc::channel::<()>(1);
    let watcher = if follow_file {
        Some(watch_file(&path, changed).map_err(std::io::Error::other)?)
    } else {
        None
    };
    let mut hangup = signal(SignalKind::hangup())?;

    tokio::spawn(async move {
        let _watcher = watcher;
        let mut state = Versions {
            serving,
            failed: None,
            metrics,
        };
        loop {
            let forced = tokio::select! {
                Some(()) = changes.recv() => false,
                Some(()) = hangup.recv() => true,
                else => return,
            };
            let requested_at = Instant::now();
            // Wait until the file has been quiet for a moment.
            while let Ok(Some(())) = timeout(DEBOUNCE, changes.recv()).await {}
            reload(&loader, &path, &plugin, &mut state, forced, requested_at).await;
        }
    });
    Ok(())
}

/// Signals `changed` on every event that may have changed the file at `path`.
fn watch_file(path: &Path, changed: mpsc::Sender<()>) -> notify::Result<notify::RecommendedWatcher> {
    let name = path.file_name().map(ToOwned::to_owned);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        let relevant = matches!(
            event.kind,
            EventKind::Create(_)
                | EventKind::Modify(_)
                | EventKind::Remove(_)
                | EventKind::Access(AccessKind::Close(AccessMode::Write))
        );
        if relevant && event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            // A full channel already holds a pending change: nothing is lost.
            let _ = changed.try_send(());
        }
    })?;
    // Watch the directory, not the file: an atomic rename replaces the file's inode.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Which versions of the file the watcher has seen.
struct Versions {
    serving: [u8; 32],
    /// The last version that failed to load, so its error is logged once.
    failed: Option<[u8; 32]>,
    /// Where loads and failed reloads are counted.
    metrics: Arc<PluginMetrics>,
}

async fn reload(
    loader: &Arc<Loader>,
    path: &Path,
    plugin: &PluginHandle,
    versions: &mut Versions,
    forced: bool,
    requested_at: Instant,
) {
    let file = path.display().to_string();
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(error) => {
            let error = error.to_string();
            let failed = ReloadError::Read {
                file: file.clone(),
                error,
            };
            return reload::report(&file, &Err(failed), &versions.metrics);
        }
    };
    let digest = loader::digest(&bytes);
    if !forced && (digest == versions.serving || Some(digest) == versions.failed) {
        tracing::debug!(file, "plugin file event without a new version");
        return;
    }
    let (loader, owned_path) = (loader.clone(), path.to_owned());
    let loaded = tokio::task::spawn_blocking(move || loader.load_bytes(&owned_path, &bytes, requested_at)).await;
    let outcome = match loaded {
        Ok(Ok(loaded)) => {
            versions.metrics.loaded(loaded.cache_hit);
            versions.serving = digest;
            versions.failed = None;
            plugin.reload(loaded).await
        }
        Ok(Err(error)) => {
            versions.failed = Some(digest);
            Err(ReloadError::Load(super::one_line(&error)))
        }
        Err(error) => Err(ReloadError::Load(format!("loading stopped: {error}"))),
    };
    reload::report(&file, &outcome, &versions.metrics);
}
