//! Readers of a miss in progress: the filling client, and the requests that
//! follow the fill (pingora's cache-lock waiters). Each follows the tier the
//! miss is written to, and takes the rest of the body straight from the miss
//! handler once that tier stops storing it (the body grew past the tier's
//! limit), or from the start when no tier took the body at all.
//!
//! pingora-proxy 0.9.1, with streaming partial writes, serves the client of
//! a miss only from the reader `lookup_streaming_write` returns for the miss
//! handler's tag (and panics if there is none), turns an error from
//! `write_body` into a failed response, and on an error from `finish`
//! disables the cache, dropping that reader. A reader that only followed a
//! tier's write would be cut off where the tier gave up.
//!
//! While a tier stores the body, readers read the tier's copy and nothing is
//! buffered here. Once the tier stops at byte `X`, its write is kept open
//! (parked in the feed, not finished) while any reader may still need bytes
//! before `X` from it, and the bytes from `X` on are buffered, each chunk
//! until every reader has read it. The writer never waits for its readers
//! (pingora writes and reads in one task, so a writer waiting for its reader
//! would wait forever): when the slowest reader lags more than
//! [`MAX_CLIENT_LAG`] bytes behind the origin, the buffer is given up and
//! the readers still needing it fail with an error. A request that arrives
//! once the buffer has dropped a chunk cannot be served from it and is not
//! handed the fill ([`FeedRef::join`] says no): it misses and fetches the
//! object itself.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora_cache::storage::{HandleHit, HitHandler, MissHandler, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryId, CacheKey};
use pingora_error::{Error, ErrorType, Result};
use tokio::sync::Notify;

/// The most a fill buffers for its readers once its tier stopped storing
/// the body: the slowest reader's lag behind the origin.
pub(crate) const MAX_CLIENT_LAG: usize = 64 << 20;

#[derive(Default)]
struct State {
    /// Where the tier stopped storing; from there on readers read `chunks`.
    /// `Some(0)` when no tier took the body.
    switch_at: Option<u64>,
    /// The stopped tier's write, kept open while a reader may still read
    /// bytes before `switch_at` from it.
    parked: Option<MissHandler>,
    chunks: VecDeque<Bytes>,
    /// Chunks and bytes dropped from the front of `chunks` once every reader
    /// had read them.
    trimmed_chunks: u64,
    trimmed_bytes: u64,
    buffered: usize,
    done: bool,
    aborted: bool,
    overflowed: bool,
    /// The miss has ended: no new reader may join (what it would read was
    /// never published, so a purge since would not have reached it).
    closed: bool,
    /// Every reader's position, to know what all of them have read.
    positions: Vec<Weak<AtomicU64>>,
}

impl State {
    /// Drop the chunks every live reader has read, and the parked write
    /// once no reader needs bytes before the switch.
    fn trim(&mut self) {
        let Some(switch_at) = self.switch_at else {
            return;
        };
        self.positions.retain(|p| p.strong_count() > 0);
        let slowest = self
            .positions
            .iter()
            .filter_map(Weak::upgrade)
            .map(|p| p.load(Ordering::Acquire))
            .min();
        let Some(slowest) = slowest else {
            return;
        };
        if slowest >= switch_at {
            self.parked = None;
        }
        while let Some(front) = self.chunks.front() {
            let end = switch_at + self.trimmed_bytes + front.len() as u64;
            if end > slowest {
                break;
            }
            self.trimmed_bytes += front.len() as u64;
            self.buffered -= front.len();
            self.trimmed_chunks += 1;
            self.chunks.pop_front();
        }
    }
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

/// A handle on a fill's feed, from which readers join it.
#[derive(Clone)]
pub(crate) struct FeedRef {
    feed: Weak<Feed>,
}

/// The filling client's end, waiting in the hybrid until pingora takes it;
/// it keeps the feed alive until then.
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

impl std::fmt::Debug for FeedRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedRef").finish_non_exhaustive()
    }
}

/// A reader of a fill.
pub(crate) struct ClientReader {
    feed: Arc<Feed>,
    follower: Option<HitHandler>,
    /// The next byte's offset in the body, shared with the feed.
    pos: Arc<AtomicU64>,
    /// The absolute index of the next buffered chunk to read, and where it
    /// starts, once reading from the buffer.
    next_chunk: Option<(u64, u64)>,
    entry_id: Option<CacheEntryId>,
}

impl std::fmt::Debug for ClientReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientReader")
            .field("pos", &self.pos.load(Ordering::Relaxed))
            .field("following", &self.follower.is_some())
            .finish()
    }
}

/// A connected writer and the slot the filling client's reader is built
/// from.
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

fn join(
    feed: Arc<Feed>,
    follower: Option<HitHandler>,
    entry_id: Option<CacheEntryId>,
) -> Option<ClientReader> {
    let pos = Arc::new(AtomicU64::new(0));
    {
        let mut state = feed.state.lock();
        if follower.is_none() {
            state.switch_at.get_or_insert(0);
        }
        // What was dropped from the buffer cannot be read again, and a miss
        // that ended takes no new reader.
        if state.trimmed_chunks > 0 || state.overflowed || state.closed {
            return None;
        }
        state.positions.push(Arc::downgrade(&pos));
    }
    Some(ClientReader {
        feed,
        follower,
        pos,
        next_chunk: None,
        entry_id,
    })
}

impl ClientSlot {
    /// The filling client's reader: following `follower` (its tier's write),
    /// or, without one, reading only what the miss handler hands over.
    pub(crate) fn reader(
        self,
        follower: Option<HitHandler>,
        entry_id: Option<CacheEntryId>,
    ) -> Option<ClientReader> {
        join(self.feed, follower, entry_id)
    }
}

/// What a request that found a fill's tier write gets.
pub(crate) enum Joined {
    /// A reader of the fill.
    Reader(ClientReader),
    /// The fill is over and its readers gone: the hit is an ordinary one.
    NotAFill(HitHandler),
    /// The fill can no longer serve a reader from the start (its buffer
    /// dropped a chunk), or the miss has ended: the request should miss and
    /// fetch the object.
    Refused,
}

impl FeedRef {
    /// Join the fill with the hit a request found of its tier write.
    pub(crate) fn join(&self, follower: HitHandler) -> Joined {
        let Some(feed) = self.feed.upgrade() else {
            return Joined::NotAFill(follower);
        };
        let entry_id = follower.entry_id();
        match join(feed, Some(follower), entry_id) {
            Some(reader) => Joined::Reader(reader),
            None => Joined::Refused,
        }
    }

    /// Whether the fill is gone, or never stopped its tier (so its tier
    /// write is, or was, an ordinary one).
    pub(crate) fn is_unswitched(&self) -> bool {
        self.feed
            .upgrade()
            .is_none_or(|feed| feed.state.lock().switch_at.is_none())
    }

    /// Whether the fill still exists.
    pub(crate) fn is_live(&self) -> bool {
        self.feed.strong_count() > 0
    }
}

impl ClientWriter {
    /// Whether the filling client's reader (or its slot) still exists.
    pub(crate) fn has_reader(&self) -> bool {
        self.feed.strong_count() > 0
    }

    /// A handle for joining readers.
    pub(crate) fn feed_ref(&self) -> FeedRef {
        FeedRef {
            feed: self.feed.clone(),
        }
    }

    /// The tier readers follow stopped storing at byte `at`; keep its write
    /// open for them until they read that far, and hand them the rest.
    pub(crate) fn switch(&self, at: u64, tier_write: Option<MissHandler>) {
        let Some(feed) = self.feed.upgrade() else {
            return;
        };
        let mut state = feed.state.lock();
        if state.switch_at.is_none() {
            state.switch_at = Some(at);
            state.parked = tier_write;
            state.trim();
        }
        drop(state);
        feed.ready.notify_waiters();
    }

    /// Hand `data` to the readers if they read from here now.
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
        state.trim();
        if state.buffered + data.len() > MAX_CLIENT_LAG {
            // The slowest reader fell too far behind: give up on the buffer
            // rather than hold an unbounded body in memory.
            state.overflowed = true;
            state.chunks.clear();
            state.buffered = 0;
        } else {
            state.buffered += data.len();
            state.chunks.push_back(data.clone());
        }
        drop(state);
        feed.ready.notify_waiters();
    }

    /// The body is complete: readers end cleanly after the last chunk.
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
            state.closed = true;
            state.aborted = aborted;
            if aborted {
                // The stopped tier's write ends with the miss: its readers fail.
                state.parked = None;
            }
            drop(state);
            feed.ready.notify_waiters();
        }
    }
}

impl Drop for ClientWriter {
    /// A writer gone before the end: readers fail, never end cleanly.
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
    /// The next chunk handed over by the miss handler. `None` means wait.
    fn take_handed_over(&mut self, switch_at: u64) -> Option<Result<Option<Bytes>>> {
        let mut state = self.feed.state.lock();
        if state.overflowed {
            return Some(Err(Error::explain(
                ErrorType::Custom("ClientTooSlow"),
                format!(
                    "hybrid: a reader fell more than {MAX_CLIENT_LAG} bytes behind a body no tier stores"
                ),
            )));
        }
        let pos = self.pos.load(Ordering::Acquire);
        let (mut idx, mut start) = self.next_chunk.unwrap_or((0, switch_at));
        loop {
            let Some(local) = idx.checked_sub(state.trimmed_chunks) else {
                // Trimmed under us: cannot happen while our position is
                // counted, but never serve a wrong byte.
                return Some(Err(aborted()));
            };
            let Some(chunk) = state.chunks.get(local as usize) else {
                break;
            };
            let end = start + chunk.len() as u64;
            if end <= pos {
                idx += 1;
                start = end;
                continue;
            }
            let skip = pos.saturating_sub(start) as usize;
            let chunk = chunk.slice(skip..);
            self.next_chunk = Some((idx + 1, end));
            self.pos.store(end, Ordering::Release);
            state.trim();
            return Some(Ok(Some(chunk)));
        }
        self.next_chunk = Some((idx, start));
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
            let switch_at = feed.state.lock().switch_at;
            let pos = self.pos.load(Ordering::Acquire);
            if let Some(at) = switch_at.filter(|at| pos >= *at) {
                if self.follower.take().is_some() {
                    // Read up to where the tier stopped: let the feed know.
                    feed.state.lock().trim();
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
                            let room = at.saturating_sub(pos) as usize;
                            chunk.truncate(room.min(chunk.len()));
                        }
                        self.pos.store(pos + chunk.len() as u64, Ordering::Release);
                        return Ok(Some(chunk));
                    }
                    Ok(None) => return Ok(None),
                    Err(e) => {
                        let at = feed.state.lock().switch_at;
                        if at.is_some_and(|at| pos >= at) {
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

impl Drop for ClientReader {
    fn drop(&mut self) {
        // This reader no longer holds anything back.
        let pos = std::mem::take(&mut self.pos);
        drop(pos);
        self.feed.state.lock().trim();
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
                None => std::future::pending().await,
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

    fn stalled(chunks: &[&'static [u8]]) -> HitHandler {
        Box::new(Stalled(
            chunks.iter().copied().map(Bytes::from_static).collect(),
        ))
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
        let mut reader = slot.reader(None, None).expect("reader");
        writer.push(&Bytes::from_static(b"ab"));
        let reading = tokio::spawn(async move { read_all(&mut reader).await });
        tokio::task::yield_now().await;
        writer.push(&Bytes::from_static(b"cd"));
        writer.finish();
        assert_eq!(reading.await.expect("task").expect("read"), b"abcd");
    }

    #[tokio::test]
    async fn a_writer_gone_before_the_end_fails_the_readers() {
        let (writer, slot) = client_feed();
        let mut reader = slot.reader(None, None).expect("reader");
        writer.push(&Bytes::from_static(b"ab"));
        drop(writer);
        assert!(reader.read_body().await.expect("first").is_some());
        assert!(
            reader.read_body().await.is_err(),
            "a clean end after an abort"
        );
    }

    #[tokio::test]
    async fn readers_follow_their_tier_then_take_the_rest_from_the_miss() {
        let (writer, slot) = client_feed();
        let feed = writer.feed_ref();
        let mut client = slot
            .reader(Some(stalled(&[b"0123", b"4567"])), None)
            .expect("client");
        let Joined::Reader(mut follower) = feed.join(stalled(&[b"0123", b"4567"])) else {
            panic!("a follower could not join before the switch");
        };
        // Nothing is buffered while the tier stores the body.
        writer.push(&Bytes::from_static(b"0123"));
        writer.push(&Bytes::from_static(b"4567"));
        assert_eq!(client.feed.state.lock().buffered, 0);
        let reading = tokio::spawn(async move { read_all(&mut client).await });
        tokio::task::yield_now().await;
        // The tier stops at byte 8; the rest comes from the miss.
        writer.switch(8, None);
        writer.push(&Bytes::from_static(b"89"));
        writer.push(&Bytes::from_static(b"ab"));
        writer.finish();
        assert_eq!(reading.await.expect("task").expect("read"), b"0123456789ab");
        // The slower follower still has every byte: the chunks it has not
        // read were kept for it.
        assert_eq!(
            read_all(&mut follower).await.expect("read"),
            b"0123456789ab"
        );
    }

    #[tokio::test]
    async fn a_late_request_is_refused_once_the_buffer_dropped_a_chunk() {
        let (writer, slot) = client_feed();
        let feed = writer.feed_ref();
        writer.switch(0, None);
        let mut client = slot.reader(None, None).expect("client");
        writer.push(&Bytes::from_static(b"ab"));
        writer.push(&Bytes::from_static(b"cd"));
        assert_eq!(
            client.read_body().await.expect("read").as_deref(),
            Some(&b"ab"[..])
        );
        // "ab" is read by everyone and dropped: a newcomer would miss it.
        writer.push(&Bytes::from_static(b"ef"));
        assert!(matches!(feed.join(stalled(&[])), Joined::Refused));
        drop(client);
        drop(writer);
        assert!(!feed.is_live());
    }

    #[tokio::test]
    async fn no_request_joins_a_miss_that_ended() {
        let (writer, slot) = client_feed();
        let feed = writer.feed_ref();
        writer.switch(0, None);
        let mut client = slot.reader(None, None).expect("client");
        writer.push(&Bytes::from_static(b"whole"));
        writer.finish();
        assert!(matches!(feed.join(stalled(&[])), Joined::Refused));
        assert_eq!(read_all(&mut client).await.expect("read"), b"whole");
    }

    #[tokio::test]
    async fn a_reader_too_far_behind_fails_instead_of_growing_the_buffer() {
        let (writer, slot) = client_feed();
        writer.switch(0, None);
        let mut reader = slot.reader(None, None).expect("reader");
        let mib = Bytes::from(vec![7u8; 1 << 20]);
        for _ in 0..(MAX_CLIENT_LAG >> 20) + 1 {
            writer.push(&mib);
        }
        assert_eq!(reader.feed.state.lock().buffered, 0, "the buffer was kept");
        let err = reader.read_body().await.expect_err("too slow");
        assert!(err.to_string().contains("behind"), "{err}");
    }
}
