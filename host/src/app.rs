//! The `host` program: command line and TOML file, logging, plugin, server, signals.
//! `src/main.rs` is a call to [`main`].

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

use clap::Parser as _;

use crate::cluster::{ClusterConfig, bus};
use crate::config::{Command, Config, DEFAULT_ROUTE, LogFormat, Options, RouteConfig};
use crate::metrics::{Metrics, RouteMetrics};
use crate::plugin::{self, ConnectionEvent, Grants, HostServices, Loader, PluginHandle, PluginLimits, Runner};
use crate::server::outbound::OutboundLimits;
use crate::server::registry::Registry;
use crate::server::static_files::StaticFiles;
use crate::server::{Route, Server, tls};
use crate::store::KeyValue;

/// Native code that handles plugin events in place of a WebAssembly plugin.
pub type NativeHandler = Box<dyn FnMut(&dyn HostServices, ConnectionEvent) + Send>;

/// Runs the host as the `host` binary does: reads the command line (and the TOML
/// file it names), sets up logging, serves until SIGTERM or SIGINT. Returns the
/// process's exit code: 2 for a bad setting, 1 for a failure to start.
/// `host check FILE` checks a plugin instead (see [`check`]).
///
/// `native` replaces the plugin with native code on the same event path; it exists
/// so that benchmarks can measure what the WebAssembly sandbox costs.
pub fn main(native: Option<NativeHandler>) -> ExitCode {
    let options = Options::parse();
    if let Some(Command::Check { file }) = &options.command {
        return check(file);
    }
    let config = match options.resolve() {
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
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }

    keep_freed_memory();
    // The one TLS implementation of the process (WSS, and rediss:// to the cluster's Redis).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Every connection is a file descriptor: use all the process may have, not the
    // usual soft limit of 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "file descriptor limit"),
        Err(error) => tracing::warn!("cannot raise the file descriptor limit: {error}"),
    }

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = config.threads {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.build() {
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

async fn run(config: Config, mut native: Option<NativeHandler>) -> anyhow::Result<()> {
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
    if native.is_some() && config.routes.len() != 1 {
        anyhow::bail!("a native handler serves exactly one route");
    }

    let metrics = Metrics::new();
    let loader = Arc::new(Loader::new(config.cache_dir.clone())?);
    let mut routes = Vec::new();
    let mut buses = Vec::new();
    for route in &config.routes {
        let bus = match &config.cluster {
            // The outbox must hold a whole state, and what changes meanwhile.
            Some(cluster) => {
                let max_queued = 2 * config.shared_state.max_bytes + (16 << 20);
                Some(bus::join(&route_cluster(cluster, &route.name), max_queued).await?)
            }
            None => None,
        };
        let registry = Arc::new(
            match &bus {
                Some(bus) => Registry::clustered(route.outbound, bus.cluster()),
                None => Registry::new(route.outbound),
            }
            .with_shared_limits(config.shared_state),
        );
        let route_metrics = metrics.route(&route.name);
        let plugin = match native.take() {
            Some(handle) => {
                plugin::spawn_handler(&route.name, route.plugin.limits.queue_len, registry.clone(), handle)?
            }
            None => {
                let store = bus.as_ref().map(|bus| Arc::new(bus.store()) as Arc<dyn KeyValue>);
                let started = start_plugin(&config, route, &loader, registry.clone(), store, &route_metrics);
                // A one-plugin host's errors read as they always have.
                match route.name == DEFAULT_ROUTE {
                    true => started?,
                    false => started.with_context(|| format!("route {:?} ({})", route.name, route.path.as_str()))?,
                }
            }
        };
        routes.push(Route::new(
            route.path.clone(),
            route.handshake.clone(),
            route.max_message_size,
            route.max_connections,
            registry.clone(),
            plugin,
            route_metrics,
        ));
        buses.extend(bus.map(|bus| (bus, registry)));
    }

    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let server = Server::bind(
        config.listen,
        config.metrics_listen,
        config.server.clone(),
        routes,
        metrics,
        static_files,
        tls,
    )
    .await
    .with_context(|| match config.metrics_listen {
        Some(metrics) => format!("cannot listen on {} and {metrics}", config.listen),
        None => format!("cannot listen on {}", config.listen),
    })?;
    let addr = server.local_addr()?;
    if let Some(metrics) = server.metrics_addr() {
        tracing::info!("metrics on http://{metrics}/metrics");
    }
    let buses: Vec<_> = buses.into_iter().map(|(bus, registry)| bus.run(registry)).collect();
    // Tests and scripts wait for this line to know the server is ready.
    println!("wsplug listening on {scheme}://{addr}");
    server.run(stop_signal()?).await;
    for bus in buses {
        bus.leave().await;
    }
    Ok(())
}

/// The cluster a route's hosts share: the configured one for the route named
/// [`DEFAULT_ROUTE`] (a one-plugin host's), one of its own for any other.
fn route_cluster(cluster: &ClusterConfig, route: &str) -> ClusterConfig {
    let name = if route == DEFAULT_ROUTE {
        cluster.name.clone()
    } else {
        format!("{}.{route}", cluster.name)
    };
    ClusterConfig {
        name,
        ..cluster.clone()
    }
}

/// Loads a route's plugin, starts it on its own thread and watches its file for new
/// versions. Its key-value store is `store` if given (the cluster's), else the file
/// store in `store_dir` (the route named [`DEFAULT_ROUTE`]) or in `store_dir/NAME`.
fn start_plugin(
    config: &Config,
    route: &RouteConfig,
    loader: &Arc<Loader>,
    registry: Arc<Registry>,
    store: Option<Arc<dyn KeyValue>>,
    metrics: &RouteMetrics,
) -> anyhow::Result<PluginHandle> {
    let loaded = loader.load(&route.plugin.file, Instant::now())?;
    metrics.plugin.loaded(loaded.cache_hit);
    tracing::info!(
        route = &*route.name,
        path = route.path.as_str(),
        plugin = &*loaded.name,
        file = %route.plugin.file.display(),
        api = %loaded.linked.api(),
        exports = %loaded.linked.optional_exports(),
        language = %loaded.language,
        size = loaded.size,
        load_ms = loaded.load_time.as_millis() as u64,
        cache_hit = loaded.cache_hit,
        "plugin loaded"
    );
    let serving = loaded.digest;
    let grants = Grants {
        data_dir: route.plugin.data_dir.clone(),
        store_dir: if route.name == DEFAULT_ROUTE {
            config.store_dir.clone()
        } else {
            config.store_dir.join(&route.name)
        },
        store_quota: route.plugin.store_quota,
    };
    let mut runner = Runner::new(loader.engine(), loaded, registry, route.plugin.limits, grants)?
        .with_metrics(metrics.plugin.clone());
    if let Some(store) = store {
        runner = runner.with_store(store);
    }
    if route.plugin.stateless {
        runner = runner.stateless();
    }
    let plugin = plugin::spawn(runner, &route.name)?;
    plugin::watcher::watch(
        loader.clone(),
        route.plugin.file.clone(),
        plugin.clone(),
        serving,
        route.plugin.watch,
        metrics.plugin.clone(),
    )
    .with_context(|| format!("cannot watch {}", route.plugin.file.display()))?;
    Ok(plugin)
}

/// `host check FILE`: compiles and links a plugin and starts one instance of it, as
/// serving it would, then prints what it is (language, world version, exports,
/// imports, size, compile time) and exits 0; or prints why it would not load and
/// exits 1.
pub fn check(file: &Path) -> ExitCode {
    match check_report(file) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{}: cannot be loaded: {}", file.display(), plugin::one_line(&error));
            ExitCode::FAILURE
        }
    }
}

fn check_report(file: &Path) -> wasmtime::Result<String> {
    use std::fmt::Write as _;
    // No cache: the compile time is the real one, and nothing is written.
    let loader = Loader::new(None)?;
    let loaded = loader.load(file, Instant::now())?;
    let mut report = String::new();
    let _ = writeln!(report, "{}: loads", file.display());
    let _ = writeln!(report, "language: {}", loaded.language);
    let _ = writeln!(report, "world: wsplug:plugin@{}", loaded.linked.api());
    let _ = writeln!(report, "optional exports: {}", loaded.linked.optional_exports());
    let _ = writeln!(report, "exports: {}", loaded.interfaces.exports.join(" "));
    let _ = writeln!(report, "imports: {}", loaded.interfaces.imports.join(" "));
    let _ = writeln!(report, "size: {} bytes", loaded.size);
    let _ = writeln!(report, "compile: {} ms", loaded.load_time.as_millis());
    // Instantiating runs the component's start-up code: a plugin that traps there, or
    // needs more memory than the default cap, fails here as it would at startup.
    let registry = Arc::new(Registry::new(OutboundLimits {
        max_messages: 1,
        max_bytes: 1024,
    }));
    let started = Instant::now();
    // A store of its own, should the plugin's start-up code use one: fresh, private, and
    // gone when the check is done.
    let store = crate::private_files::TempDir::new("check")
        .map_err(|error| wasmtime::Error::msg(format!("cannot make a temporary directory: {error}")))?;
    let grants = Grants {
        data_dir: None,
        store_dir: store.path().to_owned(),
        store_quota: Default::default(),
    };
    let memory_cap = PluginLimits::default().memory_cap(&loaded);
    Runner::new(loader.engine(), loaded, registry, PluginLimits::default(), grants)?;
    let _ = writeln!(
        report,
        "instantiate: {} ms (memory cap {} MiB)",
        started.elapsed().as_millis(),
        memory_cap >> 20
    );
    Ok(report)
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
