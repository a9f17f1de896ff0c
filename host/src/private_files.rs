//! Directories and files the host keeps for itself: the key-value store, the cache of
//! compiled plugins, and temporary directories. They are created readable by this
//! user only (directories 0700, files 0600), and a directory whose contents another
//! user could replace (another owner, or writable by group or others) can be refused:
//! the plugin cache holds native code that runs outside the sandbox.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Creates `dir` and its missing parents, each 0700 (existing ones are left as they are).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Creates (or truncates) `file`, 0600 if new.
pub fn create_file(file: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
}

/// Creates `file` empty, 0600, unless it exists; its contents are never touched.
pub fn touch(file: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(file)
        .map(drop)
}

/// Why a path cannot be trusted with code or data.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// Another user owns it.
    #[error("owned by uid {owner}, not this user (uid {me})")]
    Owner {
        /// Its owner.
        owner: u32,
        /// This process's user.
        me: u32,
    },
    /// Its group or other users may write it.
    #[error("writable by other users (mode {0:o})")]
    Writable(u32),
}

/// Whether only this user can change what `path` holds: it is this user's, and neither
/// its group nor others may write it.
pub fn check_trusted(metadata: &fs::Metadata) -> Result<(), Untrusted> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if metadata.uid() != me {
        return Err(Untrusted::Owner {
            owner: metadata.uid(),
            me,
        });
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Untrusted::Writable(mode));
    }
    Ok(())
}

/// A fresh directory of this user's under the system's temp directory, with a name no
/// other user can guess ahead, removed with its contents when dropped.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<temp>/wsplug-<label>-<random>`, 0700.
    pub fn new(label: &str) -> io::Result<Self> {
        for _ in 0..16 {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u32(std::process::id());
            if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
                hasher.write_u128(since.as_nanos());
            }
            let path = std::env::temp_dir().join(format!("wsplug-{label}-{:016x}", hasher.finish()));
            // Not recursive: an existing directory (someone else's) is an error, not reused.
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(Self { path }),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(error) => return Err(error),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no fresh temporary directory",
        ))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn what_it_creates_is_this_users_only() {
        let temp = TempDir::new("private-test").unwrap();
        let mode = |path: &Path| fs::metadata(path).unwrap().mode() & 0o777;
        assert_eq!(mode(temp.path()), 0o700);
        let nested = temp.path().join("a/b");
        create_dir(&nested).unwrap();
        assert_eq!((mode(&temp.path().join("a")), mode(&nested)), (0o700, 0o700));
        let file = nested.join("f");
        create_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        touch(&nested.join("g")).unwrap();
        assert_eq!(mode(&nested.join("g")), 0o600);
        assert_eq!(check_trusted(&fs::metadata(&nested).unwrap()), Ok(()));
        fs::set_permissions(&nested, fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            check_trusted(&fs::metadata(&nested).unwrap()),
            Err(Untrusted::Writable(0o777))
        );
        let path = temp.path().to_owned();
        drop(temp);
        assert!(!path.exists());
    }

    #[test]
    fn temp_dirs_are_fresh() {
        let a = TempDir::new("private-test").unwrap();
        let b = TempDir::new("private-test").unwrap();
        assert_ne!(a.path(), b.path());
    }
}
