//! Reading a chunked entry chunk by chunk, each checked before a byte of it
//! is handed out. (An inline body comes with the lookup and is served by
//! `tier_core::BodyHitHandler`.)

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryId, CacheKey};
use pingora_error::Result;
use tier_core::error::{tier_error, CORRUPT_ENTRY};
use tier_core::seek_range;

use crate::format::{unframe_chunk, EntryKeys, Head};
use crate::remote::Remote;

pub(crate) struct RedisHit {
    pub(crate) remote: Arc<Remote>,
    pub(crate) key: CompactCacheKey,
    pub(crate) keys: EntryKeys,
    pub(crate) head: Head,
    pub(crate) pos: usize,
    pub(crate) end: usize,
}

impl std::fmt::Debug for RedisHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHit")
            .field("gen", &self.head.gen)
            .field("pos", &self.pos)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl RedisHit {
    async fn fetch(&self, index: u32) -> Result<Bytes> {
        let key = self.keys.chunk(self.head.gen, index);
        let stored: Option<Vec<u8>> = self
            .remote
            .call("read chunk", Some(&self.key), |mut c| async move {
                redis::cmd("GET").arg(key).query_async(&mut c).await
            })
            .await?;
        let problem = match stored {
            None => format!("chunk {index} is gone (evicted, expired or superseded)"),
            Some(stored) => {
                match unframe_chunk(stored, self.head.gen, index, self.head.chunk_len(index)) {
                    Ok(bytes) => return Ok(bytes),
                    Err(problem) => problem,
                }
            }
        };
        self.remote.counters.record_error();
        Err(tier_error(
            CORRUPT_ENTRY,
            self.remote.name(),
            "read",
            Some(&self.key),
            problem,
        ))
    }
}

#[async_trait]
impl HandleHit for RedisHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let chunk_bytes = self.head.chunk_bytes as usize;
        let index = (self.pos / chunk_bytes) as u32;
        let chunk = self.fetch(index).await?;
        let base = index as usize * chunk_bytes;
        let stop = self.end.min(base + chunk.len());
        let out = chunk.slice(self.pos - base..stop - base);
        self.pos = stop;
        Ok(Some(out))
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
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let (start, end) = seek_range(start, end, self.head.body_len as usize)?;
        self.pos = start;
        self.end = end;
        Ok(())
    }

    fn get_eviction_weight(&self) -> usize {
        self.head.body_len as usize
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        Some(CacheEntryId::new(self.head.gen))
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
