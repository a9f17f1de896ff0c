//! [`FileStore`]: the key-value store in an embedded database (redb) in a directory,
//! durable across host restarts, with group commit.
//!
//! `set` and `delete` stage the write in memory and return: reads see it at once, and
//! a thread of the store's own commits everything staged in one transaction, then the
//! next batch, so that one fsync serves every write made while the one before ran. What
//! depended on a write is held by the plugin runtime's output gate until the write is
//! settled ([`Commits`]). A commit that fails (a full disk) loses every staged write:
//! reads no longer see them, and the gate is told.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::commits::{Commits, WriteNumber};
use super::{KeyValue, MAX_LIST, Quota, StoreError};
use crate::blocking::block_here;

/// (namespace, key) -> expiry in ms since the epoch (0: never), little-endian, then the value.
const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entries");

/// Bytes of staged writes (keys and values) beyond which a write waits for the commit
/// in progress: the memory bound of a disk slower than the plugins' writes.
const MAX_STAGED: usize = 64 << 20;

/// How long a store whose file could not be opened, or written, answers with that error
/// before it tries again.
pub const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// Every this many writes, the committer also deletes the entries that have expired
/// (staged as deletes, like a plugin's), so that keys set with a time to live do not
/// pile up while the host runs.
const SWEEP_EVERY: u32 = 1024;
/// Expired entries one sweep deletes at most (the next sweep goes on).
const SWEEP_AT_MOST: usize = 10_000;

/// The store in `DIR/store.redb`. The database is opened at the first call, so a host
/// whose plugin never uses the store never touches the directory. A failure to open
/// (another host holds the file, the directory is not writable, the disk is full) is
/// that call's `Unavailable` error, and so is every call's for [`REOPEN_AFTER`], after
/// which a call tries again: an open may repair the whole file, which no call should
/// pay for again at once. A failed commit is handled the same way: redb refuses every
/// later call of a database that met a storage error, so the store drops it and opens
/// the file again once [`REOPEN_AFTER`] has passed, which works once the disk has room.
pub struct FileStore {
    shared: Arc<Shared>,
    /// The committer, and the thread that settles its commits (and so releases the
    /// output that waited for them) while it goes on with the next: started by the
    /// first write, so that a plugin that never writes costs no thread.
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Whether they started (else why not).
    started: std::sync::OnceLock<Result<(), StoreError>>,
}

struct Shared {
    path: PathBuf,
    db: Mutex<Slot>,
    /// Writes since expired entries were last swept out.
    since_sweep: AtomicU32,
    /// Opens the database in its file.
    create: Create,
    /// What each namespace may hold.
    quota: Quota,
    /// How long a failed open or commit is answered without trying again, in ns.
    reopen_after: AtomicU64,
    staged: Mutex<Staged>,
    /// Wakes the committer: writes to commit, or the store closing.
    to_commit: Condvar,
    /// Wakes writers waiting for the staged bytes to fall under [`MAX_STAGED`].
    room: Condvar,
    commits: Arc<Commits>,
}

/// The open database, or why it could not be opened (or written), and when.
#[derive(Default)]
struct Slot {
    db: Option<Arc<Database>>,
    failed: Option<(Instant, StoreError)>,
}

/// Writes by namespace and key, the newest of each key: its entry, or `None` for a
/// delete.
type Generation = HashMap<String, BTreeMap<String, Option<Bytes>>>;

/// The bytes of a staged write.
fn write_size(key: &str, entry: &Option<Bytes>) -> usize {
    key.len() + entry.as_ref().map_or(0, Bytes::len)
}

/// Writes accepted and not settled yet, in two generations: reads see them before the
/// database, the newer first.
#[derive(Default)]
struct Staged {
    /// Writes no commit has taken yet.
    writes: Generation,
    /// Bytes of keys and entries in `writes`.
    bytes: usize,
    /// The writes of the commit in progress, until it is settled.
    committing: Arc<Generation>,
    /// Bytes of keys and entries in `committing`.
    committing_bytes: usize,
    /// Bumped when `committing` is unstaged (the database has its writes then): a write
    /// that read the database before must read it again.
    generation: u64,
    /// What each namespace holds in the database: counted from the file when the store
    /// opens it, then kept by each commit (which sees what every write replaced).
    usage: HashMap<String, Usage>,
    /// What the sets in `writes` may add to each namespace at most (each as a new key).
    pending: HashMap<String, Usage>,
    /// The same for the sets in `committing`.
    committing_pending: HashMap<String, Usage>,
    /// The newest number given to a write.
    newest: WriteNumber,
    /// The committer has taken every write up to this number.
    taken: WriteNumber,
    /// Every write up to this number is committed (or lost).
    settled: WriteNumber,
    /// The store is being dropped: commit what is staged, then stop.
    closing: bool,
    /// The committer waits for writes: a write must wake it (else it will look again
    /// when its commit is done, and a wake-up would only cost a system call).
    idle: bool,
}

/// What one namespace holds: entries (expired ones too, until swept out), and the bytes
/// of their keys and entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Usage {
    keys: u64,
    bytes: u64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.keys += other.keys;
        self.bytes += other.bytes;
    }

    /// After replacing `old` (an entry of `old` bytes, or none) by `new`.
    fn after(self, old: Option<Present>, new: Option<usize>) -> Usage {
        Usage {
            keys: self.keys + u64::from(new.is_some()) - u64::from(old.is_some()),
            bytes: self.bytes + new.unwrap_or(0) as u64 - old.map_or(0, |o| o.size as u64),
        }
    }

    /// Why it is past `quota`, if it is (and grew past it from `before`).
    fn past(self, before: Usage, quota: Quota) -> Option<String> {
        if self.keys > quota.max_keys && self.keys > before.keys {
            return Some(format!("{} keys at most", quota.max_keys));
        }
        if self.bytes > quota.max_bytes && self.bytes > before.bytes {
            return Some(format!("{} bytes at most", quota.max_bytes));
        }
        None
    }
}

/// An entry that is there (expired or not): its bytes with its key, and its expiry.
#[derive(Clone, Copy, Debug)]
struct Present {
    size: usize,
    expires: u64,
}

impl Present {
    fn of(key: &str, entry: &[u8]) -> Self {
        Self {
            size: key.len() + entry.len(),
            expires: expires_at(entry),
        }
    }

    fn live(&self, now: u64) -> bool {
        self.expires == 0 || self.expires > now
    }
}

/// What a commit changed in each namespace: keys, and bytes.
type Changes = Vec<(String, (i64, i64))>;

/// What a staged write replaces, as [`Shared::stage`] found out.
enum Replaces {
    /// A write still staged (`None`: a delete).
    Staged(Option<Present>),
    /// What the database has (`None`: nothing).
    OnDisk(Option<Present>),
    /// Not looked up: a set far from the quota.
    Unknown,
}

/// Who makes a write, for [`Shared::stage`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// A plugin: its writes count against the quota, and wait for room.
    Plugin,
    /// A plugin's delete that does not want to know whether the key was there: staged
    /// without a read (a delete of nothing changes nothing when committed).
    BlindDelete,
    /// The sweep, deleting what had expired when it read the database at this
    /// generation: only if nothing touched the key since.
    Sweep(u64),
}

impl Staged {
    /// Whether a set of `size` bytes could take `namespace` past `quota`, counting
    /// every staged set as a new key.
    fn may_pass(&self, namespace: &str, size: usize, quota: Quota) -> bool {
        let mut most = self.usage.get(namespace).copied().unwrap_or_default();
        for pending in [&self.pending, &self.committing_pending] {
            most.add(pending.get(namespace).copied().unwrap_or_default());
        }
        most.keys + 1 > quota.max_keys || most.bytes + size as u64 > quota.max_bytes
    }

    /// The staged write of a key, if any: `Some(None)` for a delete.
    fn lookup(&self, namespace: &str, key: &str) -> Option<Option<Bytes>> {
        [&self.writes, &*self.committing]
            .into_iter()
            .find_map(|generation| generation.get(namespace)?.get(key).cloned())
    }
}

/// Opens a database in a file: redb's own file backend, or in tests one that can fail.
type Create = Arc<dyn Fn(File) -> Result<Database, DatabaseError> + Send + Sync>;

/// A store call's failure, and whether it was the storage's (the database is then
/// dropped and opened again later).
struct Failed {
    error: StoreError,
    storage: bool,
}

impl<E: Into<redb::Error>> From<E> for Failed {
    fn from(error: E) -> Self {
        let error = error.into();
        Self {
            // What leaves the database refusing calls until it is opened again (an I/O
            // error, a panic inside redb), or may be repaired by opening it.
            storage: matches!(
                error,
                redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::LockPoisoned(_) | redb::Error::Corrupted(_)
            ),
            error: StoreError::Unavailable(error.to_string()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FileStore {
    /// A store in `dir`, created when first used, with the default [`Quota`].
    pub fn new(dir: &Path) -> Self {
        Self::with_quota(dir, Quota::default())
    }

    /// A store in `dir`, created when first used, each namespace within `quota`.
    pub fn with_quota(dir: &Path, quota: Quota) -> Self {
        Self::with_create(dir, quota, Arc::new(|file| Database::builder().create_file(file)))
    }

    fn with_create(dir: &Path, quota: Quota, create: Create) -> Self {
        let shared = Arc::new(Shared {
            path: dir.join("store.redb"),
            db: Mutex::default(),
            since_sweep: AtomicU32::new(0),
            create,
            quota,
            reopen_after: AtomicU64::new(REOPEN_AFTER.as_nanos() as u64),
            staged: Mutex::default(),
            to_commit: Condvar::new(),
            room: Condvar::new(),
            commits: Commits::new(),
        });
        Self {
            shared,
            threads: Mutex::default(),
            started: std::sync::OnceLock::new(),
        }
    }

    /// Starts the committer and the settler, once; a write fails if they could not.
    fn start(&self) -> Result<(), StoreError> {
        let started = self.started.get_or_init(|| {
            let shared = &self.shared;
            let (settle, settled) = std::sync::mpsc::channel::<(WriteNumber, Result<(), StoreError>)>();
            let threads = [
                std::thread::Builder::new().name("wsplug-store".into()).spawn({
                    let shared = shared.clone();
                    move || shared.commit_until_closed(settle)
                }),
                std::thread::Builder::new().name("wsplug-settle".into()).spawn({
                    let commits = shared.commits.clone();
                    move || {
                        for (through, outcome) in settled {
                            commits.settle(through, outcome);
                        }
                    }
                }),
            ];
            let mut started = Ok(());
            for thread in threads {
                match thread {
                    Ok(thread) => lock(&self.threads).push(thread),
                    // The other one ends by itself: its channel closes.
                    Err(error) => started = Err(StoreError::Unavailable(format!("cannot start a thread: {error}"))),
                }
            }
            started
        });
        started.clone()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    #[cfg(test)]
    fn set_reopen_after(&self, after: Duration) {
        self.shared
            .reopen_after
            .store(after.as_nanos() as u64, Ordering::Relaxed);
    }
}

impl Drop for FileStore {
    /// Commits what is staged before the store goes.
    fn drop(&mut self) {
        lock(&self.shared.staged).closing = true;
        self.shared.to_commit.notify_all();
        self.shared.room.notify_all();
        // The committer first: once it is done, the settler's channel closes.
        for thread in lock(&self.threads).drain(..) {
            let _ = thread.join();
        }
    }
}

impl Shared {
    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let mut slot = lock(&self.db);
        if let Some(db) = &slot.db {
            return Ok(db.clone());
        }
        if let Some((at, error)) = &slot.failed
            && at.elapsed() < Duration::from_nanos(self.reopen_after.load(Ordering::Relaxed))
        {
            return Err(error.clone());
        }
        let (opened, usage) = match open(&self.path, &*self.create) {
            Ok((db, usage)) => (Arc::new(db), usage),
            Err(error) => {
                slot.failed = Some((Instant::now(), error.clone()));
                return Err(error);
            }
        };
        // Nothing is staged while the database is closed (a failed commit unstaged it all).
        lock(&self.staged).usage = usage;
        // The next commit sweeps out what expired while the database was closed.
        self.since_sweep.store(SWEEP_EVERY, Ordering::Relaxed);
        tracing::info!(file = %self.path.display(), "key-value store opened");
        *slot = Slot {
            db: Some(opened.clone()),
            failed: None,
        };
        Ok(opened)
    }

    /// Runs `call` on the database. After a storage error the database is dropped, and
    /// calls answer that error for a while: then a call opens the file again (once every
    /// call still using this one is done: until then redb's lock on the file refuses the
    /// open).
    fn with_db<T>(&self, call: impl FnOnce(&Database) -> Result<T, Failed>) -> Result<T, StoreError> {
        let db = self.db()?;
        call(&db).map_err(|failed| {
            if failed.storage {
                let mut slot = lock(&self.db);
                // Once, by the first call that met the error.
                if slot.db.as_ref().is_some_and(|current| Arc::ptr_eq(current, &db)) {
                    slot.db = None;
                    slot.failed = Some((Instant::now(), failed.error.clone()));
                    tracing::warn!(
                        file = %self.path.display(),
                        "key-value store: {}; it is opened again in {:?}",
                        failed.error,
                        Duration::from_nanos(self.reopen_after.load(Ordering::Relaxed))
                    );
                }
            }
            failed.error
        })
    }

    /// Stages a write of `entry` (`None`: a delete) by `writer`, unless it is a delete of
    /// nothing; returns what it replaced.
    fn stage(
        &self,
        namespace: &str,
        key: &str,
        entry: Option<Bytes>,
        writer: Writer,
    ) -> Result<Option<Present>, StoreError> {
        // Opens the file at the first write, and answers at once why it cannot.
        self.db()?;
        loop {
            let mut staged = lock(&self.staged);
            // The sweep runs on the committer: it must never wait for room.
            let full = |s: &Staged| s.bytes + s.committing_bytes > MAX_STAGED && !s.closing;
            if matches!(writer, Writer::Plugin | Writer::BlindDelete) && full(&staged) {
                staged = block_here(|| {
                    self.room
                        .wait_while(staged, |s| full(s))
                        .unwrap_or_else(|p| p.into_inner())
                });
            }
            if let Some(write) = staged.lookup(namespace, key) {
                let old = write.as_deref().map(|entry| Present::of(key, entry));
                return self.stage_locked(staged, namespace, key, entry, writer, Replaces::Staged(old));
            }
            // A set needs to know what it replaces only near the quota; a delete, always
            // (it says whether the key was there, and deletes nothing if not).
            let size = entry.as_ref().map(|e| key.len() + e.len());
            let near = size.is_some_and(|size| staged.may_pass(namespace, size, self.quota));
            if (writer == Writer::Plugin && entry.is_some() && !near) || writer == Writer::BlindDelete {
                return self.stage_locked(staged, namespace, key, entry, writer, Replaces::Unknown);
            }
            if near && staged.newest > staged.settled {
                // Exact once what is staged is committed (its pending counts are upper bounds).
                let newest = staged.newest;
                drop(staged);
                let _ = block_here(|| self.commits.wait(newest));
                continue;
            }
            let generation = staged.generation;
            drop(staged);
            let on_disk = self.on_disk(namespace, key)?;
            let staged = lock(&self.staged);
            // Else the database changed under the read, or the key was written meanwhile.
            if staged.generation == generation && staged.lookup(namespace, key).is_none() {
                return self.stage_locked(staged, namespace, key, entry, writer, Replaces::OnDisk(on_disk));
            }
        }
    }

    /// [`Shared::stage`], under the lock, knowing what the write replaces.
    fn stage_locked(
        &self,
        mut staged: MutexGuard<'_, Staged>,
        namespace: &str,
        key: &str,
        entry: Option<Bytes>,
        writer: Writer,
        replaces: Replaces,
    ) -> Result<Option<Present>, StoreError> {
        let old = match replaces {
            Replaces::Staged(old) | Replaces::OnDisk(old) => old,
            Replaces::Unknown => None,
        };
        let touched = matches!(replaces, Replaces::Staged(_));
        if matches!(writer, Writer::Sweep(read_at) if touched || read_at != staged.generation)
            || (entry.is_none() && old.is_none() && !matches!(replaces, Replaces::Unknown))
        {
            return Ok(old);
        }
        let new = entry.as_ref().map(|e| key.len() + e.len());
        if writer == Writer::Plugin
            && let Some(new) = new
            && !matches!(replaces, Replaces::Unknown)
        {
            // Exact for this key; what others have staged counts at its most.
            let mut before = staged.usage.get(namespace).copied().unwrap_or_default();
            for pending in [&staged.pending, &staged.committing_pending] {
                before.add(pending.get(namespace).copied().unwrap_or_default());
            }
            if let Some(why) = before.after(old, Some(new)).past(before, self.quota) {
                return Err(StoreError::QuotaExceeded(why));
            }
        }
        if let Some(new) = new {
            let added = Usage {
                keys: 1,
                bytes: new as u64,
            };
            match staged.pending.get_mut(namespace) {
                Some(pending) => pending.add(added),
                None => drop(staged.pending.insert(namespace.to_owned(), added)),
            }
        }
        let size = write_size(key, &entry);
        staged.newest += 1;
        let number = staged.newest;
        let replaced = match staged.writes.get_mut(namespace) {
            Some(keys) => keys.insert(key.to_owned(), entry),
            None => {
                let keys = BTreeMap::from([(key.to_owned(), entry)]);
                staged.writes.insert(namespace.to_owned(), keys);
                None
            }
        };
        staged.bytes += size;
        if let Some(old) = replaced {
            staged.bytes -= write_size(key, &old);
        }
        self.commits.accept(number);
        let wake = std::mem::take(&mut staged.idle);
        drop(staged);
        if wake {
            self.to_commit.notify_one();
        }
        Ok(old)
    }

    /// The entry of a key in the database, expired or not.
    fn on_disk(&self, namespace: &str, key: &str) -> Result<Option<Present>, StoreError> {
        self.read_entry(namespace, key, |entry| Present::of(key, entry))
    }

    /// `read` of the entry of a key in the database, if it has one (expired or not).
    fn read_entry<T>(
        &self,
        namespace: &str,
        key: &str,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(ENTRIES) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(error) => return Err(error.into()),
            };
            Ok(table.get((namespace, key))?.map(|entry| read(entry.value())))
        })
    }

    /// Stages the deletes of entries that have expired (at most [`SWEEP_AT_MOST`]).
    fn sweep(&self) {
        let generation = lock(&self.staged).generation;
        let now = now_ms();
        let expired = self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(ENTRIES)?;
            let mut expired: Vec<(String, String)> = Vec::new();
            for item in table.iter()? {
                let (key, entry) = item?;
                if expired.len() < SWEEP_AT_MOST && self::expired(entry.value(), now) {
                    let (namespace, key) = key.value();
                    expired.push((namespace.to_owned(), key.to_owned()));
                }
            }
            Ok(expired)
        });
        for (namespace, key) in expired.unwrap_or_default() {
            let _ = self.stage(&namespace, &key, None, Writer::Sweep(generation));
        }
    }

    /// The staged write of a key, if any: `Some(None)` for a delete.
    fn staged(&self, namespace: &str, key: &str) -> Option<Option<Bytes>> {
        lock(&self.staged).lookup(namespace, key)
    }

    /// The committer's loop: takes everything staged, commits it in one transaction,
    /// hands its outcome to `settle`, and again, until the store is dropped with nothing
    /// left to commit.
    fn commit_until_closed(&self, settle: std::sync::mpsc::Sender<(WriteNumber, Result<(), StoreError>)>) {
        loop {
            let (batch, through) = {
                let mut staged = lock(&self.staged);
                while staged.newest == staged.taken && !staged.closing {
                    staged.idle = true;
                    staged = self.to_commit.wait(staged).unwrap_or_else(|p| p.into_inner());
                }
                staged.idle = false;
                if staged.newest == staged.taken {
                    return; // closing, and nothing left
                }
                let batch = Arc::new(std::mem::take(&mut staged.writes));
                staged.committing = batch.clone();
                staged.committing_bytes = std::mem::take(&mut staged.bytes);
                staged.committing_pending = std::mem::take(&mut staged.pending);
                staged.taken = staged.newest;
                (batch, staged.newest)
            };
            let outcome = self.commit(&batch);
            drop(batch);
            let through = {
                let mut staged = lock(&self.staged);
                staged.committing = Arc::default();
                staged.committing_bytes = 0;
                staged.committing_pending.clear();
                staged.generation += 1;
                let through = match &outcome {
                    Ok(changes) => {
                        for (namespace, change) in changes {
                            let usage = staged.usage.entry(namespace.clone()).or_default();
                            usage.keys = usage.keys.saturating_add_signed(change.0);
                            usage.bytes = usage.bytes.saturating_add_signed(change.1);
                        }
                        through
                    }
                    // Lost: this batch, and whatever was staged on top of it, which may
                    // depend on it.
                    Err(_) => {
                        staged.writes.clear();
                        staged.bytes = 0;
                        staged.pending.clear();
                        staged.taken = staged.newest;
                        staged.newest
                    }
                };
                staged.settled = through;
                through
            };
            let outcome = outcome.map(drop);
            self.room.notify_all();
            match &outcome {
                Ok(()) => {
                    if self.since_sweep.load(Ordering::Relaxed) >= SWEEP_EVERY {
                        self.since_sweep.store(0, Ordering::Relaxed);
                        self.sweep();
                    }
                }
                Err(error) => {
                    tracing::warn!(file = %self.path.display(), "key-value store: writes lost: {error}");
                    // Opened again later, which counts what each namespace holds anew.
                    let mut slot = lock(&self.db);
                    slot.db = None;
                    slot.failed.get_or_insert_with(|| (Instant::now(), error.clone()));
                }
            }
            if settle.send((through, outcome)).is_err() {
                return; // no settler: nothing can be released
            }
        }
    }

    /// Writes a batch in one transaction.
    /// Writes a batch in one transaction; returns what it changed in each namespace
    /// (keys, bytes), from what each write replaced.
    fn commit(&self, batch: &Generation) -> Result<Changes, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            let mut changes = Vec::with_capacity(batch.len());
            {
                let mut table = txn.open_table(ENTRIES)?;
                let mut count = 0;
                for (namespace, keys) in batch {
                    let (mut key_change, mut byte_change) = (0i64, 0i64);
                    for (key, entry) in keys {
                        let at = (namespace.as_str(), key.as_str());
                        let replaced = match entry {
                            Some(entry) => {
                                key_change += 1;
                                byte_change += (key.len() + entry.len()) as i64;
                                table.insert(at, entry.as_ref())?.map(|old| old.value().len())
                            }
                            None => table.remove(at)?.map(|old| old.value().len()),
                        };
                        if let Some(old) = replaced {
                            key_change -= 1;
                            byte_change -= (key.len() + old) as i64;
                        }
                        count += 1;
                    }
                    changes.push((namespace.clone(), (key_change, byte_change)));
                }
                self.since_sweep.fetch_add(count as u32, Ordering::Relaxed);
            }
            txn.commit()?;
            Ok(changes)
        })
    }
}

/// Opens (or creates) the database at `path` with `create`.
fn open(
    path: &Path,
    create: &(dyn Fn(File) -> Result<Database, DatabaseError> + Send + Sync),
) -> Result<(Database, HashMap<String, Usage>), StoreError> {
    let failed = |e: &dyn std::fmt::Display| StoreError::Unavailable(format!("cannot open {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        crate::private_files::create_dir(dir).map_err(|e| failed(&e))?;
    }
    // The plugins' data is this user's alone: a new database file is made 0600.
    crate::private_files::touch(path).map_err(|e| failed(&e))?;
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| failed(&e))?;
    let db = create(file).map_err(|e| failed(&e))?;
    // Create the table, so that readers never meet a missing one. (What expired while
    // the file was closed goes with the first commit, so that opening adds no write of
    // its own to redb's.)
    let created = (|| -> Result<(), Failed> {
        match db.begin_read()?.open_table(ENTRIES) {
            Ok(_) => Ok(()),
            Err(TableError::TableDoesNotExist(_)) => {
                let txn = db.begin_write()?;
                txn.open_table(ENTRIES)?;
                Ok(txn.commit()?)
            }
            Err(error) => Err(error.into()),
        }
    })();
    created.map_err(|e| failed(&e.error))?;
    let usage = (|| -> Result<HashMap<String, Usage>, Failed> {
        let txn = db.begin_read()?;
        let table = txn.open_table(ENTRIES)?;
        let mut usage: HashMap<String, Usage> = HashMap::new();
        for item in table.iter()? {
            let (key, entry) = item?;
            let (namespace, key) = key.value();
            let counted = usage.entry(namespace.to_owned()).or_default();
            counted.keys += 1;
            counted.bytes += (key.len() + entry.value().len()) as u64;
        }
        Ok(usage)
    })();
    Ok((db, usage.map_err(|e| failed(&e.error))?))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn expires_at(entry: &[u8]) -> u64 {
    entry
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn expired(entry: &[u8], now: u64) -> bool {
    let at = expires_at(entry);
    at != 0 && at <= now
}

/// The value of a live entry.
fn live_value(entry: &[u8], now: u64) -> Option<Vec<u8>> {
    (!expired(entry, now)).then(|| entry.get(8..).unwrap_or_default().to_vec())
}

impl KeyValue for FileStore {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        // The staged write first: the database may not have it yet. (Unstaged only once
        // committed, so a miss here finds it in the database.)
        if let Some(entry) = self.shared.staged(namespace, key) {
            return Ok(entry.and_then(|entry| live_value(&entry, now_ms())));
        }
        let entry = self
            .shared
            .read_entry(namespace, key, |entry| live_value(entry, now_ms()))?;
        Ok(entry.flatten())
    }

    fn set(&self, namespace: &str, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let expires = ttl.map_or(0, |ttl| now_ms().saturating_add(ttl.as_millis() as u64).max(1));
        let mut entry = Vec::with_capacity(8 + value.len());
        entry.extend_from_slice(&expires.to_le_bytes());
        entry.extend_from_slice(value);
        self.start()?;
        self.shared
            .stage(namespace, key, Some(entry.into()), Writer::Plugin)
            .map(drop)
    }

    fn delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        self.start()?;
        let old = self.shared.stage(namespace, key, None, Writer::Plugin)?;
        Ok(old.is_some_and(|old| old.live(now_ms())))
    }

    fn remove(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        self.start()?;
        self.shared.stage(namespace, key, None, Writer::BlindDelete).map(drop)
    }

    fn list_keys(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let start = after.filter(|a| *a >= prefix).unwrap_or(prefix);
        // The staged writes in range, taken before the database is read: a write
        // unstaged in between is committed, and the database then has it.
        let staged: Vec<(String, Option<Bytes>)> = {
            let staged = lock(&self.shared.staged);
            let mut view = BTreeMap::new();
            // The older generation first: the newer one's writes replace its.
            for generation in [&*staged.committing, &staged.writes] {
                if let Some(keys) = generation.get(namespace) {
                    let range = keys.range::<str, _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded));
                    for (key, entry) in range.take_while(|(key, _)| key.starts_with(prefix)) {
                        view.insert(key.clone(), entry.clone());
                    }
                }
            }
            view.into_iter().collect()
        };
        let limit = limit.min(MAX_LIST) as usize;
        let now = now_ms();
        let wanted = |key: &str, entry: Option<&[u8]>| Some(key) != after && entry.is_some_and(|e| !expired(e, now));
        self.shared.with_db(|db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(ENTRIES) {
                Ok(table) => Some(table),
                Err(TableError::TableDoesNotExist(_)) => None,
                Err(error) => return Err(error.into()),
            };
            let mut staged = staged.into_iter().peekable();
            let mut keys = Vec::new();
            if let Some(table) = table {
                for item in table.range((namespace, start)..)? {
                    if keys.len() >= limit {
                        return Ok(keys);
                    }
                    let (entry_key, value) = item?;
                    let (ns, key) = entry_key.value();
                    if ns != namespace || !key.starts_with(prefix) {
                        break;
                    }
                    // Staged keys before this one, then this one: staged if it is.
                    while let Some((staged_key, entry)) = staged.next_if(|(k, _)| k.as_str() < key) {
                        if keys.len() < limit && wanted(&staged_key, entry.as_deref()) {
                            keys.push(staged_key);
                        }
                    }
                    let wanted = match staged.next_if(|(k, _)| k == key) {
                        Some((_, staged_entry)) => wanted(key, staged_entry.as_deref()),
                        None => wanted(key, Some(value.value())),
                    };
                    if keys.len() < limit && wanted {
                        keys.push(key.to_owned());
                    }
                }
            }
            for (key, entry) in staged {
                if keys.len() >= limit {
                    break;
                }
                if wanted(&key, entry.as_deref()) {
                    keys.push(key);
                }
            }
            Ok(keys)
        })
    }

    fn commits(&self) -> Option<Arc<Commits>> {
        Some(self.shared.commits.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("wsplug-store-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn sets_gets_deletes_and_keeps_namespaces_apart() {
        let dir = TempDir::new("basic");
        let store = FileStore::new(&dir.0);
        assert_eq!(store.get("a", "k"), Ok(None));
        store.set("a", "k", b"one", None).unwrap();
        store.set("b", "k", b"two", None).unwrap();
        assert_eq!(store.get("a", "k"), Ok(Some(b"one".to_vec())));
        assert_eq!(store.get("b", "k"), Ok(Some(b"two".to_vec())));
        store.set("a", "k", b"", None).unwrap();
        assert_eq!(store.get("a", "k"), Ok(Some(Vec::new())));
        assert_eq!(store.delete("a", "k"), Ok(true));
        assert_eq!(store.delete("a", "k"), Ok(false));
        assert_eq!(store.get("a", "k"), Ok(None));
        assert_eq!(store.get("b", "k"), Ok(Some(b"two".to_vec())));
    }

    #[test]
    fn lists_keys_by_prefix_a_page_at_a_time() {
        let dir = TempDir::new("list");
        let store = FileStore::new(&dir.0);
        for key in ["msg/3", "msg/1", "msg/2", "msh", "ms", "name/x"] {
            store.set("chat", key, b"v", None).unwrap();
        }
        store.set("other", "msg/0", b"v", None).unwrap();
        assert_eq!(
            store.list_keys("chat", "msg/", None, 100).unwrap(),
            ["msg/1", "msg/2", "msg/3"]
        );
        assert_eq!(store.list_keys("chat", "msg/", None, 2).unwrap(), ["msg/1", "msg/2"]);
        assert_eq!(store.list_keys("chat", "msg/", Some("msg/2"), 2).unwrap(), ["msg/3"]);
        assert_eq!(store.list_keys("chat", "", None, 100).unwrap().len(), 6);
        assert!(store.list_keys("nobody", "", None, 100).unwrap().is_empty());
    }

    #[test]
    fn expired_keys_are_gone() {
        let dir = TempDir::new("ttl");
        let store = FileStore::new(&dir.0);
        store.set("a", "short", b"v", Some(Duration::from_millis(1))).unwrap();
        store.set("a", "long", b"v", Some(Duration::from_secs(3600))).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.get("a", "short").unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline, "a 1 ms key still there after 5 s");
            std::thread::yield_now();
        }
        assert_eq!(store.list_keys("a", "", None, 10).unwrap(), ["long"]);
        assert_eq!(store.delete("a", "short"), Ok(false));
        assert_eq!(store.get("a", "long").unwrap(), Some(b"v".to_vec()));
    }

    #[test]
    fn expired_keys_are_swept_out_as_writes_go_on() {
        let dir = TempDir::new("sweep");
        let expire = |store: &FileStore, key: &str| {
            store.set("a", key, b"v", Some(Duration::from_millis(1))).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while store.get("a", key).unwrap().is_some() {
                assert!(std::time::Instant::now() < deadline);
                std::thread::yield_now();
            }
        };
        let entries = |store: &FileStore| {
            // The writes, then the sweep's deletes staged when the last batch committed.
            store.sync().unwrap();
            store.sync().unwrap();
            let db = store.shared.db().unwrap();
            let txn = db.begin_read().unwrap();
            redb::ReadableTableMetadata::len(&txn.open_table(ENTRIES).unwrap()).unwrap()
        };
        let store = FileStore::new(&dir.0);
        // The commit after the file opens sweeps (nothing yet); then every 1024th write's.
        store.set("a", "first", b"v", None).unwrap();
        store.sync().unwrap();
        expire(&store, "gone");
        assert_eq!(entries(&store), 2, "an expired entry stays until a sweep");
        for n in 0..SWEEP_EVERY - 1 {
            store.set("a", &format!("k{n}"), b"v", None).unwrap();
        }
        assert_eq!(
            entries(&store),
            u64::from(SWEEP_EVERY),
            "the sweep removed the expired one"
        );
        let usage = lock(&store.shared.staged).usage["a"];
        assert_eq!(usage.keys, u64::from(SWEEP_EVERY), "and its place in the quota");
        // What expired while the file was closed goes with the first write after it opens.
        expire(&store, "later");
        drop(store);
        let store = FileStore::new(&dir.0);
        store.set("a", "again", b"v", None).unwrap();
        assert_eq!(entries(&store), u64::from(SWEEP_EVERY) + 1, "the opening write swept");
    }

    /// What a test does to its store's disk.
    #[derive(Default)]
    struct Disk {
        /// Writes fail as on a full disk while set.
        full: std::sync::atomic::AtomicBool,
        /// An fsync waits while set.
        stalled: Mutex<bool>,
        resumed: Condvar,
        /// Fsyncs that have waited.
        waited: Mutex<u32>,
        waiting: Condvar,
        /// Times the store opened (or tried to open) its file.
        opens: AtomicU32,
    }

    impl Disk {
        fn stall(&self, stalled: bool) {
            *lock(&self.stalled) = stalled;
            self.resumed.notify_all();
        }

        /// Returns once an fsync has waited on the stalled disk.
        fn wait_for_a_stalled_sync(&self) {
            drop(self.waiting.wait_while(lock(&self.waited), |waited| *waited == 0));
        }
    }

    /// redb's file backend on a [`Disk`].
    struct TestDisk {
        file: redb::backends::FileBackend,
        disk: Arc<Disk>,
    }

    impl std::fmt::Debug for TestDisk {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("TestDisk")
        }
    }

    impl TestDisk {
        fn check(&self) -> std::io::Result<()> {
            if self.disk.full.load(Ordering::Relaxed) {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            Ok(())
        }
    }

    impl redb::StorageBackend for TestDisk {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            let stalled = lock(&self.disk.stalled);
            if *stalled {
                *lock(&self.disk.waited) += 1;
                self.disk.waiting.notify_all();
            }
            drop(self.disk.resumed.wait_while(stalled, |stalled| *stalled));
            self.check()?;
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.file.write(offset, data)
        }
        fn close(&self) -> std::io::Result<()> {
            self.file.close()
        }
    }

    /// A store on a disk the test controls, each namespace within `quota`.
    fn on_test_disk(dir: &Path, quota: Quota) -> (FileStore, Arc<Disk>) {
        let disk = Arc::new(Disk::default());
        let store = FileStore::with_create(
            dir,
            quota,
            Arc::new({
                let disk = disk.clone();
                move |file| {
                    disk.opens.fetch_add(1, Ordering::Relaxed);
                    let file = redb::backends::FileBackend::new(file)?;
                    Database::builder().create_with_backend(TestDisk {
                        file,
                        disk: disk.clone(),
                    })
                }
            }),
        );
        (store, disk)
    }

    #[derive(Default)]
    struct Told(Mutex<Vec<(WriteNumber, bool)>>);

    impl super::super::Settled for Told {
        fn settled(&self, through: WriteNumber, outcome: Result<(), &StoreError>) {
            lock(&self.0).push((through, outcome.is_ok()));
        }
    }

    #[test]
    fn a_remove_drops_a_key_without_reading_it_and_a_remove_of_nothing_changes_nothing() {
        let dir = TempDir::new("remove");
        let (store, _disk) = on_test_disk(
            &dir.0,
            Quota {
                max_keys: 2,
                max_bytes: 1 << 20,
            },
        );
        store.set("ns", "a", b"v", None).unwrap();
        store.set("ns", "b", b"v", None).unwrap();
        store.sync().unwrap();
        // On disk, staged, and never set.
        store.remove("ns", "a").unwrap();
        assert_eq!(store.get("ns", "a"), Ok(None));
        // At the quota a set waits for the commits before it, which made room.
        store.set("ns", "c", b"v", None).unwrap();
        store.remove("ns", "c").unwrap();
        assert_eq!(store.get("ns", "c"), Ok(None), "a staged set, removed");
        store.remove("ns", "never").unwrap();
        store.sync().unwrap();
        assert_eq!(store.list_keys("ns", "", None, 10).unwrap(), ["b"]);
        // The quota counts what is there: one key, so one more fits, and no more.
        store.set("ns", "d", b"v", None).unwrap();
        assert!(matches!(
            store.set("ns", "e", b"v", None),
            Err(StoreError::QuotaExceeded(_))
        ));
    }

    #[test]
    fn a_sync_returns_once_the_writes_before_it_are_durable() {
        let dir = TempDir::new("sync");
        let (store, disk) = on_test_disk(&dir.0, Quota::default());
        let store = Arc::new(store);
        // The database is made (and synced) at the first write: before the stall.
        store.set("ns", "first", b"v", None).unwrap();
        store.sync().unwrap();
        disk.stall(true);
        store.set("ns", "k", b"v", None).unwrap();
        disk.wait_for_a_stalled_sync();
        let (done, synced) = std::sync::mpsc::channel();
        let syncing = {
            let store = store.clone();
            std::thread::spawn(move || {
                let outcome = store.sync();
                // What was unsettled when it returned.
                let _ = done.send(store.commits().unwrap().unsettled());
                outcome
            })
        };
        // A bound on a negative, not a synchronisation: the disk is stalled, so a sync
        // that returned now would have returned before the commit.
        let early = synced.recv_timeout(Duration::from_millis(100)).is_ok();
        disk.stall(false);
        assert!(!early, "sync returned before the commit");
        assert!(!synced.recv().unwrap(), "the write was settled when sync returned");
        assert_eq!(syncing.join().unwrap(), Ok(()));
    }

    #[test]
    fn writes_are_read_before_their_commit_and_share_one() {
        let dir = TempDir::new("group");
        let (store, disk) = on_test_disk(&dir.0, Quota::default());
        for key in ["msg/1", "msg/3", "msg/5"] {
            store.set("chat", key, b"old", None).unwrap();
        }
        store.sync().unwrap();
        let told = Arc::new(Told::default());
        let commits = store.commits().unwrap();
        commits.listen(Arc::downgrade(&told) as std::sync::Weak<dyn super::super::Settled>);
        disk.stall(true);
        // The first write's commit starts and waits on the disk; the others stage behind it.
        store.set("chat", "msg/0", b"new", None).unwrap();
        disk.wait_for_a_stalled_sync();
        store.set("chat", "msg/2", b"new", None).unwrap();
        store.set("chat", "msg/3", b"new", None).unwrap();
        assert_eq!(store.delete("chat", "msg/5"), Ok(true));
        assert_eq!(store.delete("chat", "msg/5"), Ok(false), "a staged delete is read too");
        store
            .set("chat", "msg/6", b"gone", Some(Duration::from_millis(1)))
            .unwrap();
        store.set("other", "msg/4", b"elsewhere", None).unwrap();
        assert!(commits.unsettled());
        assert_eq!(store.get("chat", "msg/3"), Ok(Some(b"new".to_vec())));
        assert_eq!(store.get("chat", "msg/5"), Ok(None));
        let all = ["msg/0", "msg/1", "msg/2", "msg/3"];
        let expired_soon = store.list_keys("chat", "msg/", None, 100).unwrap();
        assert!(expired_soon[..4] == all, "{expired_soon:?}");
        assert_eq!(store.list_keys("chat", "msg/", None, 2).unwrap(), all[..2]);
        assert_eq!(store.list_keys("chat", "msg/", Some("msg/1"), 2).unwrap(), all[2..]);
        assert_eq!(store.list_keys("other", "", None, 100).unwrap(), ["msg/4"]);
        disk.stall(false);
        store.sync().unwrap();
        assert_eq!(
            *lock(&told.0),
            [(4, true), (9, true)],
            "one commit for the first write, one for the six behind it"
        );
        drop(store);
        let store = FileStore::new(&dir.0);
        assert_eq!(
            store.list_keys("chat", "msg/", None, 100).unwrap(),
            all,
            "all committed"
        );
        assert_eq!(store.get("chat", "msg/3"), Ok(Some(b"new".to_vec())));
    }

    #[test]
    fn a_namespace_past_its_quota_is_refused_until_a_delete_makes_room() {
        let dir = TempDir::new("quota");
        let quota = Quota {
            max_keys: 3,
            max_bytes: 3 * (1 + 8 + 10),
        };
        let store = FileStore::with_quota(&dir.0, quota);
        for key in ["a", "b", "c"] {
            store.set("ns", key, &[0; 10], None).unwrap();
        }
        let refused = store.set("ns", "d", b"", None).unwrap_err();
        assert_eq!(refused, StoreError::QuotaExceeded("3 keys at most".into()));
        // Replacing a key adds none; growing it past the bytes does not fit.
        store.set("ns", "a", &[1; 10], None).unwrap();
        let refused = store.set("ns", "a", &[1; 11], None).unwrap_err();
        assert_eq!(
            refused,
            StoreError::QuotaExceeded(format!("{} bytes at most", quota.max_bytes))
        );
        store.set("other", "d", b"", None).unwrap(); // each namespace has its own
        assert_eq!(store.delete("ns", "b"), Ok(true));
        store.set("ns", "d", b"", None).unwrap();
        // What a namespace holds is counted from the file when it is opened again.
        drop(store);
        let store = FileStore::with_quota(&dir.0, quota);
        assert_eq!(
            store.set("ns", "e", b"", None),
            Err(StoreError::QuotaExceeded("3 keys at most".into()))
        );
        // A shrinking write, and a delete, always go through.
        let quota = Quota { max_keys: 1, ..quota };
        drop(store);
        let store = FileStore::with_quota(&dir.0, quota);
        store.set("ns", "a", b"", None).unwrap();
        assert_eq!(store.delete("ns", "c"), Ok(true));
    }

    #[test]
    fn expired_entries_count_until_the_sweep_deletes_them() {
        let dir = TempDir::new("quota-ttl");
        let quota = Quota {
            max_keys: 2,
            max_bytes: 1 << 20,
        };
        let store = FileStore::with_quota(&dir.0, quota);
        // Past the sweep after the store opens: the next one is 1024 writes away.
        store.set("ns", "long", b"v", None).unwrap();
        store.sync().unwrap();
        store.sync().unwrap();
        store.set("ns", "short", b"v", Some(Duration::from_millis(1))).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while store.get("ns", "short").unwrap().is_some() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::yield_now();
        }
        assert!(
            store.set("ns", "third", b"v", None).is_err(),
            "the expired key still holds its place"
        );
        // Set again, an expired key takes its own place back.
        store.set("ns", "short", b"w", None).unwrap();
        assert_eq!(store.get("ns", "short"), Ok(Some(b"w".to_vec())));
    }

    #[test]
    fn what_is_staged_is_committed_when_the_store_is_dropped() {
        let dir = TempDir::new("drop");
        let store = FileStore::new(&dir.0);
        for n in 0..100 {
            store.set("a", &format!("k{n:03}"), b"v", None).unwrap();
        }
        drop(store);
        let store = FileStore::new(&dir.0);
        assert_eq!(store.list_keys("a", "", None, 1000).unwrap().len(), 100);
    }

    #[test]
    fn after_a_full_disk_the_store_answers_again_once_there_is_room() {
        let dir = TempDir::new("full");
        let (store, disk) = on_test_disk(&dir.0, Quota::default());
        let full = &disk.full;
        // Every call may try to open the file again: this test is about the reopening.
        store.set_reopen_after(Duration::ZERO);
        store.set("a", "before", b"1", None).unwrap();
        store.sync().unwrap();
        full.store(true, Ordering::Relaxed);
        // Staged, and seen by reads, until its commit fails.
        store.set("a", "during", b"2", None).unwrap();
        let lost = store.sync().unwrap_err();
        assert!(lost.to_string().contains("No space left on device"), "{lost}");
        // (While the disk is full, reads may fail too: opening the file again writes.)
        assert!(
            !matches!(store.get("a", "during"), Ok(Some(_))),
            "a lost write is not read"
        );
        // Still full: whatever the calls answer, none panics, and none waits.
        let _ = store.get("a", "before");
        let _ = store.set("a", "during", b"2", None);
        full.store(false, Ordering::Relaxed);
        // Room again: the store opens its file again, with what was committed before.
        assert_eq!(store.get("a", "before"), Ok(Some(b"1".to_vec())));
        assert_eq!(store.get("a", "during"), Ok(None), "a refused write is not there");
        store.set("a", "after", b"3", None).unwrap();
        assert_eq!(store.get("a", "after"), Ok(Some(b"3".to_vec())));
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_not_tried_again_at_once() {
        let dir = TempDir::new("full-at-start");
        let (store, disk) = on_test_disk(&dir.0, Quota::default());
        let (full, opens) = (&disk.full, &disk.opens);
        store.set_reopen_after(Duration::from_secs(3600));
        full.store(true, Ordering::Relaxed); // a new file cannot even be created
        assert!(store.get("a", "k").is_err());
        assert!(store.set("a", "k", b"v", None).is_err());
        assert_eq!(opens.load(Ordering::Relaxed), 1, "the second call did not try again");
        full.store(false, Ordering::Relaxed);
        store.set_reopen_after(Duration::ZERO);
        store.set("a", "k", b"v", None).unwrap();
        assert_eq!(opens.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn data_survives_reopening() {
        let dir = TempDir::new("reopen");
        {
            let store = FileStore::new(&dir.0);
            store.set("a", "k", b"kept", None).unwrap();
        }
        let store = FileStore::new(&dir.0);
        assert_eq!(store.get("a", "k"), Ok(Some(b"kept".to_vec())));
    }

    #[test]
    fn a_store_that_cannot_open_says_why_and_does_not_panic() {
        let dir = TempDir::new("blocked");
        std::fs::create_dir_all(&dir.0).unwrap();
        // A directory where the file should be.
        std::fs::create_dir_all(dir.0.join("store.redb")).unwrap();
        let store = FileStore::new(&dir.0);
        let Err(StoreError::Unavailable(why)) = store.get("a", "k") else {
            panic!("opened a directory as a database")
        };
        assert!(why.contains("store.redb"), "{why}");
    }
}
