//! The plugins' key-value store, served by the cluster's Redis server, so that every
//! host of a cluster sees the same keys.
//!
//! A value is a Redis string `{name}:kv:{namespace length}:{namespace}:{key}` (with `PX`
//! for a time to live); each namespace keeps its keys in a sorted set
//! `{name}:kvidx:{namespace length}:{namespace}` (every score 0, so the set is in byte
//! order) that `list_keys` pages through with `ZRANGEBYLEX`. A set or a delete changes
//! both in one `MULTI`; keys that expired are taken out of the index when a listing
//! meets them.
//!
//! A `set` (or a `remove`) returns once it is given to Redis, without waiting for the
//! answer: it joins the batch of writes whose job waits in line on the calls' thread, or
//! starts one, and a batch goes as one `MULTI`. The commands of a host reach Redis in
//! the order given, on one connection, so every later read sees the write (see
//! [`RedisCalls`]). It is settled ([`Commits`]) when Redis answers, and
//! the plugin runtime's output gate holds what depended on it until then, as for the
//! file store's group commit: a set that Redis refuses, or does not answer in time, is
//! lost for the output that waited for it (though Redis may still apply a set it
//! answers late). A `delete` waits for its answer, which says whether the key was set.
//! Writes may await answers up to [`MAX_UNANSWERED`] and [`MAX_UNANSWERED_BYTES`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::calls::{Answer, RedisCalls};
use crate::blocking::block_here;
use crate::store::{Commits, KeyValue, StoreError, WriteNumber, check_sizes};

/// Removes from the index (`KEYS[1]`) each key (`ARGV[i]`) whose value (`KEYS[i + 1]`)
/// is gone.
const PRUNE: &str = "for i, key in ipairs(ARGV) do \
    if redis.call('EXISTS', KEYS[i + 1]) == 0 then redis.call('ZREM', KEYS[1], key) end \
end";

/// The store of cluster `name`, over its Redis connection.
pub struct RedisStore {
    calls: Arc<RedisCalls>,
    name: String,
    /// How far the writes have got: settled once Redis has answered.
    commits: Arc<Commits>,
    /// Writes given and not sent yet.
    batch: Arc<Mutex<Batch>>,
    /// Answers not settled yet, because an older batch's answer has not come.
    answers: Arc<Mutex<Answers>>,
    /// Bytes of keys and values given and not answered yet.
    unanswered_bytes: Arc<AtomicUsize>,
}

/// How long a store call waits for Redis.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Writes given to Redis and not answered yet, at most, and their bytes: past either a
/// write waits for answers, so that a Redis slower than the plugins' writes bounds their
/// memory.
const MAX_UNANSWERED: WriteNumber = 4096;
const MAX_UNANSWERED_BYTES: usize = 64 << 20;

/// Writes given while the one job that sends them waits in line: that job sends them
/// all as one `MULTI`, so that a burst of writes costs Redis one round trip, and the
/// calls' thread one command.
#[derive(Default)]
struct Batch {
    commands: Option<redis::Pipeline>,
    /// The numbers of its first and last writes.
    first: WriteNumber,
    through: WriteNumber,
    bytes: usize,
}

/// Answers of batches, settled in the order the batches were sent.
#[derive(Default)]
struct Answers {
    /// Every write up to this number is settled.
    through: WriteNumber,
    /// Answers of batches that came before an older one's, by their first write: its
    /// last write and the outcome.
    early: BTreeMap<WriteNumber, (WriteNumber, Result<(), StoreError>)>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Answers {
    /// Notes the answer to the writes `first..=through` and settles, in order, every
    /// write answered from `self.through` on: each run of successes in one settlement,
    /// each failure on its own.
    fn answered(
        &mut self,
        commits: &Commits,
        first: WriteNumber,
        through: WriteNumber,
        outcome: Result<(), StoreError>,
    ) {
        self.early.insert(first, (through, outcome));
        let mut ok_through = None;
        while let Some((through, outcome)) = self.early.remove(&(self.through + 1)) {
            self.through = through;
            match outcome {
                Ok(()) => ok_through = Some(through),
                Err(error) => {
                    if let Some(ok) = ok_through.take() {
                        commits.settle(ok, Ok(()));
                    }
                    commits.settle(through, Err(error));
                }
            }
        }
        if let Some(through) = ok_through {
            commits.settle(through, Ok(()));
        }
    }
}

/// A Redis error as the store's.
fn unavailable(error: String) -> StoreError {
    StoreError::Unavailable(format!("Redis: {error}"))
}

impl RedisStore {
    /// A store whose commands `calls` runs.
    pub fn new(calls: Arc<RedisCalls>, name: &str) -> Self {
        Self {
            calls,
            name: name.to_owned(),
            commits: Commits::new(),
            batch: Arc::default(),
            answers: Arc::default(),
            unanswered_bytes: Arc::default(),
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
        self.calls.query(command, TIMEOUT).map_err(unavailable)
    }

    /// Gives a write of `bytes` (its commands added by `add`) to Redis without waiting
    /// for its answer: it joins the batch in line, or starts one, and is settled when
    /// Redis answers the batch.
    fn give(&self, bytes: usize, add: impl FnOnce(&mut redis::Pipeline)) -> Result<(), StoreError> {
        let newest = self.commits.accepted();
        let oldest_awaited = if self.unanswered_bytes.load(Ordering::Acquire) > MAX_UNANSWERED_BYTES {
            Some(newest)
        } else {
            (newest.saturating_sub(self.commits.settled_through()) >= MAX_UNANSWERED)
                .then(|| newest - MAX_UNANSWERED + 1)
        };
        if let Some(number) = oldest_awaited {
            // Whatever the outcome: this write is not the one that was lost.
            let _ = block_here(|| self.commits.wait(number));
        }
        // Numbers are given, and batches put in line, under this lock: in the order of
        // the writes, ahead of any read made after the write returns.
        let mut batch = lock(&self.batch);
        let number = self.commits.accepted() + 1;
        self.commits.accept(number);
        self.unanswered_bytes.fetch_add(bytes, Ordering::AcqRel);
        let in_line = batch.commands.is_some();
        add(batch.commands.get_or_insert_with(|| {
            let mut pipe = redis::pipe();
            pipe.atomic();
            pipe
        }));
        if !in_line {
            batch.first = number;
        }
        batch.through = number;
        batch.bytes += bytes;
        if in_line {
            return Ok(());
        }
        let (waiting, commits) = (self.batch.clone(), self.commits.clone());
        let (answers, unanswered) = (self.answers.clone(), self.unanswered_bytes.clone());
        let submitted = self.calls.submit_made::<()>(TIMEOUT, move || {
            let taken = std::mem::take(&mut *lock(&waiting));
            let (first, through, bytes) = (taken.first, taken.through, taken.bytes);
            let answer: Answer<()> = Box::new(move |answer| {
                unanswered.fetch_sub(bytes, Ordering::AcqRel);
                lock(&answers).answered(&commits, first, through, answer.map_err(unavailable));
            });
            Some((taken.commands?, answer))
        });
        submitted.map_err(|error| {
            // Nothing will send it: lost.
            let taken = std::mem::take(&mut *batch);
            let error = unavailable(error);
            self.unanswered_bytes.fetch_sub(taken.bytes, Ordering::AcqRel);
            lock(&self.answers).answered(&self.commits, taken.first, taken.through, Err(error.clone()));
            error
        })
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
        self.give(key.len() + value.len(), |pipe| {
            let set = pipe.cmd("SET").arg(self.value_key(namespace, key)).arg(value);
            if let Some(ttl) = ttl {
                set.arg("PX").arg((ttl.as_millis() as u64).max(1));
            }
            set.ignore();
            pipe.cmd("ZADD").arg(self.index_key(namespace)).arg(0).arg(key).ignore();
        })
    }

    fn delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL").arg(self.value_key(namespace, key));
        pipe.cmd("ZREM").arg(self.index_key(namespace)).arg(key).ignore();
        let (deleted,): (u32,) = self.run(pipe)?;
        Ok(deleted > 0)
    }

    fn remove(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        self.give(key.len(), |pipe| {
            pipe.cmd("DEL").arg(self.value_key(namespace, key)).ignore();
            pipe.cmd("ZREM").arg(self.index_key(namespace)).arg(key).ignore();
        })
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
    fn commits(&self) -> Option<Arc<Commits>> {
        Some(self.commits.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_settled_in_the_order_the_batches_were_sent() {
        let commits = Commits::new();
        let mut answers = Answers::default();
        for n in 1..=7 {
            commits.accept(n);
        }
        answers.answered(&commits, 3, 3, Ok(()));
        assert_eq!(commits.settled_through(), 0, "1 and 2 are not answered");
        answers.answered(&commits, 1, 2, Ok(()));
        assert_eq!(commits.settled_through(), 3);
        answers.answered(&commits, 6, 6, Ok(()));
        answers.answered(&commits, 4, 5, Err(StoreError::Unavailable("no answer".into())));
        assert_eq!(commits.settled_through(), 6);
        assert_eq!(commits.wait(3), Ok(()));
        assert!(
            commits.wait(4).is_err() && commits.wait(5).is_err(),
            "4 and 5 were lost"
        );
        assert_eq!(commits.wait(6), Ok(()));
        assert!(commits.unsettled(), "7 is not answered");
    }
}
