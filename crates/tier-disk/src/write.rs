//! [`DiskMissHandler`]: streams a body into a temp file in checked blocks and
//! publishes it by rename.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::streaming_write::U64WriteId;
use pingora_cache::storage::{HandleMiss, MissFinishType};
use pingora_cache::CacheEntryId;
use pingora_error::{Error, ErrorType, Result};
use tokio::sync::watch;

use crate::format::{block_crc, encode_header, CRC_LEN};
use crate::fsio::Blocking;
use crate::storage::DiskStorage;

/// Where a write stands, as its readers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// This many full blocks are on disk, and `total` body bytes written in
    /// all (the rest sit in the write's tail buffer).
    Writing { blocks: u64, total: u64 },
    /// Every block is on disk; the body has this many bytes.
    Done { body_len: u64 },
    /// The write failed or was dropped: readers must fail.
    Aborted,
}

/// A write in progress, shared with the readers that follow it.
#[derive(Debug)]
pub(crate) struct Inflight {
    pub(crate) key: CompactCacheKey,
    pub(crate) id: u64,
    pub(crate) tmp_path: PathBuf,
    pub(crate) internal: Vec<u8>,
    pub(crate) header: Vec<u8>,
    pub(crate) data_start: u64,
    pub(crate) block_size: usize,
    /// Body bytes not yet in a full block on disk: at most one block.
    /// Readers copy what they need from it under the lock.
    tail: parking_lot::Mutex<Tail>,
    progress: watch::Sender<Progress>,
}

/// The written bytes that are not on disk yet, and where they start.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    pub(crate) start: u64,
    pub(crate) bytes: Vec<u8>,
}

impl Inflight {
    pub(crate) fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Copy tail bytes `pos..end` (as far as the tail has them), or `None`
    /// if `pos` is not in the tail now.
    pub(crate) fn read_tail(&self, pos: u64, end: u64) -> Option<Bytes> {
        let tail = self.tail.lock();
        let tail_end = tail.start + tail.bytes.len() as u64;
        if pos < tail.start || pos >= tail_end {
            return None;
        }
        let from = (pos - tail.start) as usize;
        let to = (end.min(tail_end) - tail.start) as usize;
        Some(Bytes::copy_from_slice(&tail.bytes[from..to]))
    }

    fn set(&self, progress: Progress) {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Failed,
    Finished,
}

/// Writes one entry. Holds at most one block of body in memory (plus the
/// chunk being written), never the whole body.
pub struct DiskMissHandler {
    storage: &'static DiskStorage,
    inflight: Arc<Inflight>,
    slot: u64,
    file: Option<File>,
    blocks_written: u64,
    body_len: u64,
    /// Bytes charged to the tier for this write so far.
    reserved: u64,
    tag: U64WriteId,
    state: State,
}

impl std::fmt::Debug for DiskMissHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskMissHandler")
            .field("id", &self.inflight.id)
            .field("body_len", &self.body_len)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl DiskMissHandler {
    /// Create the temp file and write the header; the write is then visible
    /// to readers through `lookup`.
    pub(crate) async fn start(
        storage: &'static DiskStorage,
        key: CompactCacheKey,
        slot: u64,
        internal: Vec<u8>,
        header: Vec<u8>,
        listed: bool,
    ) -> Result<Self> {
        let id = storage.next_id();
        let block_size = storage.config().block_size;
        // The negative control "publish in place" writes straight over the
        // entry's own file, which is exactly what temp + rename prevents.
        let in_place = storage.faults().controls().publish_in_place;
        let tmp_path = if in_place {
            storage.entry_path(&key)
        } else {
            storage.tmp_path(id)
        };
        let head = encode_header(&key, id, block_size, 0, &internal, &header);
        let head_len = head.len() as u64;
        let path = tmp_path.clone();
        let file = storage
            .io()
            .run(move || {
                storage.reserve(head_len)?;
                let faults = storage.faults();
                let create = |path: &std::path::Path| {
                    if in_place {
                        if let Some(parent) = path.parent() {
                            crate::fsio::create_dir_all(parent)?;
                        }
                        std::fs::File::create(path)
                    } else {
                        crate::fsio::create_new(path)
                    }
                };
                let written = faults
                    .check(crate::fsio::FsOp::Create)
                    .and_then(|_| create(&path))
                    .and_then(|mut file| {
                        faults.write(&head, |b| file.write_all(b))?;
                        Ok(file)
                    });
                written.map_err(|e| {
                    storage.index().release(head_len);
                    let _ = std::fs::remove_file(&path);
                    storage.io_error("get_miss_handler", None, "creating the temp file", e)
                })
            })
            .await?;
        let inflight = Arc::new(Inflight {
            key,
            id,
            tmp_path,
            internal,
            header,
            data_start: head_len,
            block_size,
            tail: parking_lot::Mutex::new(Tail::default()),
            progress: watch::Sender::new(Progress::Writing {
                blocks: 0,
                total: 0,
            }),
        });
        // A listed write is followed by lookups until it is published; an
        // unlisted (private) one is seen only once published.
        if listed {
            storage.register_write(slot, inflight.clone());
        }
        Ok(DiskMissHandler {
            storage,
            inflight,
            slot,
            file: Some(file),
            blocks_written: 0,
            body_len: 0,
            reserved: head_len,
            tag: U64WriteId::from(id),
            state: State::Open,
        })
    }

    /// Write whole blocks (and, at the end, the last partial one) with their
    /// checksums, charging their bytes first.
    async fn flush_blocks(&mut self, final_block: bool) -> Result<()> {
        let block_size = self.inflight.block_size;
        let data: Vec<u8> = {
            let mut tail = self.inflight.tail.lock();
            let full = tail.bytes.len() / block_size * block_size;
            let take = if final_block { tail.bytes.len() } else { full };
            if take == 0 {
                return Ok(());
            }
            tail.start += take as u64;
            tail.bytes.drain(..take).collect()
        };
        let n_blocks = data.len().div_ceil(block_size) as u64;
        let charge = data.len() as u64 + n_blocks * CRC_LEN as u64;
        let first_index = self.blocks_written;
        let id = self.inflight.id;
        let Some(mut file) = self.file.take() else {
            return Err(self.closed());
        };
        let storage = self.storage;
        let key = self.inflight.key.clone();
        let tmp_path = self.inflight.tmp_path.clone();
        let result = storage
            .io()
            .run(move || {
                storage.reserve(charge)?;
                let mut out = Vec::with_capacity(block_size + CRC_LEN);
                for (i, block) in data.chunks(block_size).enumerate() {
                    out.clear();
                    out.extend_from_slice(block);
                    out.extend_from_slice(
                        &block_crc(id, first_index + i as u64, block).to_le_bytes(),
                    );
                    if let Err(e) = storage.faults().write(&out, |b| file.write_all(b)) {
                        storage.index().release(charge);
                        // Remove the temp file before the error is seen, so
                        // a full disk gets its space back at once.
                        drop(file);
                        if !storage.faults().controls().skip_temp_cleanup {
                            let _ = std::fs::remove_file(&tmp_path);
                        }
                        return Err(storage.io_error(
                            "write_body",
                            Some(&key),
                            "writing a body block",
                            e,
                        ));
                    }
                }
                Ok(file)
            })
            .await;
        match result {
            Ok(file) => {
                self.file = Some(file);
                self.reserved += charge;
                self.blocks_written += n_blocks;
                if !final_block {
                    self.inflight.set(Progress::Writing {
                        blocks: self.blocks_written,
                        total: self.body_len,
                    });
                }
                Ok(())
            }
            Err(e) => {
                self.fail_now().await;
                Err(e)
            }
        }
    }

    /// Give up: readers fail, the bytes go back, and the temp file is removed
    /// in the background (for `Drop`, which cannot wait).
    fn fail(&mut self) {
        let path = self.give_up();
        if self.storage.faults().controls().skip_temp_cleanup {
            return;
        }
        Blocking::detach(move || {
            let _ = std::fs::remove_file(path);
        });
    }

    /// Give up as `fail` does, but return only once the temp file is gone,
    /// so a refused write leaves nothing behind when its error is seen.
    async fn fail_now(&mut self) {
        let path = self.give_up();
        if self.storage.faults().controls().skip_temp_cleanup {
            return;
        }
        let _ = self
            .storage
            .io()
            .run(move || {
                let _ = std::fs::remove_file(path);
                Ok(())
            })
            .await;
    }

    /// The bookkeeping of giving up; returns the temp file to remove.
    fn give_up(&mut self) -> std::path::PathBuf {
        self.state = State::Failed;
        self.inflight.set(Progress::Aborted);
        self.storage.unregister_write(self.slot, &self.inflight);
        self.storage
            .index()
            .release(std::mem::take(&mut self.reserved));
        self.file = None;
        self.inflight.tmp_path.clone()
    }

    fn closed(&self) -> Box<Error> {
        Error::explain(
            ErrorType::InternalError,
            format!(
                "{}: this write already failed or finished",
                self.storage.tier_label()
            ),
        )
    }
}

#[async_trait]
impl HandleMiss for DiskMissHandler {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.state != State::Open {
            return Err(self.closed());
        }
        let new_len = self.body_len + data.len() as u64;
        let limit = self.storage.max_object_bytes();
        if new_len > limit {
            self.fail_now().await;
            self.storage.counters().record_rejection();
            return Err(tier_core::error::object_too_large(
                self.storage.tier_label(),
                limit as usize,
                new_len as usize,
            ));
        }
        self.body_len = new_len;
        let tail_len = {
            let mut tail = self.inflight.tail.lock();
            tail.bytes.extend_from_slice(&data);
            tail.bytes.len()
        };
        if tail_len >= self.inflight.block_size {
            self.flush_blocks(false).await?;
        } else {
            self.inflight.set(Progress::Writing {
                blocks: self.blocks_written,
                total: self.body_len,
            });
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        if self.state != State::Open {
            return Err(self.closed());
        }
        self.flush_blocks(true).await?;
        let Some(file) = self.file.take() else {
            return Err(self.closed());
        };
        let storage = self.storage;
        let inflight = self.inflight.clone();
        let slot = self.slot;
        let body_len = self.body_len;
        let file_len = self.reserved;
        let published = storage
            .io()
            .run(move || {
                // The real body length goes into the header now; the header
                // is the same size as the placeholder written first.
                let head = encode_header(
                    &inflight.key,
                    inflight.id,
                    inflight.block_size,
                    body_len,
                    &inflight.internal,
                    &inflight.header,
                );
                storage
                    .faults()
                    .write(&head, |b| file.write_all_at(b, 0))
                    .and_then(|_| storage.sync_file(&file))
                    .map_err(|e| {
                        storage.io_error("finish", Some(&inflight.key), "sealing the entry", e)
                    })?;
                drop(file);
                storage.publish(slot, &inflight, file_len)
            })
            .await;
        match published {
            Ok(()) => {
                self.state = State::Finished;
                self.reserved = 0;
                self.storage.unregister_write(self.slot, &self.inflight);
                self.inflight.set(Progress::Done { body_len });
                self.storage.counters().record_insert();
                Ok(MissFinishType::Created(file_len as usize))
            }
            Err(e) => {
                self.fail_now().await;
                Err(e)
            }
        }
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(self.tag.as_bytes())
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.inflight.id))
    }
}

impl Drop for DiskMissHandler {
    fn drop(&mut self) {
        if self.state == State::Open {
            self.fail();
        }
    }
}
