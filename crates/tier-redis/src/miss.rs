//! Writing an entry: chunks under a new generation as the body arrives, then
//! one script switches the entry to it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::{HandleMiss, MissFinishType};
use pingora_cache::CacheEntryId;
use pingora_error::Result;
use tier_core::error::object_too_large;

use crate::format::{frame_chunk, gen_field, millis, EntryKeys, Head};
use crate::remote::Remote;
use crate::scripts::PUBLISH;

pub(crate) struct RedisMiss {
    pub(crate) remote: Arc<Remote>,
    pub(crate) key: CompactCacheKey,
    pub(crate) keys: EntryKeys,
    pub(crate) gen: u64,
    pub(crate) ttl_ms: u64,
    pub(crate) internal: Vec<u8>,
    pub(crate) header: Vec<u8>,
    /// Body bytes not yet written as a chunk; never more than one chunk.
    pub(crate) pending: BytesMut,
    pub(crate) chunks: u32,
    pub(crate) total: usize,
    pub(crate) failed: bool,
    pub(crate) published: bool,
}

impl std::fmt::Debug for RedisMiss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisMiss")
            .field("gen", &self.gen)
            .field("chunks", &self.chunks)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl RedisMiss {
    fn chunk_bytes(&self) -> usize {
        self.remote.config.chunk_bytes
    }

    async fn write_chunk(&mut self, data: Bytes) -> Result<()> {
        let key = self.keys.chunk(self.gen, self.chunks);
        let value = frame_chunk(&data, self.gen, self.chunks);
        let ttl = self.ttl_ms;
        self.remote
            .call("write chunk", Some(&self.key), |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(ttl)
                    .exec_async(&mut c)
                    .await
            })
            .await?;
        self.chunks += 1;
        Ok(())
    }
}

#[async_trait]
impl HandleMiss for RedisMiss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.failed {
            return Err(tier_core::error::tier_error(
                pingora_error::ErrorType::InternalError,
                self.remote.name(),
                "write",
                Some(&self.key),
                "an earlier write of this body failed",
            ));
        }
        self.total += data.len();
        let limit = self.remote.config.max_object_bytes;
        if self.total > limit {
            self.failed = true;
            self.remote.counters.record_rejection();
            return Err(object_too_large(self.remote.name(), limit, self.total));
        }
        // A full chunk is written only once more bytes arrive, so a body of
        // exactly one chunk still ends up inline.
        let chunk_bytes = self.chunk_bytes();
        let mut data = data;
        while !data.is_empty() {
            let next = if self.pending.len() == chunk_bytes {
                Some(self.pending.split().freeze())
            } else if self.pending.is_empty() && data.len() > chunk_bytes {
                // A whole chunk, and more, arrived at once: no copy.
                Some(data.split_to(chunk_bytes))
            } else {
                let take = (chunk_bytes - self.pending.len()).min(data.len());
                self.pending.extend_from_slice(&data.split_to(take));
                None
            };
            if let Some(chunk) = next {
                if let Err(e) = self.write_chunk(chunk).await {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let started = std::time::Instant::now();
        if self.failed {
            return Err(tier_core::error::tier_error(
                pingora_error::ErrorType::InternalError,
                self.remote.name(),
                "finish",
                Some(&self.key),
                "a write of this body failed",
            ));
        }
        // A body of at most one chunk, never split, lives inside the entry.
        let inline = self.chunks == 0;
        let inline_body = if inline {
            frame_chunk(&self.pending, self.gen, 0)
        } else {
            if !self.pending.is_empty() {
                let last = self.pending.split().freeze();
                if let Err(e) = self.write_chunk(last).await {
                    self.failed = true;
                    return Err(e);
                }
            }
            Vec::new()
        };
        let head = Head {
            gen: self.gen,
            body_len: self.total as u64,
            chunk_bytes: self.chunk_bytes() as u32,
            chunks: self.chunks,
            inline,
            internal: std::mem::take(&mut self.internal),
            header: std::mem::take(&mut self.header),
        }
        .encode();
        let size = self.total + head.len();
        let config = &self.remote.config;
        let (entry, prefix) = (self.keys.entry.clone(), self.keys.chunk_prefix.clone());
        let (gen, chunks, ttl) = (gen_field(self.gen), self.chunks, self.ttl_ms);
        let grace = millis(config.superseded_grace);
        let published = self
            .remote
            .call("publish", Some(&self.key), |mut c| async move {
                PUBLISH
                    .key(entry)
                    .arg(gen)
                    .arg(chunks)
                    .arg(head)
                    .arg(inline_body)
                    .arg(ttl)
                    .arg(grace)
                    .arg(prefix)
                    .arg(if inline { "1" } else { "0" })
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await;
        match published {
            Ok(_) => {
                self.published = true;
                self.remote.counters.record_insert();
                self.remote.latencies.write.record(started.elapsed());
                Ok(MissFinishType::Created(size))
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.gen))
    }
}

impl Drop for RedisMiss {
    /// A write that did not publish leaves chunks behind: remove them in the
    /// background (their TTL removes them anyway if this cannot).
    fn drop(&mut self) {
        if self.published || self.chunks == 0 {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let keys: Vec<String> = (0..self.chunks)
            .map(|i| self.keys.chunk(self.gen, i))
            .collect();
        let (remote, key) = (self.remote.clone(), self.key.clone());
        runtime.spawn(async move {
            let _ = remote
                .call(
                    "remove unpublished chunks",
                    Some(&key),
                    |mut c| async move { redis::cmd("UNLINK").arg(keys).exec_async(&mut c).await },
                )
                .await;
        });
    }
}
