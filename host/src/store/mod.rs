//! The plugins' key-value store: [`KeyValue`] is what the plugin runtime calls, one
//! namespace per plugin; [`FileStore`] serves it from an embedded database (redb) in a
//! directory, durable across host restarts, committing writes in groups ([`Commits`]
//! follows them). A shared backend (Redis, for several hosts) implements the same trait:
//! every call names its namespace, keys are listed in byte order a page at a time (what
//! a sorted index, such as a Redis sorted set, gives), and expiry is a time to live per
//! key.

mod commits;
mod file;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use commits::{Commits, Settled, WriteNumber};
pub use file::{FileStore, REOPEN_AFTER};

/// Longest key, in bytes.
pub const MAX_KEY: usize = 1024;
/// Longest value, in bytes.
pub const MAX_VALUE: usize = 1 << 20;
/// Most keys one `list_keys` call returns.
pub const MAX_LIST: u32 = 10_000;

/// Why a store call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A key over [`MAX_KEY`] or a value over [`MAX_VALUE`].
    #[error("key or value too large")]
    TooLarge,
    /// The store could not be read or written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The write would take the namespace past its [`Quota`] (which one is said). A write
    /// that shrinks the namespace, and every delete, is always allowed.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
}

/// How much one namespace (one plugin's data) may hold in a store: keys, and bytes of
/// keys and values together (expired entries count until they are swept out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    /// Keys at most.
    pub max_keys: u64,
    /// Bytes of keys and values at most.
    pub max_bytes: u64,
}

impl Default for Quota {
    /// A million keys and 1 GiB.
    fn default() -> Self {
        Self {
            max_keys: 1_000_000,
            max_bytes: 1 << 30,
        }
    }
}

/// A key-value store shared by plugins, each in its own namespace. Calls block until
/// done: a plugin's events wait for them (and, for a stateless plugin past the bound of
/// [`crate::blocking`], the other connections of its thread). A write is seen by every
/// later read once it returns; it is durable then too, unless the store has
/// [`KeyValue::commits`].
pub trait KeyValue: Send + Sync + 'static {
    /// The value of `key`, if set and not expired.
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key`, expiring after `ttl` if given.
    fn set(&self, namespace: &str, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError>;
    /// Removes `key`; whether it was set (and not expired).
    fn delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError>;
    /// Removes `key` without saying whether it was set: a store may then skip the read,
    /// or the wait for an answer, that [`KeyValue::delete`] needs.
    fn remove(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        self.delete(namespace, key).map(drop)
    }
    /// Up to `limit` live keys starting with `prefix`, in byte order, after `after`.
    fn list_keys(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
    /// For a store whose writes return before they are durable: how far they have got.
    /// `None` (the default): a write is durable when it returns.
    fn commits(&self) -> Option<Arc<Commits>> {
        None
    }
    /// Returns once every write made before the call is durable, or with the error
    /// that lost one of them.
    fn sync(&self) -> Result<(), StoreError> {
        match self.commits() {
            Some(commits) => {
                let newest = commits.accepted();
                crate::blocking::block_here(|| commits.wait(newest))
            }
            None => Ok(()),
        }
    }
}

/// The default directory of the store: `$XDG_DATA_HOME/wsplug` or
/// `~/.local/share/wsplug` (`./wsplug-data` without a home).
pub fn default_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
        .map_or_else(|| PathBuf::from("wsplug-data"), |dir| dir.join("wsplug"))
}

/// Checks a key and an optional value against the limits every backend shares.
pub fn check_sizes(key: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
    if key.len() > MAX_KEY || value.is_some_and(|v| v.len() > MAX_VALUE) {
        return Err(StoreError::TooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        assert_eq!(check_sizes(&"k".repeat(MAX_KEY), Some(&[0; MAX_VALUE])), Ok(()));
        assert_eq!(check_sizes(&"k".repeat(MAX_KEY + 1), None), Err(StoreError::TooLarge));
        assert_eq!(check_sizes("k", Some(&[0; MAX_VALUE + 1])), Err(StoreError::TooLarge));
    }
}
