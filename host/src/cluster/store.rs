//! The plugins' key-value store, served by the cluster's Redis server, so that every
//! host of a cluster sees the same keys.
//!
//! A value is a Redis string `{name}:kv:{namespace length}:{namespace}:{key}` (with `PX`
//! for a time to live); each namespace keeps its keys in a sorted set
//! `{name}:kvidx:{namespace length}:{namespace}` (every score 0, so the set is in byte
//! order) that `list_keys` pages through with `ZRANGEBYLEX`. A set or a delete changes
//! both in one `MULTI`; keys that expired are taken out of the index when a listing
//! meets them.

use std::sync::Arc;
use std::time::Duration;

use super::calls::RedisCalls;
use crate::store::{KeyValue, StoreError, check_sizes};

/// Removes from the index (`KEYS[1]`) each key (`ARGV[i]`) whose value (`KEYS[i + 1]`)
/// is gone.
const PRUNE: &str = "for i, key in ipairs(ARGV) do \
    if redis.call('EXISTS', KEYS[i + 1]) == 0 then redis.call('ZREM', KEYS[1], key) end \
end";

/// The store of cluster `name`, over its Redis connection.
pub struct RedisStore {
    calls: Arc<RedisCalls>,
    name: String,
}

/// How long a store call waits for Redis.
const TIMEOUT: Duration = Duration::from_secs(2);

impl RedisStore {
    /// A store whose commands `calls` runs.
    pub fn new(calls: Arc<RedisCalls>, name: &str) -> Self {
        Self {
            calls,
            name: name.to_owned(),
        }
    }

    fn value_key(&self, namespace: &str, key: &str) -> String {
        format!("{}:kv:{}:{namespace}:{key}", self.name, namespace.len())
    }

    fn index_key(&self, namespace: &str) -> String {
        format!("{}:kvidx:{}:{namespace}", self.name, namespace.len())
    }

    /// Runs `command` against Redis, waiting for it on the calling thread (the plugin's,
    /// or a connection's for a stateless plugin).
    fn run<T: redis::FromRedisValue + Send + 'static>(&self, command: redis::Pipeline) -> Result<T, StoreError> {
        self.calls
            .query(command, TIMEOUT)
            .map_err(|error| StoreError::Unavailable(format!("Redis: {error}")))
    }
}

impl KeyValue for RedisStore {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.value_key(namespace, key));
        let (value,): (Option<Vec<u8>>,) = self.run(pipe)?;
        Ok(value)
    }

    fn set(&self, namespace: &str, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        check_sizes(key, Some(value))?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let set = pipe.cmd("SET").arg(self.value_key(namespace, key)).arg(value);
        if let Some(ttl) = ttl {
            set.arg("PX").arg((ttl.as_millis() as u64).max(1));
        }
        set.ignore();
        pipe.cmd("ZADD").arg(self.index_key(namespace)).arg(0).arg(key).ignore();
        self.run(pipe)
    }

    fn delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL").arg(self.value_key(namespace, key));
        pipe.cmd("ZREM").arg(self.index_key(namespace)).arg(key).ignore();
        let (deleted,): (u32,) = self.run(pipe)?;
        Ok(deleted > 0)
    }

    fn list_keys(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let index = self.index_key(namespace);
        // Lexicographic bounds: `[x` includes x, `(x` excludes it; no key holds 0xff
        // (UTF-8 never does), so `[prefix 0xff` ends the keys starting with `prefix`.
        let mut low: Vec<u8> = match after {
            Some(after) if after >= prefix => [b"(", after.as_bytes()].concat(),
            _ => [b"[", prefix.as_bytes()].concat(),
        };
        let high: Vec<u8> = if prefix.is_empty() {
            b"+".to_vec()
        } else {
            [b"[", prefix.as_bytes(), b"\xff"].concat()
        };
        // At most as many as the file store gives: a plugin cannot make one call read a
        // whole namespace.
        let limit = limit.min(crate::store::MAX_LIST);
        let mut keys = Vec::new();
        while (keys.len() as u32) < limit {
            let wanted = limit - keys.len() as u32;
            let mut pipe = redis::pipe();
            pipe.cmd("ZRANGEBYLEX")
                .arg(&index)
                .arg(&low)
                .arg(&high)
                .arg("LIMIT")
                .arg(0)
                .arg(wanted);
            let (candidates,): (Vec<String>,) = self.run(pipe)?;
            let Some(last) = candidates.last() else {
                break;
            };
            low = [b"(", last.as_bytes()].concat();
            // Which still have a value (the others expired).
            let mut pipe = redis::pipe();
            for key in &candidates {
                pipe.cmd("EXISTS").arg(self.value_key(namespace, key));
            }
            let live: Vec<bool> = self.run(pipe)?;
            let complete = candidates.len() as u32 == wanted;
            let mut expired = Vec::new();
            for (key, live) in candidates.into_iter().zip(live) {
                if live {
                    keys.push(key);
                } else {
                    expired.push(key);
                }
            }
            if !expired.is_empty() {
                // In one script, so that a key set again meanwhile stays listed.
                let mut pipe = redis::pipe();
                let prune = pipe.cmd("EVAL").arg(PRUNE).arg(1 + expired.len()).arg(&index);
                for key in &expired {
                    prune.arg(self.value_key(namespace, key));
                }
                prune.arg(&expired).ignore();
                self.run::<()>(pipe)?;
            }
            if !complete {
                break;
            }
        }
        Ok(keys)
    }
}
