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
}

impl DiskHitHandler {
    pub(crate) fn complete(
        storage: &'static DiskStorage,
        file: File,
        key: CompactCacheKey,
        header: &crate::format::Header,
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

    async fn read_block(&self, index: u64, len: u64) -> Result<Bytes> {
        let file = self.file.clone();
        let offset = self.data_start + index * (self.block_size + CRC_LEN as u64);
        let io = self.storage.io().clone();
        let mut buf = io
            .run(move || {
                let mut buf = vec![0u8; len as usize + CRC_LEN];
                file.read_exact_at(&mut buf, offset).map_err(|e| {
                    Error::because(ErrorType::FileReadError, "reading a body block", e)
                })?;
                Ok(buf)
            })
            .await;
        if let Ok(block) = &mut buf {
            let mut stored = [0u8; CRC_LEN];
            stored.copy_from_slice(&block[len as usize..]);
            block.truncate(len as usize);
            if u32::from_le_bytes(stored) == block_crc(self.id, index, block) {
                return Ok(Bytes::from(std::mem::take(block)));
            }
        }
        // A bad checksum or a short file: never serve these bytes. A
        // published entry is removed so the next request is a clean miss.
        if matches!(self.source, Source::Complete { .. }) {
            self.storage
                .discard_corrupt(self.key.clone(), self.id)
                .await;
        }
        Err(tier_core::error::tier_error(
            tier_core::error::CORRUPT_ENTRY,
            self.storage.tier_label(),
            "read_body",
            Some(&self.key),
            format!("body block {index} failed its checksum or was cut short"),
        ))
    }

    fn select(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let Source::Complete { body_len } = self.source else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "seek is not supported while following a write",
            ));
        };
        let len = body_len as usize;
        let past_end = if len == 0 { start > 0 } else { start >= len };
        let clamped = end.map_or(len, |e| e.min(len));
        if past_end || clamped < start {
            return Err(tier_core::error::seek_out_of_range(start, end, len));
        }
        self.pos = start as u64;
        self.end = Some(clamped as u64);
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
            let index = self.pos / self.block_size;
            let block_start = index * self.block_size;
            let block_len = (ready - block_start).min(self.block_size);
            let block = self.read_block(index, block_len).await?;
            let from = (self.pos - block_start) as usize;
            let to = (end.min(block_start + block_len) - block_start) as usize;
            self.pos = block_start + to as u64;
            return Ok(Some(block.slice(from..to)));
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
