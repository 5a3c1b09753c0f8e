//! The filling client's reader of a miss: it follows the tier the miss is
//! written to, and takes the rest of the body straight from the miss
//! handler once that tier stops storing it (the body grew past the tier's
//! limit) or when no tier took the body at all.
//!
//! pingora-proxy 0.9.1, with streaming partial writes, serves the client of
//! a miss only from the reader `lookup_streaming_write` returns for the miss
//! handler's tag (and panics if there is none), turns an error from
//! `write_body` into a failed response, and on an error from `finish`
//! disables the cache, dropping that reader. A reader that only followed a
//! tier's write would be cut off where the tier gave up.
//!
//! While a tier stores the body, the client reads the tier's copy and
//! nothing is buffered here. Once the tier stops at byte `X`, its write is
//! kept open (parked in the feed, not finished) until the client has read up
//! to `X` from it, and the bytes from `X` on are buffered for the client. The
//! writer never waits for the reader (pingora writes and reads in one task,
//! so a writer waiting for its reader would wait forever): a client that
//! lags more than [`MAX_CLIENT_LAG`] bytes behind the origin past `X` fails
//! with an error instead of growing the buffer further.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora_cache::storage::{HandleHit, HitHandler, MissHandler, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryId, CacheKey};
use pingora_error::{Error, ErrorType, Result};
use tokio::sync::Notify;

/// The most a client may lag behind the origin, in bytes buffered for it,
/// once its tier stopped storing the body.
pub(crate) const MAX_CLIENT_LAG: usize = 64 << 20;

#[derive(Default)]
struct State {
    /// Where the client's tier stopped storing; from there on the client
    /// reads `chunks`. `Some(0)` when no tier took the body.
    switch_at: Option<u64>,
    /// The stopped tier's write, kept open until the client read up to
    /// `switch_at` from it.
    parked: Option<MissHandler>,
    chunks: VecDeque<Bytes>,
    buffered: usize,
    done: bool,
    aborted: bool,
    overflowed: bool,
}

#[derive(Default)]
struct Feed {
    state: Mutex<State>,
    ready: Notify,
}

/// The miss handler's end.
pub(crate) struct ClientWriter {
    feed: Weak<Feed>,
    ended: bool,
}

/// The client's end, waiting in the hybrid until pingora takes it.
pub(crate) struct ClientSlot {
    feed: Arc<Feed>,
}

impl std::fmt::Debug for ClientSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSlot").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ClientWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientWriter")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// The client's reader.
pub(crate) struct ClientReader {
    feed: Arc<Feed>,
    follower: Option<HitHandler>,
    /// The next byte's offset in the body.
    pos: u64,
    /// Offset of the first byte of `feed.chunks`, once switched to them.
    buffered_from: Option<u64>,
    entry_id: Option<CacheEntryId>,
}

impl std::fmt::Debug for ClientReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientReader")
            .field("pos", &self.pos)
            .field("following", &self.follower.is_some())
            .finish()
    }
}

/// A connected writer and the slot its reader is built from.
pub(crate) fn client_feed() -> (ClientWriter, ClientSlot) {
    let feed = Arc::new(Feed::default());
    (
        ClientWriter {
            feed: Arc::downgrade(&feed),
            ended: false,
        },
        ClientSlot { feed },
    )
}

impl ClientSlot {
    /// The reader: following `follower` (the client's tier's write), or,
    /// without one, reading only what the miss handler hands over.
    pub(crate) fn reader(
        self,
        follower: Option<HitHandler>,
        entry_id: Option<CacheEntryId>,
    ) -> ClientReader {
        if follower.is_none() {
            self.feed.state.lock().switch_at.get_or_insert(0);
        }
        ClientReader {
            feed: self.feed,
            follower,
            pos: 0,
            buffered_from: None,
            entry_id,
        }
    }
}

impl ClientWriter {
    /// Whether a reader (or its slot) still exists.
    pub(crate) fn has_reader(&self) -> bool {
        self.feed.strong_count() > 0
    }

    /// The client's tier stopped storing at byte `at`; keep its write open
    /// for the client until it read that far, and hand it the rest.
    pub(crate) fn switch(&self, at: u64, tier_write: Option<MissHandler>) {
        let Some(feed) = self.feed.upgrade() else {
            return;
        };
        let mut state = feed.state.lock();
        if state.switch_at.is_none() {
            state.switch_at = Some(at);
            state.parked = tier_write;
        }
        drop(state);
        feed.ready.notify_one();
    }

    /// Hand `data` to the client if it reads from here now.
    pub(crate) fn push(&self, data: &Bytes) {
        if data.is_empty() {
            return;
        }
        let Some(feed) = self.feed.upgrade() else {
            return;
        };
        let mut state = feed.state.lock();
        if state.switch_at.is_none() || state.overflowed {
            return;
        }
        if state.buffered + data.len() > MAX_CLIENT_LAG {
            // The client fell too far behind: give up on it rather than
            // hold an unbounded body in memory.
            state.overflowed = true;
            state.chunks.clear();
            state.buffered = 0;
        } else {
            state.buffered += data.len();
            state.chunks.push_back(data.clone());
        }
        drop(state);
        feed.ready.notify_one();
    }

    /// The body is complete: the reader ends cleanly after the last chunk.
    pub(crate) fn finish(mut self) {
        self.end(false);
    }

    fn end(&mut self, aborted: bool) {
        if self.ended {
            return;
        }
        self.ended = true;
        if let Some(feed) = self.feed.upgrade() {
            let mut state = feed.state.lock();
            state.done = true;
            state.aborted = aborted;
            if aborted {
                // The stopped tier's write ends with the miss: its readers fail.
                state.parked = None;
            }
            drop(state);
            feed.ready.notify_one();
        }
    }
}

impl Drop for ClientWriter {
    /// A writer gone before the end: the reader fails, never ends cleanly.
    fn drop(&mut self) {
        self.end(true);
    }
}

fn aborted() -> Box<Error> {
    Error::explain(
        ErrorType::Custom("TierWriteAborted"),
        "hybrid: the writer of this body stopped before the end",
    )
}

impl ClientReader {
    /// The next chunk handed over by the miss handler, from `self.pos`.
    /// `None` inside means wait.
    fn take_handed_over(&mut self, from: u64) -> Option<Result<Option<Bytes>>> {
        let buffered_from = self.buffered_from.get_or_insert(from);
        let mut state = self.feed.state.lock();
        if state.overflowed {
            return Some(Err(Error::explain(
                ErrorType::Custom("ClientTooSlow"),
                format!(
                    "hybrid: the client fell more than {MAX_CLIENT_LAG} bytes behind a body no tier stores"
                ),
            )));
        }
        while let Some(mut chunk) = state.chunks.pop_front() {
            state.buffered -= chunk.len();
            let chunk_end = *buffered_from + chunk.len() as u64;
            if chunk_end <= self.pos {
                *buffered_from = chunk_end;
                continue;
            }
            let skip = self.pos.saturating_sub(*buffered_from) as usize;
            chunk = chunk.slice(skip..);
            *buffered_from = chunk_end;
            self.pos = chunk_end;
            return Some(Ok(Some(chunk)));
        }
        if state.aborted {
            return Some(Err(aborted()));
        }
        if state.done {
            return Some(Ok(None));
        }
        None
    }
}

#[async_trait]
impl HandleHit for ClientReader {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            let feed = self.feed.clone();
            let ready = feed.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let switch_at = self.feed.state.lock().switch_at;
            if let Some(at) = switch_at.filter(|at| self.pos >= *at) {
                if self.follower.take().is_some() {
                    // Read up to where the tier stopped: its write can go.
                    self.feed.state.lock().parked = None;
                }
                match self.take_handed_over(at) {
                    Some(result) => return result,
                    None => {
                        ready.await;
                        continue;
                    }
                }
            }
            let Some(follower) = self.follower.as_mut() else {
                ready.await;
                continue;
            };
            tokio::select! {
                read = follower.read_body() => match read {
                    Ok(Some(mut chunk)) => {
                        // Never past where the tier stopped: the rest comes
                        // from the miss handler.
                        if let Some(at) = switch_at {
                            let room = at.saturating_sub(self.pos) as usize;
                            chunk.truncate(room.min(chunk.len()));
                        }
                        self.pos += chunk.len() as u64;
                        return Ok(Some(chunk));
                    }
                    Ok(None) => return Ok(None),
                    Err(e) => {
                        let at = self.feed.state.lock().switch_at;
                        if at.is_some_and(|at| self.pos >= at) {
                            continue;
                        }
                        return Err(e);
                    }
                },
                _ = &mut ready => continue,
            }
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
        false
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

    /// A tier's write in progress that stored `chunks` and then stalls, as a
    /// write whose tier stopped being fed does.
    struct Stalled(VecDeque<Bytes>);

    #[async_trait]
    impl HandleHit for Stalled {
        async fn read_body(&mut self) -> Result<Option<Bytes>> {
            match self.0.pop_front() {
                Some(chunk) => Ok(Some(chunk)),
                None => futures_pending().await,
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

        fn as_any(&self) -> &(dyn Any + Send + Sync) {
            self
        }

        fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
            self
        }
    }

    async fn futures_pending<T>() -> T {
        std::future::pending().await
    }

    async fn read_all(reader: &mut ClientReader) -> Result<Vec<u8>> {
        let mut got = Vec::new();
        while let Some(chunk) = reader.read_body().await? {
            got.extend_from_slice(&chunk);
        }
        Ok(got)
    }

    #[tokio::test]
    async fn without_a_tier_the_client_gets_every_chunk_then_a_clean_end() {
        let (writer, slot) = client_feed();
        writer.switch(0, None);
        let mut reader = slot.reader(None, None);
        writer.push(&Bytes::from_static(b"ab"));
        let reading = tokio::spawn(async move { read_all(&mut reader).await });
        tokio::task::yield_now().await;
        writer.push(&Bytes::from_static(b"cd"));
        writer.finish();
        assert_eq!(reading.await.expect("task").expect("read"), b"abcd");
    }

    #[tokio::test]
    async fn a_writer_gone_before_the_end_fails_the_client() {
        let (writer, slot) = client_feed();
        let mut reader = slot.reader(None, None);
        writer.push(&Bytes::from_static(b"ab"));
        drop(writer);
        assert!(reader.read_body().await.expect("first").is_some());
        assert!(
            reader.read_body().await.is_err(),
            "a clean end after an abort"
        );
    }

    #[tokio::test]
    async fn the_client_follows_its_tier_then_takes_the_rest_from_the_miss() {
        let (writer, slot) = client_feed();
        let stored: VecDeque<Bytes> = [&b"0123"[..], b"4567"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        let mut reader = slot.reader(Some(Box::new(Stalled(stored))), None);
        // Nothing is buffered while the tier stores the body.
        writer.push(&Bytes::from_static(b"0123"));
        writer.push(&Bytes::from_static(b"4567"));
        assert_eq!(reader.feed.state.lock().buffered, 0);
        let reading = tokio::spawn(async move { read_all(&mut reader).await });
        tokio::task::yield_now().await;
        // The tier stops at byte 8; the rest comes from the miss.
        writer.switch(8, None);
        writer.push(&Bytes::from_static(b"89"));
        writer.finish();
        assert_eq!(reading.await.expect("task").expect("read"), b"0123456789");
    }

    #[tokio::test]
    async fn a_client_too_far_behind_fails_instead_of_growing_the_buffer() {
        let (writer, slot) = client_feed();
        writer.switch(0, None);
        let mut reader = slot.reader(None, None);
        let mib = Bytes::from(vec![7u8; 1 << 20]);
        for _ in 0..(MAX_CLIENT_LAG >> 20) + 1 {
            writer.push(&mib);
        }
        assert_eq!(reader.feed.state.lock().buffered, 0, "the buffer was kept");
        let err = reader.read_body().await.expect_err("too slow");
        assert!(err.to_string().contains("behind"), "{err}");
    }
}
