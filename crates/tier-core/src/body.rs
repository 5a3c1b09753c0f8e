//! A hit handler over a complete body held in memory.

use std::any::Any;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_cache::eviction::CacheEntryId;
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::CacheKey;
use pingora_error::Result;

use crate::error::seek_out_of_range;

/// Serves a complete in-memory body, with range seeks.
///
/// Reading hands out the selected range as one [`Bytes`] slice of the stored
/// body: no copy, however large the body. `seek(start, end)` selects
/// `start..end` (`end` clamped to the body length); `end: None` always means the
/// end of the body, whatever an earlier seek selected. A `start` at or past the
/// end of a non-empty body is an error, and so is an `end` before `start`.
/// An empty body reads as the end of body at once, and `seek(0, _)` on it is
/// allowed and selects nothing.
#[derive(Debug, Clone)]
pub struct BodyHitHandler {
    body: Bytes,
    start: usize,
    end: usize,
    done: bool,
    entry_id: Option<CacheEntryId>,
    eviction_weight: usize,
}

impl BodyHitHandler {
    /// A handler that serves all of `body`.
    pub fn new(body: Bytes) -> Self {
        let end = body.len();
        BodyHitHandler {
            eviction_weight: end,
            body,
            start: 0,
            end,
            done: false,
            entry_id: None,
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

    /// The whole stored body, whatever range is selected.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    fn select(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        let len = self.body.len();
        let past_end = if len == 0 { start > 0 } else { start >= len };
        if past_end {
            return Err(seek_out_of_range(start, end, len));
        }
        let end = end.map_or(len, |end| end.min(len));
        if end < start {
            return Err(seek_out_of_range(start, Some(end), len));
        }
        self.start = start;
        self.end = end;
        // A seek restarts reading, so one handler can serve several ranges.
        self.done = false;
        Ok(())
    }
}

#[async_trait]
impl HandleHit for BodyHitHandler {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.done || self.start == self.end {
            self.done = true;
            return Ok(None);
        }
        self.done = true;
        Ok(Some(self.body.slice(self.start..self.end)))
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

    proptest! {
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
