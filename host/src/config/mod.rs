//! Configuration: a TOML file (`--config`) and command-line flags, merged (flags win)
//! and validated into the settings the server runs with. Every bad value is an error
//! that names the key, the value and what is allowed.
//!
//! - `options`: the settings as given ([`Options`], [`RouteOptions`]), generated with
//!   their merge and inheritance from one list of keys.
//! - `validate`: the checks, and the defaults, which the subsystems' own `Default`
//!   impls give wherever a subsystem has the setting.
//! - `cluster`: the cluster keys, which only a cluster needs.
//!
//! What it yields, [`Config`], is made of the subsystems' own settings types: it sits
//! above every subsystem, and none imports it.

mod cluster;
mod options;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;

pub use options::{Command, Options, RouteOptions};

use crate::plugin::PluginLimits;
use crate::server::outbound::OutboundLimits;
use crate::server::registry::SharedStateLimits;
use crate::server::route_path::RoutePath;
use crate::server::tls::TlsFiles;
use crate::store::Quota;
use crate::ws::handshake::HandshakeConfig;

/// A configuration error: reported as `host: error: ...` with exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn invalid(key: &str, value: impl std::fmt::Display, allowed: &str) -> Self {
        Self(format!("invalid {key} = {value}: {allowed}"))
    }
}

/// A validated route.
#[derive(Clone, Debug)]
pub struct RouteConfig {
    /// The paths it serves.
    pub path: RoutePath,
    /// Its name: `default` for the one `plugin` (`--plugin`) sets.
    pub name: String,
    /// Open connections of this route at most, if it has its own bound.
    pub max_connections: Option<usize>,
    /// Largest message, after reassembly and inflation.
    pub max_message_size: usize,
    /// How its handshakes are answered: subprotocols, origins, compression.
    pub handshake: HandshakeConfig,
    /// What may wait for a client whose socket takes no more.
    pub outbound: OutboundLimits,
    /// Its plugin.
    pub plugin: PluginConfig,
}

/// A route's plugin and how it is run.
#[derive(Clone, Debug)]
pub struct PluginConfig {
    /// The plugin file.
    pub file: PathBuf,
    /// Its CPU deadline, memory cap and queue.
    pub limits: PluginLimits,
    /// A directory granted to the plugin, read-only.
    pub data_dir: Option<PathBuf>,
    /// What it may keep in its key-value store (the file store's; Redis has none).
    pub store_quota: Quota,
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listening address.
    pub listen: SocketAddr,
    /// Where `/metrics` is served apart from the WebSocket port, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The plugins and the paths they serve, in the order given (`plugin`'s last).
    pub routes: Vec<RouteConfig>,
    /// What every connection gets, whatever its route: timeouts, bounds, production mode.
    pub server: crate::server::Settings,
    /// WSS, when on.
    pub tls: Option<TlsFiles>,
    /// Static files root.
    pub static_dir: Option<PathBuf>,
    /// The runtime's threads, or `None` for one per core.
    pub threads: Option<usize>,
    /// Compiled-plugin cache, or `None` when off.
    pub cache_dir: Option<PathBuf>,
    /// The key-value store's directory (of the route named [`DEFAULT_ROUTE`]; the others
    /// have a directory of their name in it).
    pub store_dir: PathBuf,
    /// The cluster this host joins, if any.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Bounds of the groups and attachments the connections hold.
    pub shared_state: SharedStateLimits,
    /// Log filter.
    pub log: String,
    /// Log line format.
    pub log_format: LogFormat,
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
}

#[cfg(test)]
mod tests;
