//! The `host` program: command line and TOML file, logging, plugin, server, signals.
//! `src/main.rs` is a call to [`main`].

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

use crate::cluster::bus;
use crate::config::{Config, Options};
use crate::plugin::{self, Grants, HostServices, Loader, PluginEvent, PluginHandle, PluginLimits, Runner};
use crate::server::outbound::OutboundLimits;
use crate::server::registry::Registry;
use crate::server::static_files::StaticFiles;
use crate::server::{Server, Settings, tls};
use crate::store::KeyValue;
use crate::ws::handshake::HandshakeConfig;

/// Native code that handles plugin events in place of a WebAssembly plugin.
pub type NativeHandler = Box<dyn FnMut(&dyn HostServices, PluginEvent) + Send>;

/// Runs the host as the `host` binary does: reads the command line (and the TOML
/// file it names), sets up logging, serves until SIGTERM or SIGINT. Returns the
/// process's exit code: 2 for a bad setting, 1 for a failure to start.
///
/// `native` replaces the plugin with native code on the same event path; it exists
/// so that benchmarks can measure what the WebAssembly sandbox costs.
pub fn main(native: Option<NativeHandler>) -> ExitCode {
    let config = match Options::load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("host: error: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = match EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&config.log)) {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("host: error: invalid log = {:?}: {error}", config.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    keep_freed_memory();
    // Every connection is a file descriptor: use all the process may have, not the
    // usual soft limit of 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(error) => tracing::warn!("cannot raise the file descriptor limit: {error}"),
    }

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("host: error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, native)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("host: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, native: Option<NativeHandler>) -> anyhow::Result<()> {
    // Load everything that can fail before binding, so a bad setting never leaves a
    // half-started server.
    let tls = config
        .tls
        .as_ref()
        .map(tls::acceptor)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let static_files = config
        .static_dir
        .as_deref()
        .map(StaticFiles::new)
        .transpose()
        .context("cannot serve the static directory")?;

    let limits = OutboundLimits {
        max_messages: config.max_messages_buffering,
        max_bytes: config.max_buffered_bytes,
    };
    let bus = match &config.cluster {
        Some(cluster) => Some(bus::join(cluster).await?),
        None => None,
    };
    let registry = Arc::new(match &bus {
        Some(bus) => Registry::clustered(limits, bus.cluster()),
        None => Registry::new(limits),
    });
    let plugin = match native {
        Some(handle) => plugin::spawn_handler(config.plugin_queue, registry.clone(), handle)?,
        None => {
            let store = bus.as_ref().map(|bus| Arc::new(bus.store()) as Arc<dyn KeyValue>);
            start_plugin(&config, registry.clone(), store)?
        }
    };

    let settings = Settings {
        handshake: HandshakeConfig {
            subprotocols: config.subprotocols.clone(),
            deflate: config.compression,
            allowed_origins: config.allowed_origins.clone(),
            ..HandshakeConfig::default()
        },
        handshake_timeout: config.handshake_timeout,
        idle_timeout: config.idle_timeout,
        close_timeout: config.close_timeout,
        max_message_size: config.max_payload_size,
        max_connections: config.max_connections,
        prod: config.prod,
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let server = Server::bind(config.listen, settings, registry.clone(), plugin, static_files, tls)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = server.local_addr()?;
    let bus = bus.map(|bus| bus.run(registry));
    // Tests and scripts wait for this line to know the server is ready.
    println!("wsplug listening on {scheme}://{addr}");
    server.run(stop_signal()?, config.shutdown_grace).await;
    if let Some(bus) = bus {
        bus.leave().await;
    }
    Ok(())
}

/// Loads the configured plugin, starts it on its own thread and watches its file
/// for new versions. Its key-value store is `store` if given (the cluster's), else the
/// file store in `store_dir`.
fn start_plugin(
    config: &Config,
    registry: Arc<Registry>,
    store: Option<Arc<dyn KeyValue>>,
) -> anyhow::Result<PluginHandle> {
    let loader = Arc::new(Loader::new(config.cache_dir.clone())?);
    let loaded = loader.load(&config.plugin, Instant::now())?;
    tracing::info!(
        plugin = &*loaded.name,
        file = %config.plugin.display(),
        api = %loaded.linked.api(),
        exports = %loaded.linked.optional_exports(),
        language = %loaded.language,
        size = loaded.size,
        load_ms = loaded.load_time.as_millis() as u64,
        cache_hit = loaded.cache_hit,
        "plugin loaded"
    );
    let serving = loaded.digest;
    let limits = PluginLimits {
        deadline: config.plugin_deadline,
        memory_bytes: config.plugin_memory_bytes,
        queue_len: config.plugin_queue,
    };
    let grants = Grants {
        data_dir: config.plugin_dir.clone(),
        store_dir: config.store_dir.clone(),
    };
    let mut runner = Runner::new(loader.engine(), loaded, registry, limits, grants)?;
    if let Some(store) = store {
        runner = runner.with_store(store);
    }
    let plugin = plugin::spawn(runner)?;
    plugin::watcher::watch(loader, config.plugin.clone(), plugin.clone(), serving, config.watch)
        .with_context(|| format!("cannot watch {}", config.plugin.display()))?;
    Ok(plugin)
}

/// Free memory glibc may keep at the top of a heap before it hands it back to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 16 << 20;

/// Stops glibc from returning freed memory to the kernel as soon as 128 KiB of it sits
/// at the top of a heap (its default). Messages are allocated on one thread and freed
/// on another (the plugin's), so with large messages every few of them shrank a heap
/// and the next ones page-faulted it back in: 9-11 % of the server's CPU in `perf` at
/// 16 KiB echo. With the threshold at 16 MiB the faults are gone, and 16 KiB echo went
/// from 0.68 to 0.73 x fastwebsockets (`bench/run.py --only "echo 100 x 16"`). (Setting
/// it also turns off glibc's sliding mmap threshold, which stays at 128 KiB.)
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}

/// Resolves on the first SIGTERM or SIGINT.
fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}
