//! [`DiskHitHandler`]: streams a body from its file one checked block at a time.

use std::any::Any;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryId, CacheKey};
use pingora_error::{Error, ErrorType, Result};
use tokio::sync::watch;

use crate::format::{block_crc, CRC_LEN};
use crate::storage::DiskStorage;
use crate::write::Progress;

/// Where a hit's body comes from.
#[derive(Debug)]
enum Source {
    /// A published entry of known length.
    Complete { body_len: u64 },
    /// A write in progress, followed through its temp file and tail buffer.
    Following {
        progress: watch::Receiver<Progress>,
        inflight: Arc<crate::write::Inflight>,
    },
}

/// What a reader can read at its position.
enum Available {
    /// Bytes up to `ready` are in checked blocks on disk.
    OnDisk { ready: u64, body_len: Option<u64> },
    /// The bytes at the position are in the writer's tail buffer.
    InTail { total: u64 },
}

/// Serves a body from its file: reads one block, checks its checksum, hands
/// out the requested part of it. Memory held is one block, whatever the body
/// size. Seeks are file offsets.
#[derive(Debug)]
pub struct DiskHitHandler {
    storage: &'static DiskStorage,
    file: Arc<File>,
    key: CompactCacheKey,
    id: u64,
    block_size: u64,
    data_start: u64,
    file_len: u64,
    source: Source,
    pos: u64,
    end: Option<u64>,
    /// Checked blocks already read.
    buffered: Option<Run>,
}

/// How many blocks one read brings in: fewer trips to the blocking pool, at
/// most this many blocks held per reader.
pub(crate) const READ_AHEAD_BLOCKS: u64 = 4;

/// Checked blocks read in one go, kept with their checksums in place so
/// each block is handed out as a slice of this buffer, without a copy.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    first: u64,
    data_len: u64,
    raw: Bytes,
}

impl Run {
    fn start(&self, block: u64) -> u64 {
        self.first * block
    }

    fn covers(&self, pos: u64, block: u64) -> bool {
        pos >= self.start(block) && pos < self.start(block) + self.data_len
    }

    /// Body bytes from `pos` to the end of its block (or `end`).
    fn slice(&self, pos: u64, end: u64, block: u64) -> Bytes {
        let rel = pos - self.start(block);
        let i = rel / block;
        let block_len = (self.data_len - i * block).min(block);
        let raw_at = (i * (block + CRC_LEN as u64)) as usize;
        let from = (rel - i * block) as usize;
        let to = block_len.min(end - self.start(block) - i * block) as usize;
        self.raw.slice(raw_at + from..raw_at + to)
    }
}

/// Read body blocks from `first` on, up to `ready` body bytes and at most
/// [`READ_AHEAD_BLOCKS`], and check every checksum. Blocking.
pub(crate) fn read_run(
    file: &File,
    layout: Layout,
    first: u64,
    ready: u64,
    verify: bool,
) -> std::result::Result<Run, String> {
    let block = layout.block_size;
    let count = (ready.saturating_sub(first * block))
        .div_ceil(block)
        .min(READ_AHEAD_BLOCKS);
    let data_len = ready.saturating_sub(first * block).min(count * block);
    let raw_len = data_len + count * CRC_LEN as u64;
    let mut buf = vec![0u8; raw_len as usize];
    let offset = layout.data_start + first * (block + CRC_LEN as u64);
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| format!("reading blocks {first}..{}: {e}", first + count))?;
    let mut at = 0usize;
    for i in 0..count {
        let len = (data_len - i * block).min(block) as usize;
        let mut stored = [0u8; CRC_LEN];
        stored.copy_from_slice(&buf[at + len..at + len + CRC_LEN]);
        if verify
            && u32::from_le_bytes(stored) != block_crc(layout.id, first + i, &buf[at..at + len])
        {
            return Err(format!("body block {} failed its checksum", first + i));
        }
        at += len + CRC_LEN;
    }
    Ok(Run {
        first,
        data_len,
        raw: Bytes::from(buf),
    })
}

/// Where an entry's blocks are.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub(crate) id: u64,
    pub(crate) block_size: u64,
    pub(crate) data_start: u64,
}

impl DiskHitHandler {
    pub(crate) fn complete(
        storage: &'static DiskStorage,
        file: File,
        key: CompactCacheKey,
        header: &crate::format::Header,
        first_blocks: Option<Run>,
    ) -> Self {
        DiskHitHandler {
            storage,
            file: Arc::new(file),
            key,
            id: header.fixed.entry_id,
            block_size: header.fixed.block_size as u64,
            data_start: header.fixed.data_start(),
            file_len: header.fixed.file_len(),
            source: Source::Complete {
                body_len: header.fixed.body_len,
            },
            pos: 0,
            end: None,
            buffered: first_blocks,
        }
    }

    pub(crate) fn following(
        storage: &'static DiskStorage,
        file: File,
        inflight: &Arc<crate::write::Inflight>,
    ) -> Self {
        DiskHitHandler {
            storage,
            file: Arc::new(file),
            key: inflight.key.clone(),
            id: inflight.id,
            block_size: inflight.block_size as u64,
            data_start: inflight.data_start,
            file_len: 0,
            source: Source::Following {
                progress: inflight.subscribe(),
                inflight: inflight.clone(),
            },
            pos: 0,
            end: None,
            buffered: None,
        }
    }

    /// What can be read at `self.pos` now: wait until something can.
    async fn available(&mut self) -> Result<Available> {
        match &mut self.source {
            Source::Complete { body_len } => Ok(Available::OnDisk {
                ready: *body_len,
                body_len: Some(*body_len),
            }),
            Source::Following { progress, .. } => loop {
                let now = *progress.borrow_and_update();
                match now {
                    Progress::Aborted => {
                        return Err(tier_core::error::write_aborted(self.storage.tier_label()))
                    }
                    Progress::Done { body_len } => {
                        return Ok(Available::OnDisk {
                            ready: body_len,
                            body_len: Some(body_len),
                        })
                    }
                    Progress::Writing { blocks, total } => {
                        let on_disk = blocks * self.block_size;
                        if on_disk > self.pos {
                            return Ok(Available::OnDisk {
                                ready: on_disk,
                                body_len: None,
                            });
                        }
                        if total > self.pos {
                            return Ok(Available::InTail { total });
                        }
                    }
                }
                if progress.changed().await.is_err() {
                    return Err(tier_core::error::write_aborted(self.storage.tier_label()));
                }
            },
        }
    }

    /// Read (and check) the run of blocks from `index` on, up to `ready`.
    async fn read_blocks(&self, index: u64, ready: u64) -> Result<Run> {
        let file = self.file.clone();
        let layout = Layout {
            id: self.id,
            block_size: self.block_size,
            data_start: self.data_start,
        };
        let io = self.storage.io().clone();
        let verify = !self.storage.faults().controls().skip_checksums;
        let read = io
            .run(move || Ok(read_run(&file, layout, index, ready, verify)))
            .await?;
        match read {
            Ok(run) if run.data_len > 0 => Ok(run),
            Ok(_) => Err(self
                .corrupt(index, "the file ends before the body does".into())
                .await),
            Err(why) => Err(self.corrupt(index, why).await),
        }
    }

    /// A bad checksum or a short file: never serve these bytes. A published
    /// entry is removed so the next request is a clean miss.
    async fn corrupt(&self, index: u64, why: String) -> Box<Error> {
        if matches!(self.source, Source::Complete { .. }) {
            self.storage
                .discard_corrupt(self.key.clone(), self.id)
                .await;
        }
        tier_core::error::tier_error(
            tier_core::error::CORRUPT_ENTRY,
            self.storage.tier_label(),
            "read_body",
            Some(&self.key),
            format!("at block {index}: {why}"),
        )
    }

    fn select(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let Source::Complete { body_len } = self.source else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "seek is not supported while following a write",
            ));
        };
        let (start, end) = tier_core::seek_range(start, end, body_len as usize)?;
        self.pos = start as u64;
        self.end = Some(end as u64);
        Ok(())
    }
}

#[async_trait]
impl HandleHit for DiskHitHandler {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            let (ready, body_len) = match self.available().await? {
                Available::OnDisk { ready, body_len } => (ready, body_len),
                Available::InTail { total } => {
                    let end = self.end.unwrap_or(u64::MAX).min(total);
                    if let Source::Following { inflight, progress } = &mut self.source {
                        if let Some(bytes) = inflight.read_tail(self.pos, end) {
                            self.pos += bytes.len() as u64;
                            return Ok(Some(bytes));
                        }
                        // Flushed to disk but not yet announced: wait for it.
                        if progress.changed().await.is_err() {
                            return Err(tier_core::error::write_aborted(self.storage.tier_label()));
                        }
                    }
                    continue;
                }
            };
            let end = self
                .end
                .unwrap_or(u64::MAX)
                .min(body_len.unwrap_or(u64::MAX));
            if self.pos >= end {
                return Ok(None);
            }
            let block = self.block_size;
            if !self
                .buffered
                .as_ref()
                .is_some_and(|run| run.covers(self.pos, block))
            {
                let run = self.read_blocks(self.pos / block, ready).await?;
                self.buffered = Some(run);
            }
            let Some(run) = &self.buffered else {
                continue;
            };
            let bytes = run.slice(self.pos, end, block);
            self.pos += bytes.len() as u64;
            return Ok(Some(bytes));
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        matches!(self.source, Source::Complete { .. })
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        self.select(start, end)
    }

    fn seek_multipart(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        self.select(start, end)
    }

    fn should_count_access(&self) -> bool {
        matches!(self.source, Source::Complete { .. })
    }

    fn get_eviction_weight(&self) -> usize {
        self.file_len as usize
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.id))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
