//! A write in progress as its followers see it: where its body is (fragments
//! on disk, then a buffer) and how far it got.

use std::sync::Arc;

use bytes::Bytes;
use pingora_cache::key::CompactCacheKey;
use tier_core::meta::StoredMeta;
use tokio::sync::watch;

use crate::format::FragRef;
use crate::segment::Segment;

/// Where a write stands, as its readers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// This many body bytes were written so far.
    Writing { total: u64 },
    /// Published; the body has this many bytes.
    Done { body_len: u64 },
    /// The write failed or was dropped: readers must fail.
    Aborted,
}

/// The body of a write in progress: fragments on disk, then a buffer.
#[derive(Debug, Default)]
pub(crate) struct Body {
    pub(crate) frags: Vec<(FragRef, Arc<Segment>)>,
    /// Body offset of the buffer's first byte (all fragments before it).
    pub(crate) tail_start: u64,
    pub(crate) tail: Vec<u8>,
}

/// What a follower finds at a body offset.
#[derive(Debug)]
pub(crate) enum At {
    /// In fragment `index` on disk.
    Fragment(usize, FragRef, Arc<Segment>),
    /// These buffered bytes.
    Buffered(Bytes),
    /// Not written yet.
    NotYet,
}

/// A write in progress, shared with the readers that follow it.
#[derive(Debug)]
pub(crate) struct Inflight {
    pub(crate) key: CompactCacheKey,
    pub(crate) id: u64,
    pub(crate) meta: StoredMeta,
    pub(crate) block_size: usize,
    pub(crate) fragment_bytes: usize,
    pub(crate) body: parking_lot::Mutex<Body>,
    pub(crate) progress: watch::Sender<Progress>,
}

impl Inflight {
    pub(crate) fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Where the bytes at `pos` are (up to `end`).
    pub(crate) fn at(&self, pos: u64, end: u64) -> At {
        let body = self.body.lock();
        if pos < body.tail_start {
            let i = (pos / self.fragment_bytes as u64) as usize;
            return match body.frags.get(i) {
                Some((f, seg)) => At::Fragment(i, *f, seg.clone()),
                None => At::NotYet,
            };
        }
        let from = (pos - body.tail_start) as usize;
        if from >= body.tail.len() {
            return At::NotYet;
        }
        let to = ((end - body.tail_start) as usize).min(body.tail.len());
        At::Buffered(Bytes::copy_from_slice(&body.tail[from..to]))
    }

    pub(crate) fn set(&self, progress: Progress) {
        self.progress.send_if_modified(|now| {
            // Done and Aborted are final.
            let change = matches!(now, Progress::Writing { .. }) && *now != progress;
            if change {
                *now = progress;
            }
            change
        });
    }
}
