//! The checks of every setting, and their defaults: where a subsystem has the setting,
//! its own `Default` impl gives it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::cluster::ClusterOptions;
use super::{Config, ConfigError, DEFAULT_ROUTE, LogFormat, Options, PluginConfig, RouteConfig, RouteOptions};
use crate::plugin::PluginLimits;
use crate::server::outbound::OutboundLimits;
use crate::server::per_ip::PerIpLimits;
use crate::server::registry::SharedStateLimits;
use crate::server::route_path::RoutePath;
use crate::server::tls::TlsFiles;
use crate::server::{DEFAULT_MAX_MESSAGE_SIZE, Settings};
use crate::store::Quota;
use crate::ws::deflate::DeflateConfig;
use crate::ws::handshake::HandshakeConfig;

/// The most bytes of group names one connection may hold: they travel to the other
/// hosts in one message.
const MAX_GROUPS_BYTES: usize = 4 << 20;

impl Options {
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
        let defaults = Settings::default();
        let metrics_here = self.serve_metrics.unwrap_or(defaults.metrics_here);
        if metrics_here && metrics_listen.is_some() {
            return Err(ConfigError(
                "serve_metrics and metrics_listen exclude each other: metrics_listen serves /metrics on an address of its own".into(),
            ));
        }
        let shared_state = self.shared_state()?;
        let timeout = self.timeout.map(|s| seconds("timeout", s)).transpose()?;
        let timeout_of = |key: &str, given: Option<u64>, default: Duration| match given {
            Some(s) => seconds(key, s),
            None => Ok(timeout.unwrap_or(default)),
        };
        let prod = self.prod.unwrap_or(defaults.prod);
        let server = Settings {
            handshake_timeout: timeout_of("handshake_timeout", self.handshake_timeout, defaults.handshake_timeout)?,
            idle_timeout: timeout_of("idle_timeout", self.idle_timeout, defaults.idle_timeout)?,
            close_timeout: timeout_of("close_timeout", self.close_timeout, defaults.close_timeout)?,
            max_connections: bounded(
                "max_connections",
                self.max_connections,
                defaults.max_connections,
                1,
                10_000_000,
                "connections",
            )?,
            prod,
            metrics_here,
            backlog: optional("backlog", self.backlog, 1 << 20, "connections")?,
            per_ip: self.per_ip()?,
            shutdown_grace: Duration::from_secs(bounded(
                "shutdown_grace",
                self.shutdown_grace,
                defaults.shutdown_grace.as_secs() as usize,
                0,
                3600,
                "seconds",
            )? as u64),
        };
        let routes = self.routes(self.deflate()?)?;
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
        let cache_dir = if self.cache.unwrap_or(true) {
            self.cache_dir.or_else(crate::plugin::loader::default_cache_dir)
        } else {
            None
        };
        let log_format = match self.log_format.as_deref() {
            None => LogFormat::default(),
            Some("text") => LogFormat::Text,
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
            metrics_listen,
            routes,
            server,
            tls,
            static_dir,
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
            shared_state,
            log: self
                .log
                .unwrap_or_else(|| if prod { "info".into() } else { "debug".into() }),
            log_format,
        })
    }

    /// The bounds per client address: none unless given.
    fn per_ip(&self) -> Result<PerIpLimits, ConfigError> {
        Ok(PerIpLimits {
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
        })
    }

    /// The bounds of the groups and attachments a route's connections hold.
    fn shared_state(&self) -> Result<SharedStateLimits, ConfigError> {
        let defaults = SharedStateLimits::default();
        let limits = SharedStateLimits {
            max_groups: bounded(
                "max_groups_per_connection",
                self.max_groups_per_connection,
                defaults.max_groups,
                1,
                1 << 20,
                "groups",
            )?,
            max_group_name: bounded(
                "max_group_name",
                self.max_group_name,
                defaults.max_group_name,
                1,
                1 << 20,
                "bytes",
            )?,
            max_bytes: bounded(
                "max_shared_state",
                self.max_shared_state,
                defaults.max_bytes,
                1 << 16,
                1 << 32,
                "bytes",
            )?,
        };
        if limits.max_groups * limits.max_group_name > MAX_GROUPS_BYTES {
            return Err(ConfigError(format!(
                "max_groups_per_connection ({}) times max_group_name ({}) is over {} MiB: what one \
                 connection's groups may take in one cluster message",
                limits.max_groups,
                limits.max_group_name,
                MAX_GROUPS_BYTES >> 20
            )));
        }
        Ok(limits)
    }

    /// The permessage-deflate parameters of the routes that negotiate it.
    fn deflate(&self) -> Result<DeflateConfig, ConfigError> {
        let defaults = DeflateConfig::default();
        let bits = |key: &str, given: Option<u8>, default: u8| {
            bounded(key, given.map(u64::from), default.into(), 9, 15, "bits").map(|n| n as u8)
        };
        Ok(DeflateConfig {
            server_max_window_bits: bits(
                "server_max_window_bits",
                self.server_max_window_bits,
                defaults.server_max_window_bits,
            )?,
            client_max_window_bits: bits(
                "client_max_window_bits",
                self.client_max_window_bits,
                defaults.client_max_window_bits,
            )?,
            level: bounded(
                "compression_level",
                self.compression_level.map(u64::from),
                defaults.level as usize,
                0,
                9,
                "(zlib level)",
            )? as u32,
        })
    }

    /// The routes: every `[[route]]`, then the one `plugin` gives (named
    /// [`DEFAULT_ROUTE`], serving `/*`), each completed with the top-level keys.
    fn routes(&self, deflate: DeflateConfig) -> Result<Vec<RouteConfig>, ConfigError> {
        let defaults = self.route_defaults();
        let tables = self.route.iter().flatten().cloned().enumerate();
        let mut routes = tables
            .map(|(i, route)| route.or(&defaults).validate(Some(i), deflate))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(plugin) = &self.plugin {
            let shorthand = RouteOptions {
                path: Some("/*".into()),
                plugin: Some(plugin.clone()),
                name: Some(DEFAULT_ROUTE.into()),
                ..RouteOptions::default()
            };
            routes.push(shorthand.or(&defaults).validate(None, deflate)?);
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

impl RouteOptions {
    /// Checks every value and applies the defaults; `deflate` is what compression
    /// negotiates. Errors of the route at `index` name it.
    fn validate(self, index: Option<usize>, deflate: DeflateConfig) -> Result<RouteConfig, ConfigError> {
        let within = |error: ConfigError| match index {
            Some(i) => ConfigError(format!("[[route]] {}: {}", i + 1, error.0)),
            None => error,
        };
        self.validate_keys(deflate).map_err(within)
    }

    fn validate_keys(self, deflate: DeflateConfig) -> Result<RouteConfig, ConfigError> {
        let text = self.path.as_deref().unwrap_or("/*");
        let path = RoutePath::parse(text)
            .map_err(|why| ConfigError::invalid("path", format!("{text:?}"), &why.to_string()))?;
        let file = self
            .plugin
            .ok_or_else(|| ConfigError("a route needs plugin = \"FILE\"".into()))?;
        let file = existing_file("plugin", file)?;
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
        let max_message_size = bounded(
            "max_payload_size",
            self.max_payload_size,
            DEFAULT_MAX_MESSAGE_SIZE,
            1,
            1 << 32,
            "bytes",
        )?;
        let outbound_defaults = OutboundLimits::default();
        let outbound = OutboundLimits {
            max_messages: bounded(
                "max_messages_buffering",
                self.max_messages_buffering,
                outbound_defaults.max_messages,
                1,
                1_000_000,
                "messages",
            )?,
            // At least two messages of the largest size may wait.
            max_bytes: bounded(
                "max_buffered_bytes",
                self.max_buffered_bytes,
                outbound_defaults.max_bytes.max(2 * max_message_size),
                1024,
                1 << 40,
                "bytes",
            )?,
        };
        let max_connections = self
            .max_connections
            .map(|n| range("max_connections", n, 1, 10_000_000, "connections").map(|n| n as usize))
            .transpose()?;
        let handshake_defaults = HandshakeConfig::default();
        let handshake = HandshakeConfig {
            subprotocols: subprotocols(self.subprotocols.unwrap_or_default())?,
            deflate: self
                .compression
                .unwrap_or(handshake_defaults.deflate.is_some())
                .then_some(deflate),
            allowed_origins: origins(self.allowed_origins.unwrap_or_default())?,
            ..handshake_defaults
        };
        let plugin_defaults = PluginLimits::default();
        let limits = PluginLimits {
            deadline: Duration::from_millis(bounded(
                "plugin_deadline_ms",
                self.plugin_deadline_ms,
                plugin_defaults.deadline.as_millis() as usize,
                10,
                60_000,
                "milliseconds",
            )? as u64),
            memory_bytes: match self.plugin_memory_mib {
                Some(mib) => Some((range("plugin_memory_mib", mib, 1, 4096, "MiB")? as usize) << 20),
                None => plugin_defaults.memory_bytes,
            },
            queue_len: bounded(
                "plugin_queue",
                self.plugin_queue,
                plugin_defaults.queue_len,
                1,
                1_000_000,
                "events",
            )?,
        };
        let quota_defaults = Quota::default();
        let stateless = self.stateless.unwrap_or(false);
        if self.plugin_dir.is_some() && stateless {
            return Err(ConfigError(
                "plugin_dir and stateless exclude each other: a stateless plugin runs on the \
                 connections' threads, where reading a file would block them"
                    .into(),
            ));
        }
        Ok(RouteConfig {
            path,
            name,
            max_connections,
            max_message_size,
            handshake,
            outbound,
            plugin: PluginConfig {
                file,
                limits,
                data_dir: self.plugin_dir.map(|d| existing_dir("plugin_dir", d)).transpose()?,
                store_quota: Quota {
                    max_keys: bounded_u64(
                        "store_max_keys",
                        self.store_max_keys,
                        quota_defaults.max_keys,
                        1,
                        1 << 40,
                        "keys",
                    )?,
                    max_bytes: bounded_u64(
                        "store_max_bytes",
                        self.store_max_bytes,
                        quota_defaults.max_bytes,
                        1,
                        1 << 50,
                        "bytes",
                    )?,
                },
                watch: self.watch.unwrap_or(true),
                stateless,
            },
        })
    }
}

/// Checks `allowed_origins`: whole origins, no paths.
fn origins(origins: Vec<String>) -> Result<Vec<String>, ConfigError> {
    for origin in &origins {
        if origin.is_empty() || origin.ends_with('/') || !origin.contains("://") {
            return Err(ConfigError::invalid(
                "allowed_origins",
                format!("{origin:?}"),
                "expected origins like \"https://example.com\" (scheme://host[:port], no path)",
            ));
        }
    }
    Ok(origins)
}

/// Checks `subprotocols`: HTTP tokens.
fn subprotocols(protocols: Vec<String>) -> Result<Vec<String>, ConfigError> {
    for protocol in &protocols {
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
    Ok(protocols)
}

/// A count setting: `given`, which must be within `min..=max`, or else `default`.
fn bounded(
    key: &str,
    given: Option<u64>,
    default: usize,
    min: u64,
    max: u64,
    unit: &str,
) -> Result<usize, ConfigError> {
    match given {
        Some(value) => range(key, value, min, max, unit).map(|n| n as usize),
        None => Ok(default),
    }
}

/// A bound that is off unless given.
fn optional(key: &str, value: Option<u64>, max: u64, unit: &str) -> Result<Option<u32>, ConfigError> {
    value.map(|n| range(key, n, 1, max, unit).map(|n| n as u32)).transpose()
}

/// Checks a name that ends up in file names, Redis keys and metric labels.
pub(super) fn plain_name(key: &str, name: &str) -> Result<(), ConfigError> {
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
pub(super) fn address(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| ConfigError::invalid(key, text, "expected ADDRESS:PORT, e.g. 127.0.0.1:9001 or [::]:9001"))
}

/// [`range`] of a setting given, else `default`.
fn bounded_u64(
    key: &str,
    given: Option<u64>,
    default: u64,
    min: u64,
    max: u64,
    unit: &str,
) -> Result<u64, ConfigError> {
    given.map_or(Ok(default), |value| range(key, value, min, max, unit))
}

pub(super) fn range(key: &str, value: u64, min: u64, max: u64, unit: &str) -> Result<u64, ConfigError> {
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

pub(super) fn seconds(key: &str, value: u64) -> Result<Duration, ConfigError> {
    range(key, value, 1, 3600, "seconds").map(Duration::from_secs)
}

pub(super) fn existing_file(key: &str, path: PathBuf) -> Result<PathBuf, ConfigError> {
    existing(key, path, false)
}

pub(super) fn existing_dir(key: &str, path: PathBuf) -> Result<PathBuf, ConfigError> {
    existing(key, path, true)
}

/// `path`, if it names an existing directory (`dir`) or file.
fn existing(key: &str, path: PathBuf, dir: bool) -> Result<PathBuf, ConfigError> {
    let (what, not, existing) = match dir {
        true => ("directory", "file", "an existing directory"),
        false => ("file", "directory", "an existing, readable file"),
    };
    match std::fs::metadata(&path) {
        Ok(meta) if if dir { meta.is_dir() } else { meta.is_file() } => Ok(path),
        Ok(_) => Err(ConfigError::invalid(
            key,
            path.display(),
            &format!("expected a {what}, not a {not}"),
        )),
        Err(error) => Err(ConfigError::invalid(
            key,
            path.display(),
            &format!("expected {existing} ({error})"),
        )),
    }
}
