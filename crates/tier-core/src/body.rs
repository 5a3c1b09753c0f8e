//! A hit handler over a complete body held in memory.

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::eviction::CacheEntryId;
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheKey;
use pingora_error::Result;

use crate::error::seek_out_of_range;

/// The byte range `seek(start, end)` selects in a body of `len` bytes, with
/// the semantics every tier shares: `end: None` is the end of the body, an
/// end past it is clamped, a start at or past the end of a non-empty body is
/// an error (on an empty body only 0 is allowed), and so is an end before the
/// start.
pub fn seek_range(start: usize, end: Option<usize>, len: usize) -> Result<(usize, usize)> {
    let past_end = if len == 0 { start > 0 } else { start >= len };
    let clamped = end.map_or(len, |end| end.min(len));
    if past_end || clamped < start {
        return Err(seek_out_of_range(start, end, len));
    }
    Ok((start, clamped))
}

/// The body length a response announces in its `Content-Length`, if it
/// announces a valid one: lets a tier refuse (or route) a body it cannot hold
/// before a byte of it is written.
pub fn announced_body_len(meta: &pingora_cache::CacheMeta) -> Option<u64> {
    meta.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Serves a complete in-memory body, with range seeks.
///
/// The body is one [`Bytes`] or a list of chunks ([`BodyHitHandler::from_chunks`]).
/// Reading hands out slices of the stored chunks: no copy, however large the
/// body. `seek(start, end)` selects `start..end` (`end` clamped to the body
/// length); `end: None` always means the end of the body, whatever an earlier
/// seek selected. A `start` at or past the end of a non-empty body is an error,
/// and so is an `end` before `start`. An empty body reads as the end of body at
/// once, and `seek(0, _)` on it is allowed and selects nothing.
#[derive(Debug, Clone)]
pub struct BodyHitHandler {
    chunks: Chunks,
    len: usize,
    /// Next byte to hand out, as an offset into the body.
    pos: usize,
    end: usize,
    /// The chunk holding `pos`, and that chunk's offset in the body.
    chunk_idx: usize,
    chunk_start: usize,
    entry_id: Option<CacheEntryId>,
    eviction_weight: usize,
}

#[derive(Debug, Clone)]
enum Chunks {
    One(Bytes),
    Many(Arc<[Bytes]>),
}

impl Chunks {
    fn get(&self, idx: usize) -> Option<&Bytes> {
        match self {
            Chunks::One(bytes) => (idx == 0).then_some(bytes),
            Chunks::Many(chunks) => chunks.get(idx),
        }
    }
}

impl BodyHitHandler {
    /// A handler that serves all of `body`.
    pub fn new(body: Bytes) -> Self {
        Self::with_chunks(Chunks::One(body))
    }

    /// A handler that serves `chunks` one after another as one body.
    pub fn from_chunks(chunks: Arc<[Bytes]>) -> Self {
        Self::with_chunks(Chunks::Many(chunks))
    }

    fn with_chunks(chunks: Chunks) -> Self {
        let len = match &chunks {
            Chunks::One(bytes) => bytes.len(),
            Chunks::Many(chunks) => chunks.iter().map(Bytes::len).sum(),
        };
        BodyHitHandler {
            chunks,
            len,
            pos: 0,
            end: len,
            chunk_idx: 0,
            chunk_start: 0,
            entry_id: None,
            eviction_weight: len,
        }
    }

    /// Report `entry_id` from [`HandleHit::entry_id`].
    pub fn with_entry_id(mut self, entry_id: Option<CacheEntryId>) -> Self {
        self.entry_id = entry_id;
        self
    }

    /// Report `weight` from [`HandleHit::get_eviction_weight`] (default: the
    /// body length).
    pub fn with_eviction_weight(mut self, weight: usize) -> Self {
        self.eviction_weight = weight;
        self
    }

    /// The length of the whole stored body, whatever range is selected.
    pub fn body_len(&self) -> usize {
        self.len
    }

    fn select(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let (start, end) = seek_range(start, end, self.len)?;
        // A seek restarts reading, so one handler can serve several ranges.
        self.pos = start;
        self.end = end;
        // Walk back to the chunk holding `start`: rewind when seeking
        // backwards, then move forward in `read_body`.
        if start < self.chunk_start {
            self.chunk_idx = 0;
            self.chunk_start = 0;
        }
        Ok(())
    }
}

#[async_trait]
impl HandleHit for BodyHitHandler {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        while self.pos < self.end {
            let Some(chunk) = self.chunks.get(self.chunk_idx) else {
                break;
            };
            let chunk_end = self.chunk_start + chunk.len();
            if self.pos >= chunk_end {
                self.chunk_idx += 1;
                self.chunk_start = chunk_end;
                continue;
            }
            let from = self.pos - self.chunk_start;
            let to = self.end.min(chunk_end) - self.chunk_start;
            self.pos += to - from;
            return Ok(Some(chunk.slice(from..to)));
        }
        Ok(None)
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
        self.select(start, end)
    }

    fn seek_multipart(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        self.select(start, end)
    }

    fn get_eviction_weight(&self) -> usize {
        self.eviction_weight
    }

    fn entry_id(&self) -> Option<CacheEntryId> {
        self.entry_id
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn announced_length_is_read_only_when_valid() {
        let meta = |v: &str| crate::testing::meta_with_header("content-length", v);
        assert_eq!(announced_body_len(&meta("1048576")), Some(1 << 20));
        assert_eq!(announced_body_len(&meta("-1")), None);
        assert_eq!(announced_body_len(&meta("ten")), None);
        let none = crate::testing::meta_with_header("x-other", "5");
        assert_eq!(announced_body_len(&none), None);
    }

    fn read_all(hit: &mut BodyHitHandler) -> Vec<u8> {
        block_on(async {
            let mut out = Vec::new();
            while let Some(chunk) = hit.read_body().await.expect("read") {
                out.extend_from_slice(&chunk);
            }
            out
        })
    }

    #[test]
    fn reads_whole_body_then_end() {
        let mut hit = BodyHitHandler::new(Bytes::from_static(b"hello"));
        assert_eq!(read_all(&mut hit), b"hello");
        assert_eq!(block_on(hit.read_body()).expect("read"), None);
    }

    #[test]
    fn seek_none_end_means_body_end_after_bounded_seek() {
        let mut hit = BodyHitHandler::new(Bytes::from_static(b"0123456789"));
        hit.seek(2, Some(4)).expect("seek");
        assert_eq!(read_all(&mut hit), b"23");
        hit.seek(5, None).expect("seek");
        assert_eq!(read_all(&mut hit), b"56789");
        hit.seek_multipart(1, Some(3)).expect("seek");
        assert_eq!(read_all(&mut hit), b"12");
        hit.seek_multipart(8, None).expect("seek");
        assert_eq!(read_all(&mut hit), b"89");
    }

    #[test]
    fn end_past_body_is_clamped() {
        let mut hit = BodyHitHandler::new(Bytes::from_static(b"abc"));
        hit.seek(1, Some(100)).expect("seek");
        assert_eq!(read_all(&mut hit), b"bc");
    }

    #[test]
    fn start_past_body_is_an_error() {
        let mut hit = BodyHitHandler::new(Bytes::from_static(b"abc"));
        assert!(hit.seek(3, None).is_err());
        assert!(hit.seek_multipart(10, Some(12)).is_err());
        // A failed seek leaves the previous selection in place.
        assert_eq!(read_all(&mut hit), b"abc");
    }

    #[test]
    fn end_before_start_is_an_error() {
        let mut hit = BodyHitHandler::new(Bytes::from_static(b"abcdef"));
        assert!(hit.seek(4, Some(2)).is_err());
    }

    #[test]
    fn empty_body_reads_as_end_and_seeks_to_zero() {
        let mut hit = BodyHitHandler::new(Bytes::new());
        assert_eq!(read_all(&mut hit), b"");
        hit.seek(0, None).expect("seek to 0 of an empty body");
        assert_eq!(read_all(&mut hit), b"");
        assert!(hit.seek(1, None).is_err());
    }

    #[test]
    fn chunked_body_reads_and_seeks_across_chunk_boundaries() {
        let chunks: Arc<[Bytes]> = vec![
            Bytes::from_static(b"012"),
            Bytes::new(),
            Bytes::from_static(b"3456"),
            Bytes::from_static(b"789"),
        ]
        .into();
        let mut hit = BodyHitHandler::from_chunks(chunks);
        assert_eq!(hit.body_len(), 10);
        assert_eq!(read_all(&mut hit), b"0123456789");
        hit.seek(2, Some(8)).expect("seek");
        assert_eq!(read_all(&mut hit), b"234567");
        hit.seek(8, None).expect("seek");
        assert_eq!(read_all(&mut hit), b"89");
        hit.seek_multipart(0, Some(1)).expect("seek back");
        assert_eq!(read_all(&mut hit), b"0");
    }

    proptest! {
        #[test]
        fn chunked_seek_matches_slice_semantics(
            sizes in proptest::collection::vec(0usize..9, 0..6),
            seeks in proptest::collection::vec((0usize..50, proptest::option::of(0usize..50)), 1..4),
        ) {
            let mut body = Vec::new();
            let mut chunks = Vec::new();
            for size in sizes {
                let chunk: Vec<u8> = (body.len()..body.len() + size).map(|b| b as u8).collect();
                body.extend_from_slice(&chunk);
                chunks.push(Bytes::from(chunk));
            }
            let mut hit = BodyHitHandler::from_chunks(chunks.into());
            let len = body.len();
            for (start, end) in seeks {
                let clamped_end = end.map_or(len, |e| e.min(len));
                let valid = (start < len || (len == 0 && start == 0)) && clamped_end >= start;
                prop_assert_eq!(hit.seek(start, end).is_ok(), valid);
                if valid {
                    prop_assert_eq!(read_all(&mut hit), body[start..clamped_end].to_vec());
                }
            }
        }

        #[test]
        fn any_seek_matches_slice_semantics(
            len in 0usize..64,
            start in 0usize..80,
            end in proptest::option::of(0usize..80),
        ) {
            let body: Vec<u8> = (0..len as u8).collect();
            let mut hit = BodyHitHandler::new(Bytes::from(body.clone()));
            let result = hit.seek(start, end);
            let clamped_end = end.map_or(len, |e| e.min(len));
            let valid = (start < len || (len == 0 && start == 0)) && clamped_end >= start;
            prop_assert_eq!(result.is_ok(), valid);
            if valid {
                prop_assert_eq!(read_all(&mut hit), body[start..clamped_end].to_vec());
            }
        }
    }
}
