//! The cluster keys: a Redis URL, and the rest only with one.

use std::path::PathBuf;

use super::ConfigError;
use super::validate::{existing_file, plain_name};

/// The cluster keys, as given.
pub(super) struct ClusterOptions {
    pub(super) url: Option<String>,
    pub(super) name: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) secret: Option<String>,
    pub(super) secret_file: Option<PathBuf>,
    pub(super) shared_headers: Option<Vec<String>>,
    pub(super) share_query: Option<bool>,
}

/// The shortest cluster secret: 128 bits of an `openssl rand -hex 16`.
const MIN_SECRET: usize = 16;

impl ClusterOptions {
    /// The cluster settings: a Redis URL, and the rest only with one.
    pub(super) fn validate(self) -> Result<Option<crate::cluster::ClusterConfig>, ConfigError> {
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
