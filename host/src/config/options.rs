//! The settings as given: [`Options`] (the command line, and a file's top level) and
//! [`RouteOptions`] (a `[[route]]` table of the file). The keys that both take are listed
//! once, in the `route_keys` part of the `settings!` invocation below, which generates
//! their fields in both structs, the inheritance of a route from the top level, and the
//! merge of the flags over the file: a new route key is one entry there, and its check
//! and default in `validate.rs`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Deserialize;

/// Defines [`Options`] from its own fields and the route keys, and [`RouteOptions`]
/// from the route keys and the keys only a route has, with `Options::merge`,
/// `Options::route_defaults` and `RouteOptions::or` over every field they list.
macro_rules! settings {
    (
        options {
            $( $(#[$meta:meta])* pub $field:ident : $ty:ty, )*
        }
        route_keys {
            $( $(#[doc = $doc:literal])* #[arg($($arg:tt)*)] $key:ident : $key_ty:ty, )*
        }
    ) => {
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
            $( $(#[$meta])* pub $field: $ty, )*
            $(
                $(#[doc = $doc])*
                #[arg(help_heading = ROUTE_KEYS_HEADING, $($arg)*)]
                pub $key: Option<$key_ty>,
            )*
        }

        /// A `[[route]]` table: a plugin and the paths it serves. Keys it does not give take
        /// the value of the top-level key of the same name (all but `max_connections`, which
        /// at the top level bounds the whole host).
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
            /// Open connections of this route at most (besides the host's `max_connections`).
            pub max_connections: Option<u64>,
            $( $(#[doc = $doc])* pub $key: Option<$key_ty>, )*
        }

        impl Options {
            /// Fills every setting not given here (on the command line) from `file`.
            pub fn merge(self, file: Options) -> Options {
                let cli = self.negations_applied();
                Options {
                    $( $field: Merge::merge(cli.$field, file.$field), )*
                    $( $key: cli.$key.or(file.$key), )*
                }
            }

            /// The route keys given at the top level: the defaults of every route.
            pub(super) fn route_defaults(&self) -> RouteOptions {
                RouteOptions {
                    $( $key: self.$key.clone(), )*
                    ..RouteOptions::default()
                }
            }
        }

        impl RouteOptions {
            /// Fills every route key not given here from `defaults`.
            pub(super) fn or(self, defaults: &RouteOptions) -> RouteOptions {
                RouteOptions {
                    $( $key: self.$key.or_else(|| defaults.$key.clone()), )*
                    ..self
                }
            }
        }
    };
}

/// Where `--help` lists the route keys.
const ROUTE_KEYS_HEADING: &str = "Route settings (also keys of each [[route]] table, whose default they are)";

settings! {
    options {
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

        /// Open connections at most; handshakes past it get 503 [default: 10000]
        #[arg(long, value_name = "N")]
        pub max_connections: Option<u64>,

        /// Same as --compression false
        #[arg(long, conflicts_with = "compression", help_heading = ROUTE_KEYS_HEADING)]
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

        /// Same as --watch false
        #[arg(long, conflicts_with = "watch", help_heading = ROUTE_KEYS_HEADING)]
        #[serde(skip)]
        pub no_watch: bool,

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
    route_keys {
        /// Largest message in bytes, after reassembly and inflation; larger ones get close code 1009 [default: 524288]
        #[arg(long, value_name = "BYTES")]
        max_payload_size: u64,

        /// Messages that may wait for a client whose socket takes no more; past it the client is dropped (1008) [default: 100]
        #[arg(long, value_name = "N")]
        max_messages_buffering: u64,

        /// Bytes that may wait for a client whose socket takes no more; past it the client is dropped (1008) [default: 1 MiB or twice max_payload_size, whichever is larger]
        #[arg(long, value_name = "BYTES")]
        max_buffered_bytes: u64,

        /// An Origin allowed to connect (repeatable); others get 403 [default: any]
        #[arg(long = "allowed-origin", value_name = "ORIGIN")]
        allowed_origins: Vec<String>,

        /// A subprotocol the server speaks (repeatable); the first one a client offers is selected
        #[arg(long = "subprotocol", value_name = "NAME")]
        subprotocols: Vec<String>,

        /// Negotiate permessage-deflate [default: true]
        #[arg(long, value_name = "BOOL")]
        compression: bool,

        /// CPU time in milliseconds one plugin call may take before it is interrupted [default: 500]
        #[arg(long, value_name = "MS")]
        plugin_deadline_ms: u64,

        /// Largest linear memory of a plugin instance, in MiB [default: 64, 128 for a JavaScript plugin, whose garbage collector needs the room]
        #[arg(long, value_name = "MIB")]
        plugin_memory_mib: u64,

        /// Events that may wait for the plugin; when full, connections stop reading [default: 1024]
        #[arg(long, value_name = "N")]
        plugin_queue: u64,

        /// A directory the plugin may read, mounted at /data inside it [default: none]
        #[arg(long, value_name = "DIR")]
        plugin_dir: PathBuf,

        /// Keys the plugin may keep in its key-value store; past it a write gets a quota error [default: 1000000]
        #[arg(long, value_name = "N")]
        store_max_keys: u64,

        /// Bytes of keys and values the plugin may keep in its key-value store; past it a write gets a quota error [default: 1073741824]
        #[arg(long, value_name = "BYTES")]
        store_max_bytes: u64,

        /// Reload the plugin when its file changes (SIGHUP always reloads) [default: true]
        #[arg(long, value_name = "BOOL")]
        watch: bool,

        /// The plugin keeps nothing between calls: call it on each connection's own thread,
        /// an instance per thread, instead of on one plugin thread [default: false]
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
        stateless: bool,
    }
}

impl Options {
    /// `--no-compression` and the like, as the settings they negate.
    fn negations_applied(self) -> Options {
        Options {
            compression: if self.no_compression {
                Some(false)
            } else {
                self.compression
            },
            cache: if self.no_cache { Some(false) } else { self.cache },
            watch: if self.no_watch { Some(false) } else { self.watch },
            no_compression: false,
            no_cache: false,
            no_watch: false,
            ..self
        }
    }
}

/// How a setting given on the command line combines with the file's.
trait Merge {
    fn merge(self, file: Self) -> Self;
}

impl<T> Merge for Option<T> {
    /// The command line's, if given.
    fn merge(self, file: Self) -> Self {
        self.or(file)
    }
}

impl Merge for bool {
    /// A `--no-...` switch; already applied to the setting it negates.
    fn merge(self, _file: Self) -> Self {
        self
    }
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
