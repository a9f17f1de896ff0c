//! Configuration: a TOML file (`--config`) and command-line flags, merged (flags win)
//! and validated into the settings the server runs with. Every bad value is an error
//! that names the key, the value and what is allowed.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};

pub use crate::server::route_path::RoutePath;
pub use crate::server::tls::TlsFiles;
use serde::Deserialize;

/// A configuration error: reported as `host: error: ...` with exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn invalid(key: &str, value: impl std::fmt::Display, allowed: &str) -> Self {
        Self(format!("invalid {key} = {value}: {allowed}"))
    }
}

/// Every setting, as the TOML file spells it (top-level keys, snake_case). The
/// command-line flags have the same names in kebab-case.
#[derive(Debug, Default, Deserialize, Parser)]
#[serde(deny_unknown_fields)]
#[command(
    name = "host",
    version,
    about = "A WebSocket server whose business logic is a sandboxed WebAssembly component."
)]
pub struct Options {
    /// Something else than serving: `host check FILE.wasm`.
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<Command>,

    /// TOML configuration file; flags given on the command line override its keys.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address to listen on, e.g. 127.0.0.1:9001 or [::]:9001 (port 0 picks a free port) [default: 127.0.0.1:9001]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// The plugin: a WebAssembly component implementing the wsplug:plugin world, serving every
    /// path no [[route]] of the config file claims (the route named "default", path "/*")
    #[arg(long, value_name = "FILE")]
    pub plugin: Option<PathBuf>,

    /// Several plugins, each on its own paths: `[[route]]` tables of the config file.
    #[arg(skip)]
    pub route: Option<Vec<RouteOptions>>,

    /// Seconds for the opening handshake, and of silence before a ping (then as long again for an answer) [default: 5]
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,

    /// Seconds for the opening handshake [default: timeout]
    #[arg(long, value_name = "SECONDS")]
    pub handshake_timeout: Option<u64>,

    /// Seconds of silence before a connection is pinged, and then to answer [default: timeout]
    #[arg(long, value_name = "SECONDS")]
    pub idle_timeout: Option<u64>,

    /// Seconds for the closing handshake, for the plugin's last replies after the peer's close, and for the final flush [default: timeout]
    #[arg(long, value_name = "SECONDS")]
    pub close_timeout: Option<u64>,

    /// Largest message in bytes, after reassembly and inflation; larger ones get close code 1009 [default: 524288]
    #[arg(long, value_name = "BYTES")]
    pub max_payload_size: Option<u64>,

    /// Messages that may wait for a client whose socket takes no more; past it the client is dropped (1008) [default: 100]
    #[arg(long, value_name = "N")]
    pub max_messages_buffering: Option<u64>,

    /// Bytes that may wait for a client whose socket takes no more; past it the client is dropped (1008) [default: 1 MiB or twice max_payload_size, whichever is larger]
    #[arg(long, value_name = "BYTES")]
    pub max_buffered_bytes: Option<u64>,

    /// Open connections at most; handshakes past it get 503 [default: 10000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u64>,

    /// An Origin allowed to connect (repeatable); others get 403 [default: any]
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Option<Vec<String>>,

    /// A subprotocol the server speaks (repeatable); the first one a client offers is selected
    #[arg(long = "subprotocol", value_name = "NAME")]
    pub subprotocols: Option<Vec<String>>,

    /// Negotiate permessage-deflate [default: true]
    #[arg(long, value_name = "BOOL")]
    pub compression: Option<bool>,

    /// Same as --compression false
    #[arg(long, conflicts_with = "compression")]
    #[serde(skip)]
    pub no_compression: bool,

    /// Largest LZ77 window the server compresses with, 9 to 15 (bits) [default: 15]
    #[arg(long, value_name = "BITS")]
    pub server_max_window_bits: Option<u8>,

    /// Largest window asked of clients that allow it, 9 to 15 (bits) [default: 15]
    #[arg(long, value_name = "BITS")]
    pub client_max_window_bits: Option<u8>,

    /// zlib level of compressed messages, 0 to 9 [default: 6]
    #[arg(long, value_name = "LEVEL")]
    pub compression_level: Option<u32>,

    /// Serve WSS (TLS) [default: false]
    #[arg(long, value_name = "BOOL")]
    pub ssl: Option<bool>,

    /// PEM file with the certificate chain, and the private key unless key_file is given
    #[arg(long, value_name = "FILE")]
    pub cert_file: Option<PathBuf>,

    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1; encrypted as OpenSSL writes them, with passphrase)
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,

    /// Passphrase of an encrypted private key (PKCS#8 with PBKDF2 or scrypt, or legacy PEM; AES or DES-EDE3)
    #[arg(long, value_name = "TEXT")]
    pub passphrase: Option<String>,

    /// PEM file of CAs; when given, clients must present a certificate they signed
    #[arg(long, value_name = "FILE")]
    pub client_ca_file: Option<PathBuf>,

    /// Production mode: clients and logs get no internal detail; false makes the log verbose [default: true]
    #[arg(long, value_name = "BOOL")]
    pub prod: Option<bool>,

    /// Not supported: RFC 6455 section 5.1 forbids a server to mask its frames
    #[arg(long, value_name = "BOOL", hide = true)]
    pub write_masked: Option<bool>,

    /// Directory of static files served over HTTP on the same port (GET and HEAD)
    #[arg(long = "static", value_name = "DIR")]
    #[serde(rename = "static")]
    pub static_dir: Option<PathBuf>,

    /// Seconds to wait for connections to close on SIGTERM/SIGINT [default: 10]
    #[arg(long, value_name = "SECONDS")]
    pub shutdown_grace: Option<u64>,

    /// Threads that serve the connections (and run a stateless plugin), 1 to 1024 [default: one per core]
    #[arg(long, value_name = "N")]
    pub threads: Option<u64>,

    /// CPU time in milliseconds one plugin call may take before it is interrupted [default: 500]
    #[arg(long, value_name = "MS")]
    pub plugin_deadline_ms: Option<u64>,

    /// Largest linear memory of a plugin instance, in MiB [default: 64]
    #[arg(long, value_name = "MIB")]
    pub plugin_memory_mib: Option<u64>,

    /// Events that may wait for the plugin; when full, connections stop reading [default: 1024]
    #[arg(long, value_name = "N")]
    pub plugin_queue: Option<u64>,

    /// A directory the plugin may read, mounted at /data inside it [default: none]
    #[arg(long, value_name = "DIR")]
    pub plugin_dir: Option<PathBuf>,

    /// Where compiled plugins are cached [default: $XDG_CACHE_HOME/wsplug or ~/.cache/wsplug]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Where the plugins' key-value store keeps its database, created when a plugin first
    /// uses it [default: $XDG_DATA_HOME/wsplug or ~/.local/share/wsplug]
    #[arg(long, value_name = "DIR")]
    pub store_dir: Option<PathBuf>,

    /// Join a cluster of hosts that share this Redis server (a redis:// URL, or rediss:// for TLS):
    /// broadcasts, groups, connections and sends reach the clients of every host [default: none]
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,

    /// Name of the cluster: hosts with the same Redis server and name serve one application
    /// (1-64 of A-Z a-z 0-9 _ -) [default: wsplug]
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,

    /// File holding the Redis password (keeps it off the command line and out of the URL)
    #[arg(long, value_name = "FILE")]
    pub cluster_password_file: Option<PathBuf>,

    /// PEM file of the CAs that sign a rediss:// server's certificate [default: the system's]
    #[arg(long, value_name = "FILE")]
    pub cluster_ca_file: Option<PathBuf>,

    /// A secret of at least 16 bytes the cluster's hosts share: every message between them
    /// is authenticated with it, and what Redis writers forge is dropped [default: none]
    #[arg(long, value_name = "TEXT")]
    pub cluster_secret: Option<String>,

    /// File holding cluster_secret (keeps it off the command line)
    #[arg(long, value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,

    /// A request header (repeatable) that other hosts' info of a connection shows; the
    /// others stay on its host [default: host origin user-agent accept-language
    /// x-forwarded-for x-forwarded-proto x-real-ip]
    #[arg(long = "cluster-shared-header", value_name = "NAME")]
    pub cluster_shared_headers: Option<Vec<String>>,

    /// Whether other hosts' info of a connection shows its query string, where tokens
    /// often travel [default: false]
    #[arg(long, value_name = "BOOL")]
    pub cluster_share_query: Option<bool>,

    /// Cache compiled plugins [default: true]
    #[arg(long, value_name = "BOOL")]
    pub cache: Option<bool>,

    /// Same as --cache false
    #[arg(long, conflicts_with = "cache")]
    #[serde(skip)]
    pub no_cache: bool,

    /// Reload the plugin when its file changes (SIGHUP always reloads) [default: true]
    #[arg(long, value_name = "BOOL")]
    pub watch: Option<bool>,

    /// Same as --watch false
    #[arg(long, conflicts_with = "watch")]
    #[serde(skip)]
    pub no_watch: bool,

    /// The plugin keeps nothing between calls: call it on each connection's own thread,
    /// an instance per thread, instead of on one plugin thread [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub stateless: Option<bool>,

    /// Log filter: error, warn, info, debug, trace or tracing directives; RUST_LOG overrides it [default: info, debug when prod is false]
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,

    /// Log lines as "text" or as "json" objects, one per line, for log shippers [default: text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Serve /metrics, /healthz and /readyz on this address (plain HTTP) instead of the
    /// WebSocket port, which then serves /healthz and /readyz only [default: none]
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// Serve /metrics on the WebSocket port too, where every client that reaches the port
    /// reads them (metrics_listen keeps them on an address of their own) [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub serve_metrics: Option<bool>,

    /// Connections the kernel may queue for the server to accept [default: the system's
    /// most, net.core.somaxconn]
    #[arg(long, value_name = "N")]
    pub backlog: Option<u64>,

    /// Connections one client address (IPv6: one /64) may hold open; more get 429 [default: no bound]
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<u64>,

    /// Connections one client address (IPv6: one /64) may open per second; more get 429 [default: no bound]
    #[arg(long, value_name = "N")]
    pub max_connection_rate_per_ip: Option<u64>,

    /// Calls of one client address's connections (IPv6: one /64) that may run past a
    /// plugin's CPU deadline per minute; past it, its connections get 429 until the
    /// minute refills [default: no bound]
    #[arg(long, value_name = "N")]
    pub max_overruns_per_ip: Option<u64>,

    /// Groups one connection may be in at once; a join past it is refused [default: 256]
    #[arg(long, value_name = "N")]
    pub max_groups_per_connection: Option<u64>,

    /// Longest group name, in bytes; a join of a longer one is refused [default: 256]
    #[arg(long, value_name = "BYTES")]
    pub max_group_name: Option<u64>,

    /// Bytes of attachments and group names one route's connections on this host may hold
    /// in all (what a cluster's hosts share); past it, attachments and joins are refused
    /// [default: 64 MiB]
    #[arg(long, value_name = "BYTES")]
    pub max_shared_state: Option<u64>,
}

/// What `host` does instead of serving.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Loads a plugin without serving: prints its language, world version, exports,
    /// imports, size and compile time, or why it would not load (exit status 1).
    Check {
        /// The WebAssembly component to check.
        file: PathBuf,
    },
}

/// A `[[route]]` table: a plugin and the paths it serves. Keys it does not give take
/// the value of the top-level key of the same name.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteOptions {
    /// `/chat` (that path only), `/chat/*` (`/chat` and every path below it) or `/*` (every path).
    pub path: Option<String>,
    /// The plugin file.
    pub plugin: Option<PathBuf>,
    /// Names the route in metrics, logs, its store's directory and its cluster channel
    /// (1-64 of A-Z a-z 0-9 . _ -) [default: from the path: `/chat` is `chat`]
    pub name: Option<String>,
    /// Largest message in bytes.
    pub max_payload_size: Option<u64>,
    /// Messages that may wait for a client that does not read.
    pub max_messages_buffering: Option<u64>,
    /// Bytes that may wait for a client that does not read.
    pub max_buffered_bytes: Option<u64>,
    /// Open connections of this route at most (besides the host's `max_connections`).
    pub max_connections: Option<u64>,
    /// Origins allowed to connect.
    pub allowed_origins: Option<Vec<String>>,
    /// Subprotocols spoken.
    pub subprotocols: Option<Vec<String>>,
    /// Negotiate permessage-deflate.
    pub compression: Option<bool>,
    /// CPU time of one plugin call, in milliseconds.
    pub plugin_deadline_ms: Option<u64>,
    /// Largest linear memory of the plugin, in MiB.
    pub plugin_memory_mib: Option<u64>,
    /// Events that may wait for the plugin.
    pub plugin_queue: Option<u64>,
    /// A directory the plugin may read, at /data.
    pub plugin_dir: Option<PathBuf>,
    /// Reload the plugin when its file changes.
    pub watch: Option<bool>,
    /// Call the plugin on the connections' threads.
    pub stateless: Option<bool>,
}

impl RouteOptions {
    /// Fills every key not given here from `defaults`.
    fn or(self, defaults: &RouteOptions) -> RouteOptions {
        let defaults = defaults.clone();
        RouteOptions {
            path: self.path.or(defaults.path),
            plugin: self.plugin.or(defaults.plugin),
            name: self.name.or(defaults.name),
            max_payload_size: self.max_payload_size.or(defaults.max_payload_size),
            max_messages_buffering: self.max_messages_buffering.or(defaults.max_messages_buffering),
            max_buffered_bytes: self.max_buffered_bytes.or(defaults.max_buffered_bytes),
            max_connections: self.max_connections,
            allowed_origins: self.allowed_origins.or(defaults.allowed_origins),
            subprotocols: self.subprotocols.or(defaults.subprotocols),
            compression: self.compression.or(defaults.compression),
            plugin_deadline_ms: self.plugin_deadline_ms.or(defaults.plugin_deadline_ms),
            plugin_memory_mib: self.plugin_memory_mib.or(defaults.plugin_memory_mib),
            plugin_queue: self.plugin_queue.or(defaults.plugin_queue),
            plugin_dir: self.plugin_dir.or(defaults.plugin_dir),
            watch: self.watch.or(defaults.watch),
            stateless: self.stateless.or(defaults.stateless),
        }
    }

    /// Checks every value and applies the defaults. Errors of the route at `index` name it.
    fn validate(self, index: Option<usize>) -> Result<RouteConfig, ConfigError> {
        let within = |error: ConfigError| match index {
            Some(i) => ConfigError(format!("[[route]] {}: {}", i + 1, error.0)),
            None => error,
        };
        self.validate_keys().map_err(within)
    }

    fn validate_keys(self) -> Result<RouteConfig, ConfigError> {
        let text = self.path.as_deref().unwrap_or("/*");
        let path = RoutePath::parse(text)
            .map_err(|why| ConfigError::invalid("path", format!("{text:?}"), &why.to_string()))?;
        let plugin = self
            .plugin
            .ok_or_else(|| ConfigError("a route needs plugin = \"FILE\"".into()))?;
        let plugin = existing_file("plugin", plugin)?;
        let name = match self.name {
            Some(name) => name,
            None => path
                .default_name()
                .filter(|n| plain_name("name", n).is_ok())
                .ok_or_else(|| {
                    ConfigError::invalid(
                        "path",
                        format!("{:?}", path.as_str()),
                        "cannot name the route after this path: give it a name",
                    )
                })?,
        };
        plain_name("name", &name)?;
        let max_payload_size = range(
            "max_payload_size",
            self.max_payload_size.unwrap_or(512 * 1024),
            1,
            1 << 32,
            "bytes",
        )?;
        let max_messages_buffering = range(
            "max_messages_buffering",
            self.max_messages_buffering.unwrap_or(100),
            1,
            1_000_000,
            "messages",
        )?;
        let max_buffered_bytes = range(
            "max_buffered_bytes",
            self.max_buffered_bytes.unwrap_or((1 << 20).max(2 * max_payload_size)),
            1024,
            1 << 40,
            "bytes",
        )?;
        let max_connections = self
            .max_connections
            .map(|n| range("max_connections", n, 1, 10_000_000, "connections"))
            .transpose()?;
        let allowed_origins = self.allowed_origins.unwrap_or_default();
        for origin in &allowed_origins {
            if origin.is_empty() || origin.ends_with('/') || !origin.contains("://") {
                return Err(ConfigError::invalid(
                    "allowed_origins",
                    format!("{origin:?}"),
                    "expected origins like \"https://example.com\" (scheme://host[:port], no path)",
                ));
            }
        }
        let subprotocols = self.subprotocols.unwrap_or_default();
        for protocol in &subprotocols {
            if protocol.is_empty()
                || !protocol
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
            {
                return Err(ConfigError::invalid(
                    "subprotocols",
                    format!("{protocol:?}"),
                    "expected HTTP tokens (no spaces or separators)",
                ));
            }
        }
        Ok(RouteConfig {
            path,
            plugin,
            name,
            max_payload_size: max_payload_size as usize,
            max_messages_buffering: max_messages_buffering as usize,
            max_buffered_bytes: max_buffered_bytes as usize,
            max_connections: max_connections.map(|n| n as usize),
            allowed_origins,
            subprotocols,
            compression: self.compression.unwrap_or(true),
            plugin_deadline: Duration::from_millis(range(
                "plugin_deadline_ms",
                self.plugin_deadline_ms.unwrap_or(500),
                10,
                60_000,
                "milliseconds",
            )?),
            plugin_memory_bytes: (range(
                "plugin_memory_mib",
                self.plugin_memory_mib.unwrap_or(64),
                1,
                4096,
                "MiB",
            )? as usize)
                << 20,
            plugin_queue: range(
                "plugin_queue",
                self.plugin_queue.unwrap_or(1024),
                1,
                1_000_000,
                "events",
            )? as usize,
            plugin_dir: match (self.plugin_dir, self.stateless) {
                (Some(_), Some(true)) => {
                    return Err(ConfigError(
                        "plugin_dir and stateless exclude each other: a stateless plugin runs on the \
                         connections' threads, where reading a file would block them"
                            .into(),
                    ));
                }
                (dir, _) => dir.map(|d| existing_dir("plugin_dir", d)).transpose()?,
            },
            watch: self.watch.unwrap_or(true),
            stateless: self.stateless.unwrap_or(false),
        })
    }
}

/// A validated route.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// The paths it serves.
    pub path: RoutePath,
    /// Plugin file.
    pub plugin: PathBuf,
    /// Its name: `default` for the one `plugin` (`--plugin`) sets.
    pub name: String,
    /// Largest message, after inflation.
    pub max_payload_size: usize,
    /// Messages that may wait for a client whose socket takes no more.
    pub max_messages_buffering: usize,
    /// Bytes that may wait for a client whose socket takes no more.
    pub max_buffered_bytes: usize,
    /// Open connections of this route at most, if it has its own bound.
    pub max_connections: Option<usize>,
    /// Allowed `Origin` values; empty means any.
    pub allowed_origins: Vec<String>,
    /// Subprotocols spoken.
    pub subprotocols: Vec<String>,
    /// Negotiate permessage-deflate (with the host's [`Config::deflate`] parameters).
    pub compression: bool,
    /// Per-call CPU deadline of the plugin.
    pub plugin_deadline: Duration,
    /// Memory cap of a plugin instance, in bytes.
    pub plugin_memory_bytes: usize,
    /// Plugin event queue bound.
    pub plugin_queue: usize,
    /// Directory granted to the plugin.
    pub plugin_dir: Option<PathBuf>,
    /// Reload on file changes.
    pub watch: bool,
    /// The plugin keeps nothing between calls: each connection's thread calls an
    /// instance of its own ([`crate::plugin::inline`]).
    pub stateless: bool,
}

/// The name of the route that `plugin` (`--plugin`) sets: its store and its cluster
/// channel are those of a host with one plugin.
pub const DEFAULT_ROUTE: &str = "default";

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listening address.
    pub listen: SocketAddr,
    /// The plugins and the paths they serve, in the order given (`plugin`'s last).
    pub routes: Vec<RouteConfig>,
    /// Time for the opening handshake.
    pub handshake_timeout: Duration,
    /// Silence before a ping, and time to answer it.
    pub idle_timeout: Duration,
    /// Time for each closing step.
    pub close_timeout: Duration,
    /// Open connections of the host at most.
    pub max_connections: usize,
    /// permessage-deflate parameters of the routes that negotiate it.
    pub deflate: crate::ws::deflate::DeflateConfig,
    /// WSS, when on.
    pub tls: Option<TlsFiles>,
    /// Production mode.
    pub prod: bool,
    /// Static files root.
    pub static_dir: Option<PathBuf>,
    /// Grace period of a graceful shutdown.
    pub shutdown_grace: Duration,
    /// The runtime's threads, or `None` for one per core.
    pub threads: Option<usize>,
    /// Compiled-plugin cache, or `None` when off.
    pub cache_dir: Option<PathBuf>,
    /// The key-value store's directory (of the route named [`DEFAULT_ROUTE`]; the others
    /// have a directory of their name in it).
    pub store_dir: PathBuf,
    /// The cluster this host joins, if any.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Log filter.
    pub log: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Where `/metrics` is served apart from the WebSocket port, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `/metrics` on the WebSocket port.
    pub serve_metrics: bool,
    /// The listening socket's accept queue; `None`: the system's most.
    pub backlog: Option<u32>,
    /// Bounds per client address.
    pub per_ip: crate::server::per_ip::PerIpLimits,
    /// Bounds of the groups and attachments the connections hold.
    pub shared_state: crate::server::registry::SharedStateLimits,
}

impl Options {
    /// Parses the command line, reads `--config` if given, and merges them.
    pub fn load() -> Result<Config, ConfigError> {
        Options::parse().resolve()
    }

    /// Reads the `--config` file these options name, if any, and merges them with it.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let file = match &self.config {
            Some(path) => Options::from_file(path)?,
            None => Options::default(),
        };
        self.merge(file).validate()
    }

    /// Reads a TOML configuration file.
    pub fn from_file(path: &Path) -> Result<Options, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Options::from_toml(&text).map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
    }

    /// Parses TOML configuration text.
    /// Errors fit on one line and name the line, the key and the value when the
    /// parser points at one.
    pub fn from_toml(text: &str) -> Result<Options, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let message = e.message().trim_end().replace('\n', " ");
            let Some(span) = e.span() else {
                return ConfigError(message);
            };
            let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or_default().trim();
            match line.split_once('=') {
                Some((key, value)) => ConfigError(format!(
                    "invalid {} = {} (line {line_no}): {message}",
                    key.trim(),
                    value.trim()
                )),
                None => ConfigError(format!("line {line_no}: {message}")),
            }
        })
    }

    /// Fills every setting not given here (on the command line) from `file`.
    pub fn merge(self, file: Options) -> Options {
        let cli = Options {
            compression: if self.no_compression {
                Some(false)
            } else {
                self.compression
            },
            cache: if self.no_cache { Some(false) } else { self.cache },
            watch: if self.no_watch { Some(false) } else { self.watch },
            ..self
        };
        macro_rules! pick {
            ($($field:ident),* $(,)?) => {
                Options {
                    $($field: cli.$field.or(file.$field),)*
                    command: cli.command,
                    config: cli.config,
                    no_compression: false,
                    no_cache: false,
                    no_watch: false,
                }
            };
        }
        pick!(
            listen,
            plugin,
            route,
            timeout,
            handshake_timeout,
            idle_timeout,
            close_timeout,
            max_payload_size,
            max_messages_buffering,
            max_buffered_bytes,
            max_connections,
            allowed_origins,
            subprotocols,
            compression,
            server_max_window_bits,
            client_max_window_bits,
            compression_level,
            ssl,
            cert_file,
            key_file,
            passphrase,
            client_ca_file,
            prod,
            write_masked,
            static_dir,
            shutdown_grace,
            threads,
            plugin_deadline_ms,
            plugin_memory_mib,
            plugin_queue,
            plugin_dir,
            cache_dir,
            store_dir,
            cluster,
            cluster_name,
            cluster_password_file,
            cluster_ca_file,
            cluster_secret,
            cluster_secret_file,
            cluster_shared_headers,
            cluster_share_query,
            cache,
            watch,
            stateless,
            log,
            log_format,
            metrics_listen,
            serve_metrics,
            backlog,
            max_connections_per_ip,
            max_connection_rate_per_ip,
            max_overruns_per_ip,
            max_groups_per_connection,
            max_group_name,
            max_shared_state,
        )
    }

    /// Checks every value and applies the defaults.
    pub fn validate(self) -> Result<Config, ConfigError> {
        if let Some(masked) = self.write_masked {
            return Err(ConfigError::invalid(
                "write_masked",
                masked,
                "not supported: RFC 6455 section 5.1 forbids a server to mask its frames and browsers drop such connections; remove the key",
            ));
        }
        let listen = address("listen", self.listen.as_deref().unwrap_or("127.0.0.1:9001"))?;
        let metrics_listen = self
            .metrics_listen
            .as_deref()
            .map(|text| address("metrics_listen", text))
            .transpose()?;
        let serve_metrics = self.serve_metrics.unwrap_or(false);
        if serve_metrics && metrics_listen.is_some() {
            return Err(ConfigError(
                "serve_metrics and metrics_listen exclude each other: metrics_listen serves /metrics on an address of its own".into(),
            ));
        }
        let optional = |key: &str, value: Option<u64>, max: u64, unit: &str| {
            value.map(|n| range(key, n, 1, max, unit).map(|n| n as u32)).transpose()
        };
        let backlog = optional("backlog", self.backlog, 1 << 20, "connections")?;
        let per_ip = crate::server::per_ip::PerIpLimits {
            max_connections: optional(
                "max_connections_per_ip",
                self.max_connections_per_ip,
                10_000_000,
                "connections",
            )?,
            max_rate: optional(
                "max_connection_rate_per_ip",
                self.max_connection_rate_per_ip,
                1_000_000,
                "connections per second",
            )?,
            max_overruns: optional(
                "max_overruns_per_ip",
                self.max_overruns_per_ip,
                1_000_000,
                "calls per minute",
            )?,
        };
        let shared_state = crate::server::registry::SharedStateLimits {
            max_groups: range(
                "max_groups_per_connection",
                self.max_groups_per_connection.unwrap_or(256),
                1,
                1 << 20,
                "groups",
            )? as usize,
            max_group_name: range(
                "max_group_name",
                self.max_group_name.unwrap_or(256),
                1,
                1 << 20,
                "bytes",
            )? as usize,
            max_bytes: range(
                "max_shared_state",
                self.max_shared_state.unwrap_or(64 << 20),
                1 << 16,
                1 << 32,
                "bytes",
            )? as usize,
        };
        // One connection's groups travel to the other hosts in one message.
        if shared_state.max_groups * shared_state.max_group_name > MAX_GROUPS_BYTES {
            return Err(ConfigError(format!(
                "max_groups_per_connection ({}) times max_group_name ({}) is over {} MiB: what one \
                 connection's groups may take in one cluster message",
                shared_state.max_groups,
                shared_state.max_group_name,
                MAX_GROUPS_BYTES >> 20
            )));
        }
        let timeout = seconds("timeout", self.timeout.unwrap_or(5))?;
        let handshake_timeout = match self.handshake_timeout {
            Some(s) => seconds("handshake_timeout", s)?,
            None => timeout,
        };
        let idle_timeout = match self.idle_timeout {
            Some(s) => seconds("idle_timeout", s)?,
            None => timeout,
        };
        let close_timeout = match self.close_timeout {
            Some(s) => seconds("close_timeout", s)?,
            None => timeout,
        };
        let max_connections = range(
            "max_connections",
            self.max_connections.unwrap_or(10_000),
            1,
            10_000_000,
            "connections",
        )?;
        let deflate = crate::ws::deflate::DeflateConfig {
            server_max_window_bits: range(
                "server_max_window_bits",
                self.server_max_window_bits.unwrap_or(15).into(),
                9,
                15,
                "bits",
            )? as u8,
            client_max_window_bits: range(
                "client_max_window_bits",
                self.client_max_window_bits.unwrap_or(15).into(),
                9,
                15,
                "bits",
            )? as u8,
            level: range(
                "compression_level",
                self.compression_level.unwrap_or(6).into(),
                0,
                9,
                "(zlib level)",
            )? as u32,
        };
        let routes = self.routes()?;
        let tls = match (self.ssl.unwrap_or(false), self.cert_file) {
            (false, _) => None,
            (true, None) => return Err(ConfigError(
                "ssl = true needs cert_file (a PEM with the certificate chain, and the key unless key_file is given)"
                    .into(),
            )),
            (true, Some(cert_file)) => Some(TlsFiles {
                cert_file: existing_file("cert_file", cert_file)?,
                key_file: self.key_file.map(|f| existing_file("key_file", f)).transpose()?,
                passphrase: self.passphrase,
                client_ca_file: self
                    .client_ca_file
                    .map(|f| existing_file("client_ca_file", f))
                    .transpose()?,
            }),
        };
        let static_dir = self.static_dir.map(|d| existing_dir("static", d)).transpose()?;
        let prod = self.prod.unwrap_or(true);
        let cache_dir = if self.cache.unwrap_or(true) {
            self.cache_dir.or_else(crate::plugin::loader::default_cache_dir)
        } else {
            None
        };
        let log_format = match self.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::invalid(
                    "log_format",
                    format!("{other:?}"),
                    "\"text\" or \"json\"",
                ));
            }
        };
        Ok(Config {
            listen,
            routes,
            handshake_timeout,
            idle_timeout,
            close_timeout,
            max_connections: max_connections as usize,
            deflate,
            tls,
            prod,
            static_dir,
            shutdown_grace: Duration::from_secs(range(
                "shutdown_grace",
                self.shutdown_grace.unwrap_or(10),
                0,
                3600,
                "seconds",
            )?),
            threads: self
                .threads
                .map(|n| range("threads", n, 1, 1024, "threads").map(|n| n as usize))
                .transpose()?,
            cache_dir,
            store_dir: self.store_dir.unwrap_or_else(crate::store::default_dir),
            cluster: ClusterOptions {
                url: self.cluster,
                name: self.cluster_name,
                password_file: self.cluster_password_file,
                ca_file: self.cluster_ca_file,
                secret: self.cluster_secret,
                secret_file: self.cluster_secret_file,
                shared_headers: self.cluster_shared_headers,
                share_query: self.cluster_share_query,
            }
            .validate()?,
            log: self
                .log
                .unwrap_or_else(|| if prod { "info".into() } else { "debug".into() }),
            log_format,
            metrics_listen,
            serve_metrics,
            backlog,
            per_ip,
            shared_state,
        })
    }

    /// The routes: every `[[route]]`, then the one `plugin` gives (named
    /// [`DEFAULT_ROUTE`], serving `/*`), each completed with the top-level keys.
    fn routes(&self) -> Result<Vec<RouteConfig>, ConfigError> {
        let defaults = RouteOptions {
            path: None,
            plugin: None,
            name: None,
            max_payload_size: self.max_payload_size,
            max_messages_buffering: self.max_messages_buffering,
            max_buffered_bytes: self.max_buffered_bytes,
            max_connections: None,
            allowed_origins: self.allowed_origins.clone(),
            subprotocols: self.subprotocols.clone(),
            compression: self.compression,
            plugin_deadline_ms: self.plugin_deadline_ms,
            plugin_memory_mib: self.plugin_memory_mib,
            plugin_queue: self.plugin_queue,
            plugin_dir: self.plugin_dir.clone(),
            watch: self.watch,
            stateless: self.stateless,
        };
        let tables = self.route.iter().flatten().cloned().enumerate();
        let mut routes = tables
            .map(|(i, route)| route.or(&defaults).validate(Some(i)))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(plugin) = &self.plugin {
            let shorthand = RouteOptions {
                path: Some("/*".into()),
                plugin: Some(plugin.clone()),
                name: Some(DEFAULT_ROUTE.into()),
                ..RouteOptions::default()
            };
            routes.push(shorthand.or(&defaults).validate(None)?);
        }
        if routes.is_empty() {
            return Err(ConfigError(
                "no plugin: give --plugin FILE, `plugin = \"FILE\"` or [[route]] tables in the config file".into(),
            ));
        }
        for (i, route) in routes.iter().enumerate() {
            for other in &routes[..i] {
                if other.name == route.name {
                    return Err(ConfigError(format!(
                        "two routes are named {:?}: names must be unique",
                        route.name
                    )));
                }
                if other.path == route.path {
                    return Err(ConfigError(format!(
                        "two routes serve {:?} (routes {:?} and {:?})",
                        route.path.as_str(),
                        other.name,
                        route.name
                    )));
                }
            }
        }
        Ok(routes)
    }
}

/// The most bytes of group names one connection may hold.
const MAX_GROUPS_BYTES: usize = 4 << 20;

/// The cluster keys, as given.
struct ClusterOptions {
    url: Option<String>,
    name: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    shared_headers: Option<Vec<String>>,
    share_query: Option<bool>,
}

/// The shortest cluster secret: 128 bits of an `openssl rand -hex 16`.
const MIN_SECRET: usize = 16;

impl ClusterOptions {
    /// The cluster settings: a Redis URL, and the rest only with one.
    fn validate(self) -> Result<Option<crate::cluster::ClusterConfig>, ConfigError> {
        let Some(url) = self.url else {
            let given = [
                ("cluster_name", self.name.is_some()),
                ("cluster_password_file", self.password_file.is_some()),
                ("cluster_ca_file", self.ca_file.is_some()),
                ("cluster_secret", self.secret.is_some()),
                ("cluster_secret_file", self.secret_file.is_some()),
                ("cluster_shared_headers", self.shared_headers.is_some()),
                ("cluster_share_query", self.share_query.is_some()),
            ];
            return match given.iter().find(|(_, given)| *given) {
                Some((key, _)) => Err(ConfigError(format!(
                    "{key} needs cluster, the Redis server the hosts share"
                ))),
                None => Ok(None),
            };
        };
        let tls = url.starts_with("rediss://");
        if !tls && !url.starts_with("redis://") {
            return Err(ConfigError::invalid(
                "cluster",
                format!("{:?}", crate::cluster::redacted(&url)),
                "a redis:// URL, or rediss:// for TLS, e.g. redis://127.0.0.1:6379",
            ));
        }
        let name = self.name.unwrap_or_else(|| "wsplug".into());
        // No dot: a route's cluster is named `NAME.ROUTE`, which must not be another's name.
        if name.contains('.') || plain_name("cluster_name", &name).is_err() {
            return Err(ConfigError::invalid(
                "cluster_name",
                format!("{name:?}"),
                "1 to 64 of A-Z a-z 0-9 _ - (no dot: the routes' clusters are named NAME.ROUTE)",
            ));
        }
        let ca_file = match (self.ca_file, tls) {
            (Some(_), false) => {
                return Err(ConfigError(
                    "cluster_ca_file needs a rediss:// cluster URL (TLS to Redis)".into(),
                ));
            }
            (file, _) => file.map(|f| existing_file("cluster_ca_file", f)).transpose()?,
        };
        let secret = match (self.secret, self.secret_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError(
                    "cluster_secret and cluster_secret_file exclude each other".into(),
                ));
            }
            (Some(secret), None) => Some(secret),
            (None, Some(file)) => {
                let file = existing_file("cluster_secret_file", file)?;
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| ConfigError::invalid("cluster_secret_file", file.display(), &e.to_string()))?;
                Some(text.trim_end_matches(['\r', '\n']).to_owned())
            }
            (None, None) => None,
        };
        if let Some(secret) = &secret
            && secret.len() < MIN_SECRET
        {
            return Err(ConfigError(format!(
                "invalid cluster_secret: {} bytes, at least {MIN_SECRET} are needed (e.g. `openssl rand -hex 32`)",
                secret.len()
            )));
        }
        let shared_headers = match self.shared_headers {
            None => crate::cluster::DEFAULT_SHARED_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect(),
            Some(names) => names
                .into_iter()
                .map(|name| {
                    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                    if name.is_empty() || !name.bytes().all(token) {
                        return Err(ConfigError::invalid(
                            "cluster_shared_headers",
                            format!("{name:?}"),
                            "header names (HTTP tokens)",
                        ));
                    }
                    Ok(name.to_ascii_lowercase())
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Some(crate::cluster::ClusterConfig {
            url,
            name,
            password_file: self
                .password_file
                .map(|f| existing_file("cluster_password_file", f))
                .transpose()?,
            ca_file,
            secret: secret.map(crate::cluster::Secret),
            shared_headers,
            share_query: self.share_query.unwrap_or(false),
        }))
    }
}

/// Checks a name that ends up in file names, Redis keys and metric labels.
fn plain_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 64 || !name.chars().all(valid) || name.starts_with('.') {
        return Err(ConfigError::invalid(
            key,
            format!("{name:?}"),
            "1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot",
        ));
    }
    Ok(())
}

/// Resolves an `ADDRESS:PORT` setting.
fn address(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| ConfigError::invalid(key, text, "expected ADDRESS:PORT, e.g. 127.0.0.1:9001 or [::]:9001"))
}

fn range(key: &str, value: u64, min: u64, max: u64, unit: &str) -> Result<u64, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            key,
            value,
            &format!("expected {min} to {max} {unit}"),
        ))
    }
}

fn seconds(key: &str, value: u64) -> Result<Duration, ConfigError> {
    range(key, value, 1, 3600, "seconds").map(Duration::from_secs)
}

fn existing_file(key: &str, path: PathBuf) -> Result<PathBuf, ConfigError> {
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(path),
        Ok(_) => Err(ConfigError::invalid(
            key,
            path.display(),
            "expected a file, not a directory",
        )),
        Err(error) => Err(ConfigError::invalid(
            key,
            path.display(),
            &format!("expected an existing, readable file ({error})"),
        )),
    }
}

fn existing_dir(key: &str, path: PathBuf) -> Result<PathBuf, ConfigError> {
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_dir() => Ok(path),
        Ok(_) => Err(ConfigError::invalid(
            key,
            path.display(),
            "expected a directory, not a file",
        )),
        Err(error) => Err(ConfigError::invalid(
            key,
            path.display(),
            &format!("expected an existing directory ({error})"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Validation checks that the plugin file exists; any existing file will do here.
    const PLUGIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

    fn parse(args: &[&str]) -> Options {
        Options::try_parse_from(std::iter::once("host").chain(args.iter().copied())).unwrap()
    }

    fn error_of(options: Options) -> String {
        options.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_follow_the_original_library() {
        let config = parse(&["--plugin", PLUGIN]).validate().unwrap();
        assert_eq!(config.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(config.handshake_timeout, Duration::from_secs(5));
        assert_eq!(config.idle_timeout, Duration::from_secs(5));
        let [route] = &config.routes[..] else {
            panic!("one route")
        };
        assert_eq!((route.name.as_str(), route.path.as_str()), (DEFAULT_ROUTE, "/*"));
        assert_eq!(route.max_payload_size, 524_288);
        assert_eq!(route.max_messages_buffering, 100);
        assert_eq!(route.max_buffered_bytes, 1 << 20);
        assert!(config.prod && config.tls.is_none() && route.compression && route.watch);
        assert_eq!(config.log, "info");
        assert_eq!((config.log_format, config.metrics_listen), (LogFormat::Text, None));
    }

    #[test]
    fn stateless_is_off_by_default_a_flag_or_a_route_key_and_refuses_plugin_dir() {
        let routes = |args: &[&str]| parse(args).validate().unwrap().routes;
        assert!(!routes(&["--plugin", PLUGIN])[0].stateless);
        assert!(routes(&["--plugin", PLUGIN, "--stateless"])[0].stateless);
        assert!(!routes(&["--plugin", PLUGIN, "--stateless", "false"])[0].stateless);
        let file = Options::from_toml(&format!(
            "[[route]]\npath = \"/a\"\nplugin = \"{PLUGIN}\"\nstateless = true\n"
        ));
        assert!(file.unwrap().validate().unwrap().routes[0].stateless);
        let dir = env!("CARGO_MANIFEST_DIR");
        let error = error_of(parse(&["--plugin", PLUGIN, "--stateless", "--plugin-dir", dir]));
        assert!(error.contains("plugin_dir and stateless exclude each other"), "{error}");
    }

    #[test]
    fn flags_override_the_file() {
        let file = Options::from_toml(
            &format!("plugin = \"{PLUGIN}\"\ntimeout = 7\nmax_payload_size = 1000\nprod = false\nallowed_origins = [\"https://a.example\"]\n"),
        )
        .unwrap();
        let config = parse(&["--max-payload-size", "2000", "--no-compression"])
            .merge(file)
            .validate()
            .unwrap();
        let route = &config.routes[0];
        assert_eq!(route.plugin, PathBuf::from(PLUGIN));
        assert_eq!(config.handshake_timeout, Duration::from_secs(7));
        assert_eq!(route.max_payload_size, 2000);
        assert!(!route.compression);
        assert!(!config.prod);
        assert_eq!(config.log, "debug");
        assert_eq!(route.allowed_origins, ["https://a.example"]);
        let config = parse(&["--handshake-timeout", "2"])
            .merge(Options::from_toml(&format!("plugin = \"{PLUGIN}\"\ntimeout = 9")).unwrap());
        let config = config.validate().unwrap();
        assert_eq!(
            (config.handshake_timeout, config.idle_timeout, config.close_timeout),
            (Duration::from_secs(2), Duration::from_secs(9), Duration::from_secs(9))
        );
    }

    #[test]
    fn bad_values_name_the_key_the_value_and_what_is_allowed() {
        let with = |extra: &str| Options::from_toml(&format!("plugin = \"{PLUGIN}\"\n{extra}")).unwrap();
        assert_eq!(
            error_of(with("timeout = 0")),
            "invalid timeout = 0: expected 1 to 3600 seconds"
        );
        assert_eq!(
            error_of(with("max_payload_size = 0")),
            "invalid max_payload_size = 0: expected 1 to 4294967296 bytes"
        );
        assert!(error_of(with("listen = \"nowhere\"")).starts_with("invalid listen = nowhere: expected ADDRESS:PORT"));
        assert!(error_of(with("server_max_window_bits = 8")).starts_with("invalid server_max_window_bits = 8"));
        assert!(error_of(with("allowed_origins = [\"example.com\"]")).contains("scheme://host"));
        assert!(error_of(with("write_masked = true")).contains("RFC 6455 section 5.1 forbids"));
        assert!(error_of(with("ssl = true")).starts_with("ssl = true needs cert_file"));
        assert!(
            error_of(with("cert_file = \"/nonexistent.pem\"\nssl = true"))
                .starts_with("invalid cert_file = /nonexistent.pem")
        );
        assert!(error_of(with("static = \"/nonexistent\"")).starts_with("invalid static = /nonexistent"));
        assert!(error_of(Options::default()).starts_with("no plugin"));
        assert!(error_of(with("log_format = \"xml\"")).starts_with("invalid log_format = \"xml\""));
        assert_eq!(
            error_of(with("threads = 0")),
            "invalid threads = 0: expected 1 to 1024 threads"
        );
        assert!(error_of(with("metrics_listen = \"x\"")).starts_with("invalid metrics_listen = x"));
        let unknown = Options::from_toml("plugin = \"p\"\nmax_payload = 3")
            .unwrap_err()
            .to_string();
        assert!(
            unknown.starts_with("invalid max_payload = 3 (line 2): unknown field `max_payload`"),
            "{unknown}"
        );
        assert!(!unknown.contains('\n'));
        let wrong_type = Options::from_toml("timeout = \"soon\"").unwrap_err().to_string();
        assert!(
            wrong_type.starts_with("invalid timeout = \"soon\" (line 1): invalid type"),
            "{wrong_type}"
        );
        let missing = parse(&["--plugin", "/nonexistent/p.wasm"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(missing.starts_with("invalid plugin = /nonexistent/p.wasm"), "{missing}");
    }

    #[test]
    fn cluster_needs_a_redis_url_and_a_plain_name() {
        let config = parse(&["--plugin", PLUGIN]).validate().unwrap();
        assert_eq!(config.cluster, None);
        let config = parse(&["--plugin", PLUGIN, "--cluster", "redis://127.0.0.1:6390"])
            .validate()
            .unwrap();
        assert_eq!(
            config.cluster,
            Some(crate::cluster::ClusterConfig::new("redis://127.0.0.1:6390", "wsplug"))
        );
        let file = Options::from_toml(&format!(
            "plugin = \"{PLUGIN}\"\ncluster = \"redis://a:6379\"\ncluster_name = \"chat-eu-1\""
        ))
        .unwrap();
        let config = parse(&["--cluster-name", "chat_2"]).merge(file).validate().unwrap();
        assert_eq!(config.cluster.unwrap().name, "chat_2");
        let error = error_of(parse(&["--plugin", PLUGIN, "--cluster", "http://:pw@x"]));
        assert!(
            error.starts_with("invalid cluster = \"http://***@x\": a redis:// URL"),
            "{error}"
        );
        assert!(!error.contains("pw"), "{error}");
        let tls = parse(&["--plugin", PLUGIN, "--cluster", "rediss://x:6380"])
            .validate()
            .unwrap();
        assert_eq!(tls.cluster.unwrap().url, "rediss://x:6380");
        // A route's cluster is NAME.ROUTE: a dot in a cluster's name could make two meet.
        for name in ["", "a b", "a:b", "chat.eu", &"x".repeat(65)] {
            let error = error_of(parse(&[
                "--plugin",
                PLUGIN,
                "--cluster",
                "redis://x",
                "--cluster-name",
                name,
            ]));
            assert!(error.starts_with("invalid cluster_name"), "{error}");
        }
        let error = error_of(parse(&["--plugin", PLUGIN, "--cluster-name", "chat"]));
        assert!(error.contains("needs cluster"), "{error}");
    }

    #[test]
    fn cluster_secrets_passwords_and_shared_headers() {
        let with = |extra: &[&str]| {
            let mut args = vec!["--plugin", PLUGIN, "--cluster", "redis://x"];
            args.extend_from_slice(extra);
            parse(&args)
        };
        let config = with(&[]).validate().unwrap().cluster.unwrap();
        assert_eq!(config.secret, None);
        assert_eq!(config.shared_headers, crate::cluster::DEFAULT_SHARED_HEADERS);
        assert!(!config.share_query);
        let short = error_of(with(&["--cluster-secret", "short"]));
        assert!(short.contains("at least 16") && !short.contains("short\""), "{short}");
        let secret = "0123456789abcdef";
        let config = with(&["--cluster-secret", secret, "--cluster-shared-header", "X-User"])
            .validate()
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(config.secret, Some(crate::cluster::Secret(secret.into())));
        assert_eq!(config.shared_headers, ["x-user"]);
        assert!(!format!("{config:?}").contains(secret));
        // From a file, its line end dropped; not both.
        let file = std::env::temp_dir().join(format!("wsplug-secret-test-{}", std::process::id()));
        std::fs::write(&file, format!("{secret}\n")).unwrap();
        let path = file.to_str().unwrap();
        let config = with(&["--cluster-secret-file", path])
            .validate()
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(config.secret, Some(crate::cluster::Secret(secret.into())));
        let both = error_of(with(&["--cluster-secret-file", path, "--cluster-secret", secret]));
        assert!(both.contains("exclude each other"), "{both}");
        std::fs::remove_file(&file).unwrap();
        assert!(error_of(with(&["--cluster-ca-file", PLUGIN])).contains("needs a rediss://"));
        assert!(error_of(with(&["--cluster-shared-header", "a b"])).starts_with("invalid cluster_shared_headers"));
        let lonely = error_of(parse(&["--plugin", PLUGIN, "--cluster-secret", secret]));
        assert!(lonely.starts_with("cluster_secret needs cluster"), "{lonely}");
    }

    #[test]
    fn routes_take_the_top_level_keys_as_defaults_and_must_not_collide() {
        let config = Options::from_toml(&format!(
            "plugin = \"{PLUGIN}\"\nmax_payload_size = 1000\nplugin_deadline_ms = 50\n\
             [[route]]\npath = \"/chat\"\nplugin = \"{PLUGIN}\"\nmax_connections = 5\n\
             [[route]]\npath = \"/api/v1/*\"\nplugin = \"{PLUGIN}\"\nmax_payload_size = 64\ncompression = false\n"
        ))
        .unwrap()
        .validate()
        .unwrap();
        let summary: Vec<_> = config
            .routes
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.path.as_str(),
                    r.max_payload_size,
                    r.max_connections,
                    r.compression,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("chat", "/chat", 1000, Some(5), true),
                ("api.v1", "/api/v1/*", 64, None, false),
                (DEFAULT_ROUTE, "/*", 1000, None, true),
            ]
        );
        assert!(
            config
                .routes
                .iter()
                .all(|r| r.plugin_deadline == Duration::from_millis(50))
        );

        let routes = |tables: &str| {
            Options::from_toml(tables)
                .map_err(|e| e.to_string())
                .and_then(|o| o.validate().map_err(|e| e.to_string()))
        };
        let route = |path: &str| format!("[[route]]\npath = \"{path}\"\nplugin = \"{PLUGIN}\"\n");
        let error = routes(&format!("{}{}", route("/a"), route("/a"))).unwrap_err();
        assert!(error.contains("two routes are named \"a\""), "{error}");
        let error = routes(&format!("{}name = \"b\"\n{}", route("/a"), route("/a"))).unwrap_err();
        assert!(error.contains("two routes serve \"/a\""), "{error}");
        for bad in ["chat", "/a*", "/a/*/b", "/a?x", "/a b", "/%41"] {
            let error = routes(&route(bad)).unwrap_err();
            assert!(error.starts_with("[[route]] 1: invalid path"), "{bad}: {error}");
        }
        let error = routes(&route("/")).unwrap_err();
        assert!(error.contains("give it a name"), "{error}");
        let error = routes("[[route]]\npath = \"/a\"\n").unwrap_err();
        assert!(error.contains("needs plugin"), "{error}");
        let error = routes(&format!("{}max_payload = 1\n", route("/a"))).unwrap_err();
        assert!(error.contains("unknown field `max_payload`"), "{error}");
    }

    #[test]
    fn a_request_goes_to_the_exact_path_then_the_longest_prefix() {
        let rank = |pattern: &str, path: &str| RoutePath::parse(pattern).unwrap().rank(path);
        assert_eq!(rank("/chat", "/chat"), Some(usize::MAX));
        assert_eq!(rank("/chat", "/chat/x"), None);
        assert_eq!(rank("/chat/*", "/chat"), Some(5));
        assert_eq!(rank("/chat/*", "/chat/room/1"), Some(5));
        assert_eq!(rank("/chat/*", "/chatroom"), None);
        assert_eq!(rank("/*", "/anything"), Some(0));
        assert!(rank("/a/b/*", "/a/b/c") > rank("/a/*", "/a/b/c"));
    }
}
