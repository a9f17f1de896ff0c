//! The plugins' key-value store: [`KeyValue`] is what the plugin runtime calls, one
//! namespace per plugin; [`FileStore`] serves it from an embedded database (redb) in a
//! directory, durable across host restarts. A shared backend (Redis, for several hosts)
//! implements the same trait: every call names its namespace, keys are listed in byte
//! order a page at a time (what a sorted index, such as a Redis sorted set, gives), and
//! expiry is a time to live per key.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, DatabaseError, ReadableDatabase, TableDefinition, TableError};

use crate::blocking::block_here;

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
}

/// A key-value store shared by plugins, each in its own namespace. Calls block until
/// done: a plugin's events wait for them (and, for a stateless plugin past the bound of
/// [`crate::blocking`], the other connections of its thread).
pub trait KeyValue: Send + Sync + 'static {
    /// The value of `key`, if set and not expired.
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Sets `key`, expiring after `ttl` if given. Durable once it returns.
    fn set(&self, namespace: &str, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError>;
    /// Removes `key`; whether it was set (and not expired).
    fn delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError>;
    /// Up to `limit` live keys starting with `prefix`, in byte order, after `after`.
    fn list_keys(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
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

/// (namespace, key) -> expiry in ms since the epoch (0: never), little-endian, then the value.
const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entries");

/// The store in `DIR/store.redb`. The database is opened at the first call, so a host
/// whose plugin never uses the store never touches the directory. A failure to open
/// (another host holds the file, the directory is not writable, the disk is full) is
/// that call's `Unavailable` error, and so is every call's for [`REOPEN_AFTER`], after
/// which a call tries again: an open may repair the whole file, which no call should
/// pay for again at once. A storage error (a full disk) is handled the same way: redb
/// refuses every later call of a database that met one, so the store drops it and opens
/// the file again, which works once the disk has room.
pub struct FileStore {
    path: PathBuf,
    db: Mutex<Slot>,
    /// Writes since expired entries were last swept out.
    writes: AtomicU32,
    /// Opens the database in its file.
    create: Create,
    /// How long a failed open is not tried again ([`REOPEN_AFTER`]).
    reopen_after: Duration,
}

/// The open database, or why it could not be opened, and when.
#[derive(Default)]
struct Slot {
    db: Option<Arc<Database>>,
    failed: Option<(std::time::Instant, StoreError)>,
}

/// How long a store whose file could not be opened answers with that error before it
/// tries again.
pub const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// Opens a database in a file: redb's own file backend, or in tests one that can fail.
type Create = Arc<dyn Fn(File) -> Result<Database, DatabaseError> + Send + Sync>;

/// A store call's failure, and whether it was the storage's (the database is then
/// dropped and opened again by the next call).
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

/// Every this many writes, the write also removes the entries that have expired, so
/// that keys set with a time to live do not pile up while the host runs.
const SWEEP_EVERY: u32 = 1024;

impl FileStore {
    /// A store in `dir`, created when first used.
    pub fn new(dir: &Path) -> Self {
        Self::with_create(dir, Arc::new(|file| Database::builder().create_file(file)))
    }

    fn with_create(dir: &Path, create: Create) -> Self {
        Self {
            path: dir.join("store.redb"),
            db: Mutex::default(),
            writes: AtomicU32::new(0),
            create,
            reopen_after: REOPEN_AFTER,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        let mut slot = self.db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(db) = &slot.db {
            return Ok(db.clone());
        }
        if let Some((at, error)) = &slot.failed
            && at.elapsed() < self.reopen_after
        {
            return Err(error.clone());
        }
        let opened = match open(&self.path, &*self.create) {
            Ok(db) => Arc::new(db),
            Err(error) => {
                slot.failed = Some((std::time::Instant::now(), error.clone()));
                return Err(error);
            }
        };
        // The next write sweeps out what expired while the database was closed.
        self.writes.store(SWEEP_EVERY - 1, Ordering::Relaxed);
        tracing::info!(file = %self.path.display(), "key-value store opened");
        *slot = Slot {
            db: Some(opened.clone()),
            failed: None,
        };
        Ok(opened)
    }

    /// Runs `call` on the database. After a storage error the database is dropped: the
    /// next call opens the file again (once every call still using this one is done:
    /// until then redb's lock on the file refuses the open).
    fn with_db<T>(&self, call: impl FnOnce(&Database) -> Result<T, Failed>) -> Result<T, StoreError> {
        let db = self.db()?;
        call(&db).map_err(|failed| {
            if failed.storage {
                let mut slot = self.db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // Once, by the first call that met the error.
                if slot.db.as_ref().is_some_and(|current| Arc::ptr_eq(current, &db)) {
                    slot.db = None;
                    tracing::warn!(
                        file = %self.path.display(),
                        "key-value store: {}; it is opened again by the next call",
                        failed.error
                    );
                }
            }
            failed.error
        })
    }

    /// [`KeyValue::set`], on this thread: a commit waits for the disk.
    fn write(&self, namespace: &str, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        let expires = ttl.map_or(0, |ttl| now_ms().saturating_add(ttl.as_millis() as u64).max(1));
        let mut entry = Vec::with_capacity(8 + value.len());
        entry.extend_from_slice(&expires.to_le_bytes());
        entry.extend_from_slice(value);
        self.with_db(|db| {
            // Read after `db()`, which arms the sweep when it opens the file.
            let sweep = self.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1;
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(ENTRIES)?;
                table.insert((namespace, key), entry.as_slice())?;
                if sweep {
                    let now = now_ms();
                    table.retain(|_, value| !expired(value, now))?;
                }
            }
            Ok(txn.commit()?)
        })
    }

    /// [`KeyValue::delete`], on this thread: a commit waits for the disk.
    fn remove(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write()?;
            let was_live = {
                let mut table = txn.open_table(ENTRIES)?;
                let removed = table.remove((namespace, key))?;
                removed.is_some_and(|entry| !expired(entry.value(), now_ms()))
            };
            txn.commit()?;
            Ok(was_live)
        })
    }
}

/// Opens (or creates) the database at `path` with `create`, and drops what expired
/// while the host was down.
fn open(
    path: &Path,
    create: &(dyn Fn(File) -> Result<Database, DatabaseError> + Send + Sync),
) -> Result<Database, StoreError> {
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
    // the file was closed goes with the first write, so that opening adds no write of
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
    Ok(db)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn expires_at(value: &[u8]) -> u64 {
    value
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn expired(value: &[u8], now: u64) -> bool {
    let at = expires_at(value);
    at != 0 && at <= now
}

impl KeyValue for FileStore {
    fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(ENTRIES) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(error) => return Err(error.into()),
            };
            let Some(entry) = table.get((namespace, key))? else {
                return Ok(None);
            };
            let value = entry.value();
            Ok((!expired(value, now_ms())).then(|| value.get(8..).unwrap_or_default().to_vec()))
        })
    }

    fn set(&self, namespace: &str, key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
        block_here(|| self.write(namespace, key, value, ttl))
    }

    fn delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        block_here(|| self.remove(namespace, key))
    }

    fn list_keys(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let table = match txn.open_table(ENTRIES) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(error) => return Err(error.into()),
            };
            let start = after.filter(|a| *a >= prefix).unwrap_or(prefix);
            let now = now_ms();
            let mut keys = Vec::new();
            for item in table.range((namespace, start)..)? {
                if keys.len() >= limit.min(MAX_LIST) as usize {
                    break;
                }
                let (entry_key, value) = item?;
                let (ns, key) = entry_key.value();
                if ns != namespace || !key.starts_with(prefix) {
                    break;
                }
                if Some(key) == after || expired(value.value(), now) {
                    continue;
                }
                keys.push(key.to_owned());
            }
            Ok(keys)
        })
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
            let db = store.db().unwrap();
            let txn = db.begin_read().unwrap();
            redb::ReadableTableMetadata::len(&txn.open_table(ENTRIES).unwrap()).unwrap()
        };
        let store = FileStore::new(&dir.0);
        // The write that opens the file sweeps (nothing yet); then every 1024th does.
        store.set("a", "first", b"v", None).unwrap();
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
        // What expired while the file was closed goes with the first write after it opens.
        expire(&store, "later");
        drop(store);
        let store = FileStore::new(&dir.0);
        store.set("a", "again", b"v", None).unwrap();
        assert_eq!(entries(&store), u64::from(SWEEP_EVERY) + 1, "the opening write swept");
    }

    /// redb's file backend, whose writes fail as on a full disk while `full` is set.
    #[derive(Debug)]
    struct FillingDisk {
        file: redb::backends::FileBackend,
        full: Arc<std::sync::atomic::AtomicBool>,
    }

    impl FillingDisk {
        fn check(&self) -> std::io::Result<()> {
            if self.full.load(Ordering::Relaxed) {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            Ok(())
        }
    }

    impl redb::StorageBackend for FillingDisk {
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

    /// A store on a disk that is full while the flag is set, and how many times it opened
    /// (or tried to open) its file.
    fn on_filling_disk(dir: &Path) -> (FileStore, Arc<std::sync::atomic::AtomicBool>, Arc<AtomicU32>) {
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let opens = Arc::new(AtomicU32::new(0));
        let (disk, count) = (full.clone(), opens.clone());
        let store = FileStore::with_create(
            dir,
            Arc::new(move |file| {
                count.fetch_add(1, Ordering::Relaxed);
                let file = redb::backends::FileBackend::new(file)?;
                Database::builder().create_with_backend(FillingDisk {
                    file,
                    full: disk.clone(),
                })
            }),
        );
        (store, full, opens)
    }

    #[test]
    fn after_a_full_disk_the_store_answers_again_once_there_is_room() {
        let dir = TempDir::new("full");
        let (mut store, full, _) = on_filling_disk(&dir.0);
        // Every call may try to open the file again: this test is about the reopening.
        store.reopen_after = Duration::ZERO;
        store.set("a", "before", b"1", None).unwrap();
        full.store(true, Ordering::Relaxed);
        let refused = store.set("a", "during", b"2", None).unwrap_err();
        assert!(refused.to_string().contains("No space left on device"), "{refused}");
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
        let (mut store, full, opens) = on_filling_disk(&dir.0);
        store.reopen_after = Duration::from_secs(3600);
        full.store(true, Ordering::Relaxed); // a new file cannot even be created
        assert!(store.get("a", "k").is_err());
        assert!(store.set("a", "k", b"v", None).is_err());
        assert_eq!(opens.load(Ordering::Relaxed), 1, "the second call did not try again");
        full.store(false, Ordering::Relaxed);
        store.reopen_after = Duration::ZERO;
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

    #[test]
    fn sizes_are_checked() {
        assert_eq!(check_sizes(&"k".repeat(MAX_KEY), Some(&[0; MAX_VALUE])), Ok(()));
        assert_eq!(check_sizes(&"k".repeat(MAX_KEY + 1), None), Err(StoreError::TooLarge));
        assert_eq!(check_sizes("k", Some(&[0; MAX_VALUE + 1])), Err(StoreError::TooLarge));
    }
}
