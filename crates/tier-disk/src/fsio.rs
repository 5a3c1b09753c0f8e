//! Running blocking file work off the async workers, and the fault seam the
//! tests fail file operations through.

use std::io;
use std::sync::Arc;

use pingora_error::{Error, ErrorType, Result};
use tokio::sync::Semaphore;

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
}

/// The file operations a [`FaultPlan`] can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FsOp {
    Create,
    Write,
    Sync,
    Remove,
}

/// How an injected failure fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub enum FaultKind {
    /// An I/O error (EIO).
    Eio,
    /// No space left on the device (ENOSPC).
    NoSpace,
    /// A write that stops half-way and then fails.
    ShortWrite,
}

/// Test-only switches that disable a safety mechanism, to show the tests
/// that guard it fail without it (negative controls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Controls {
    /// Serve body blocks without checking their checksums (and trust every
    /// record a scan finds).
    pub skip_checksums: bool,
    /// Acknowledge writes without syncing them, whatever the durability.
    pub skip_sync: bool,
}

/// A file operation, as the fault plan's journal records it (feature
/// `fault-injection`): what a power-cut simulation replays.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub enum Event {
    /// Segment file `segment` was created, `size` bytes long (zeros).
    Create { segment: u64, size: u64 },
    /// `bytes` were written at `offset` of segment `segment`.
    Write {
        segment: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Segment `segment` was synced (`fdatasync`).
    Sync { segment: u64 },
    /// Segment `segment` was removed.
    Remove { segment: u64 },
    /// The directory was synced.
    DirSync,
    /// A marker the test put in (for example: this write's finish returned).
    Mark(u64),
}

/// Fails the N-th file operation of the disk tier (feature `fault-injection`).
///
/// Counts every segment creation, record append, sync and segment removal
/// the tier makes (on the log writer's thread, in log order).
#[derive(Debug, Default)]
pub struct FaultPlan {
    fail_at: std::sync::atomic::AtomicU64,
    kind: parking_lot::Mutex<Option<FaultKind>>,
    seen: std::sync::atomic::AtomicU64,
    controls: parking_lot::Mutex<Controls>,
    journal: parking_lot::Mutex<Option<Vec<Event>>>,
}

#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
impl FaultPlan {
    /// A plan that fails nothing (yet).
    pub fn new() -> Arc<Self> {
        Arc::new(FaultPlan::default())
    }

    /// Fail the `n`-th operation from now (1-based) with `kind`; 0 disarms.
    pub fn fail_at(&self, n: u64, kind: FaultKind) {
        use std::sync::atomic::Ordering;
        self.seen.store(0, Ordering::SeqCst);
        *self.kind.lock() = Some(kind);
        self.fail_at.store(n, Ordering::SeqCst);
    }

    /// Operations counted since the last `fail_at`.
    pub fn operations(&self) -> u64 {
        self.seen.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Record every file operation from now on (see [`Event`]).
    pub fn record_journal(&self) {
        *self.journal.lock() = Some(Vec::new());
    }

    /// The operations recorded so far, and stop recording.
    pub fn take_journal(&self) -> Vec<Event> {
        self.journal.lock().take().unwrap_or_default()
    }

    /// Put a marker into the journal, in order with the tier's operations.
    pub fn mark(&self, n: u64) {
        if let Some(j) = self.journal.lock().as_mut() {
            j.push(Event::Mark(n));
        }
    }

    fn record(&self, event: impl FnOnce() -> Event) {
        if let Some(j) = self.journal.lock().as_mut() {
            j.push(event());
        }
    }

    /// Set the negative-control switches.
    pub fn set_controls(&self, controls: Controls) {
        *self.controls.lock() = controls;
    }

    pub(crate) fn controls(&self) -> Controls {
        *self.controls.lock()
    }

    /// Count one operation; fail it if it is the planned one.
    pub(crate) fn check(&self, _op: FsOp) -> io::Result<Option<FaultKind>> {
        use std::sync::atomic::Ordering;
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_at.load(Ordering::SeqCst) == n {
            let kind = *self.kind.lock();
            return match kind {
                Some(FaultKind::Eio) => Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::IO.raw_os_error(),
                )),
                Some(FaultKind::NoSpace) => Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::NOSPC.raw_os_error(),
                )),
                Some(FaultKind::ShortWrite) => Ok(Some(FaultKind::ShortWrite)),
                None => Ok(None),
            };
        }
        Ok(None)
    }
}

/// The tier's hook into a [`FaultPlan`]: nothing unless one is set.
#[derive(Debug, Clone, Default)]
pub(crate) struct Faults(Option<Arc<FaultPlan>>);

impl Faults {
    pub(crate) fn new(plan: Option<Arc<FaultPlan>>) -> Self {
        Faults(plan)
    }

    /// Count (and maybe fail) an operation that is not a write.
    #[inline]
    pub(crate) fn check(&self, op: FsOp) -> io::Result<()> {
        match &self.0 {
            None => Ok(()),
            Some(plan) => match plan.check(op)? {
                Some(FaultKind::ShortWrite) => Err(io::Error::from_raw_os_error(
                    rustix::io::Errno::IO.raw_os_error(),
                )),
                _ => Ok(()),
            },
        }
    }

    /// Write `buf` with `write`, unless the plan fails it (a short write
    /// writes half of `buf` first).
    #[inline]
    pub(crate) fn write(
        &self,
        buf: &[u8],
        mut write: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some(plan) = &self.0 else {
            return write(buf);
        };
        match plan.check(FsOp::Write)? {
            Some(FaultKind::ShortWrite) => {
                write(&buf[..buf.len() / 2])?;
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "injected short write",
                ))
            }
            _ => write(buf),
        }
    }

    pub(crate) fn controls(&self) -> Controls {
        self.0.as_ref().map(|p| p.controls()).unwrap_or_default()
    }

    /// Record an operation in the plan's journal, if it keeps one.
    #[inline]
    pub(crate) fn record(&self, event: impl FnOnce() -> Event) {
        if let Some(plan) = &self.0 {
            plan.record(event);
        }
    }
}
