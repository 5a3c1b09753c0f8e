//! File-system helpers: modes, no symlinks, directory syncs, and running
//! blocking work off the async workers.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use pingora_error::{Error, ErrorType, Result};
use tokio::sync::Semaphore;

/// Create `path` and missing parents with mode 0700.
pub(crate) fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// Create a new file (failing if anything, a symlink included, is there),
/// readable and writable by the owner only.
pub(crate) fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Open an existing file for reading without following a symlink.
pub(crate) fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// fsync a directory so renames and removals in it survive a crash.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Runs blocking file work on tokio's blocking pool, at most `permits` at once.
#[derive(Debug, Clone)]
pub(crate) struct Blocking {
    permits: Arc<Semaphore>,
}

impl Blocking {
    pub(crate) fn new(permits: usize) -> Self {
        Blocking {
            permits: Arc::new(Semaphore::new(permits)),
        }
    }

    /// Run `work` on the blocking pool and wait for it.
    pub(crate) async fn run<T, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce() -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Error::because(ErrorType::InternalError, "disk I/O pool closed", e))?;
        match tokio::task::spawn_blocking(work).await {
            Ok(result) => result,
            Err(e) => Err(Error::because(
                ErrorType::InternalError,
                "disk I/O task failed",
                e,
            )),
        }
    }

    /// Run `work` on the blocking pool without waiting (cleanup from `Drop`).
    /// Outside a runtime, run it here: there is no async worker to block.
    pub(crate) fn detach(work: impl FnOnce() + Send + 'static) {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(work);
            }
            Err(_) => work(),
        }
    }
}
