//! The client's copy of a miss: the body handed straight from the miss
//! handler to the reader pingora serves the filling client from, whatever
//! the tiers do with it.
//!
//! pingora-proxy 0.9.1, with streaming partial writes, serves the client of
//! a miss only from the reader `lookup_streaming_write` returns for the miss
//! handler's tag (and panics if there is none), turns an error from
//! `write_body` into a failed response, and on an error from `finish`
//! disables the cache, dropping that reader. So if the client followed a
//! tier's write, a body that grows past the tiers' limits would be cut off
//! for it. This reader follows the miss handler itself: tiers may give up
//! on storing the body, the client still gets every byte.
//!
//! The writer never waits for the reader: pingora writes and reads in one
//! task, so a writer waiting for its reader would wait forever. What the
//! reader has not taken yet stays buffered, so memory is bounded by how far
//! the client lags behind the origin (pingora reads the origin regardless
//! of the client while it fills the cache), and by nothing once the reader
//! is gone: a dropped reader stops the buffering.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora_cache::storage::{HandleHit, Storage};
use pingora_cache::trace::SpanHandle;
use pingora_cache::{CacheEntryId, CacheKey};
use pingora_error::{Error, ErrorType, Result};
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct State {
    chunks: VecDeque<Bytes>,
    done: bool,
    aborted: bool,
}

#[derive(Debug, Default)]
struct Channel {
    state: Mutex<State>,
    ready: Notify,
}

/// The miss handler's end.
#[derive(Debug)]
pub(crate) struct PassWriter {
    channel: Weak<Channel>,
    ended: bool,
}

/// The client's end.
#[derive(Debug)]
pub(crate) struct PassReader {
    channel: Arc<Channel>,
    entry_id: Option<CacheEntryId>,
}

/// A connected writer and reader.
pub(crate) fn pass_through(entry_id: Option<CacheEntryId>) -> (PassWriter, PassReader) {
    let channel = Arc::new(Channel::default());
    (
        PassWriter {
            channel: Arc::downgrade(&channel),
            ended: false,
        },
        PassReader { channel, entry_id },
    )
}

impl PassWriter {
    /// Whether a reader still takes what is written.
    pub(crate) fn has_reader(&self) -> bool {
        self.channel.strong_count() > 0
    }

    /// Hand `data` to the reader; dropped when the reader is gone.
    pub(crate) fn push(&self, data: &Bytes) {
        if data.is_empty() {
            return;
        }
        if let Some(channel) = self.channel.upgrade() {
            channel.state.lock().chunks.push_back(data.clone());
            channel.ready.notify_one();
        }
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
        if let Some(channel) = self.channel.upgrade() {
            let mut state = channel.state.lock();
            state.done = true;
            state.aborted = aborted;
            drop(state);
            channel.ready.notify_one();
        }
    }
}

impl Drop for PassWriter {
    /// A writer gone before the end: the reader fails, never ends cleanly.
    fn drop(&mut self) {
        self.end(true);
    }
}

#[async_trait]
impl HandleHit for PassReader {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        loop {
            let ready = self.channel.ready.notified();
            {
                let mut state = self.channel.state.lock();
                if let Some(chunk) = state.chunks.pop_front() {
                    return Ok(Some(chunk));
                }
                if state.aborted {
                    return Err(Error::explain(
                        ErrorType::Custom("TierWriteAborted"),
                        "hybrid: the writer of this body stopped before the end",
                    ));
                }
                if state.done {
                    return Ok(None);
                }
            }
            ready.await;
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

    #[tokio::test]
    async fn the_reader_gets_every_chunk_then_a_clean_end() {
        let (writer, mut reader) = pass_through(None);
        writer.push(&Bytes::from_static(b"ab"));
        writer.push(&Bytes::from_static(b"cd"));
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(chunk) = reader.read_body().await.expect("read") {
                got.extend_from_slice(&chunk);
            }
            got
        });
        tokio::task::yield_now().await;
        writer.push(&Bytes::from_static(b"ef"));
        writer.finish();
        assert_eq!(waiting.await.expect("task"), b"abcdef");
    }

    #[tokio::test]
    async fn a_writer_gone_before_the_end_fails_the_reader() {
        let (writer, mut reader) = pass_through(None);
        writer.push(&Bytes::from_static(b"ab"));
        drop(writer);
        assert!(reader.read_body().await.expect("first").is_some());
        assert!(
            reader.read_body().await.is_err(),
            "a clean end after an abort"
        );
    }

    #[tokio::test]
    async fn nothing_is_buffered_once_the_reader_is_gone() {
        let (writer, reader) = pass_through(None);
        let channel = Arc::downgrade(&reader.channel);
        drop(reader);
        assert!(!writer.has_reader());
        writer.push(&Bytes::from_static(b"lost"));
        assert!(channel.upgrade().is_none());
    }
}
