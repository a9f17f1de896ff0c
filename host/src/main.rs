//! `host`: runs a wsplug WebSocket server with one plugin.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use wsplug::plugin::{self, Grants, Loader, PluginLimits};
use wsplug::server::registry::Registry;
use wsplug::server::{Server, Settings};
use wsplug::ws::deflate::DeflateConfig;
use wsplug::ws::handshake::HandshakeConfig;

/// A WebSocket server whose business logic is a sandboxed WebAssembly component.
#[derive(Parser, Debug)]
#[command(name = "host", version)]
struct Cli {
    /// Address to listen on, e.g. 127.0.0.1:9001 or [::1]:9001 (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,

    /// The plugin: a WebAssembly component implementing the wsplug:plugin world.
    #[arg(long)]
    plugin: PathBuf,

    /// Largest message accepted, in bytes, after reassembly and inflation; larger ones get close code 1009.
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..=(1 << 40)))]
    max_payload_size: u64,

    /// Messages that may wait in one connection's outbound queue; a reader that lets it overflow is dropped (1008).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_messages_buffering: u64,

    /// A subprotocol the server speaks (repeatable); the first one a client offers is selected.
    #[arg(long = "subprotocol", value_name = "NAME")]
    subprotocols: Vec<String>,

    /// Never negotiate permessage-deflate.
    #[arg(long)]
    no_compression: bool,

    /// Seconds within which the opening handshake must complete.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    handshake_timeout: u64,

    /// CPU time, in milliseconds, one plugin call may take before it is interrupted (the connection gets 1011).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    plugin_deadline_ms: u64,

    /// Largest linear memory of a plugin instance, in MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    plugin_memory_mib: u64,

    /// Events that may wait for the plugin; when full, connections stop reading (back-pressure).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    plugin_queue: u64,

    /// A directory the plugin may read, mounted at /data inside it (nothing is granted by default).
    #[arg(long, value_name = "DIR")]
    plugin_dir: Option<PathBuf>,

    /// Where compiled plugins are cached [default: $XDG_CACHE_HOME/wsplug or ~/.cache/wsplug].
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Compile the plugin at every start instead of caching the compiled code.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,

    /// Do not reload the plugin when its file changes (SIGHUP still reloads).
    #[arg(long)]
    no_watch: bool,

    /// Log filter (error, warn, info, debug, trace, or tracing directives); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&cli.log));
    let filter = match filter {
        Ok(filter) => filter,
        Err(error) => {
            eprintln!("host: error: invalid --log value {:?}: {error}", cli.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("host: error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("host: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let registry = Arc::new(Registry::new(cli.max_messages_buffering as usize));
    let cache_dir = if cli.no_cache {
        None
    } else {
        cli.cache_dir.clone().or_else(plugin::loader::default_cache_dir)
    };
    let loader = Arc::new(Loader::new(cache_dir)?);
    let loaded = loader.load(&cli.plugin, Instant::now())?;
    tracing::info!(
        plugin = &*loaded.name,
        file = %cli.plugin.display(),
        size = loaded.size,
        load_ms = loaded.load_time.as_millis() as u64,
        cache_hit = loaded.cache_hit,
        "plugin loaded"
    );
    let serving = loaded.digest;
    let limits = PluginLimits {
        deadline: Duration::from_millis(cli.plugin_deadline_ms),
        memory_bytes: (cli.plugin_memory_mib as usize) << 20,
        queue_len: cli.plugin_queue as usize,
    };
    let grants = Grants {
        data_dir: cli.plugin_dir.clone(),
    };
    let plugin = plugin::spawn(loader.engine(), loaded, registry.clone(), limits, grants)?;
    plugin::watcher::watch(loader, cli.plugin.clone(), plugin.clone(), serving, !cli.no_watch)
        .with_context(|| format!("cannot watch {}", cli.plugin.display()))?;

    let settings = Settings {
        handshake: HandshakeConfig {
            subprotocols: cli.subprotocols,
            deflate: (!cli.no_compression).then(DeflateConfig::default),
            ..HandshakeConfig::default()
        },
        handshake_timeout: Duration::from_secs(cli.handshake_timeout),
        close_timeout: Duration::from_secs(5),
        max_message_size: cli.max_payload_size as usize,
        deflate_level: 6,
    };
    let server = Server::bind(cli.listen, settings, registry, plugin)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = server.local_addr()?;
    // Tests and scripts wait for this line to know the server is ready.
    println!("wsplug listening on ws://{addr}");
    server.run().await;
    Ok(())
}
