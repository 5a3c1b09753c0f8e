//! The checks: one public async function per behaviour of the `Storage`
//! contract, each taking the storage under test and returning `Err` with a
//! sentence when the storage breaks the contract.

use std::time::SystemTime;

use bytes::Bytes;
use pingora_cache::eviction::{CacheEntryId, CacheEntryKey};
use pingora_cache::key::hash_key;
use pingora_cache::storage::{PurgeOutcome, PurgeTarget, PurgeType};

use crate::support::*;

// ---------------------------------------------------------------------------
// Lookup and round trips
// ---------------------------------------------------------------------------

/// A key that was never written is a miss.
pub async fn miss_returns_none(storage: DynStorage) -> CheckResult {
    let key = unique_key("miss");
    ensure!(
        storage.lookup(&key, &span()).await.ctx("lookup")?.is_none(),
        "lookup of a never-written key returned a hit"
    );
    Ok(())
}

/// Headers, status, freshness and body come back as written.
pub async fn round_trip_headers_and_body(storage: DynStorage) -> CheckResult {
    let key = unique_key("round-trip");
    let written = meta("round-trip");
    let data = body(1, 1000);
    write_entry(storage, &key, &written, &[&data]).await?;
    let read = expect_body(storage, &key, &data).await?;
    ensure!(marker(&read) == "round-trip", "x-conformance header lost");
    ensure!(
        read.response_header().status.as_u16() == 200,
        "status changed to {}",
        read.response_header().status
    );
    ensure!(
        read.headers().get("content-type").map(|v| v.as_bytes())
            == Some(&b"application/octet-stream"[..]),
        "content-type header lost"
    );
    let drift = |a: SystemTime, b: SystemTime| {
        a.duration_since(b)
            .or_else(|_| b.duration_since(a))
            .unwrap_or_default()
    };
    ensure!(
        drift(read.fresh_until(), written.fresh_until()).as_secs() <= 1,
        "fresh_until changed"
    );
    ensure!(
        read.stale_while_revalidate_sec() == written.stale_while_revalidate_sec()
            && read.stale_if_error_sec() == written.stale_if_error_sec(),
        "stale windows changed"
    );
    ensure!(
        read.is_fresh(SystemTime::now()),
        "entry is not fresh after write"
    );
    Ok(())
}

/// A body written in many chunks of uneven sizes reads back concatenated.
pub async fn chunked_body_is_concatenated(storage: DynStorage) -> CheckResult {
    let key = unique_key("chunked");
    let data = body(2, 100_000);
    let mut chunks = Vec::new();
    let mut at = 0;
    let mut size = 1;
    while at < data.len() {
        let end = (at + size).min(data.len());
        chunks.push(&data[at..end]);
        at = end;
        size = size * 3 % 4099 + 1;
    }
    write_entry(storage, &key, &meta("chunked"), &chunks).await?;
    expect_body(storage, &key, &data).await?;
    Ok(())
}

/// An 8 MiB body, written in 64 KiB chunks, reads back intact.
pub async fn large_body_8mib(storage: DynStorage) -> CheckResult {
    let key = unique_key("large");
    let data = body(3, 8 << 20);
    let chunks: Vec<&[u8]> = data.chunks(64 << 10).collect();
    write_entry(storage, &key, &meta("large"), &chunks).await?;
    expect_body(storage, &key, &data).await?;
    Ok(())
}

/// An empty body is stored and reads back as empty.
pub async fn empty_body_round_trips(storage: DynStorage) -> CheckResult {
    let key = unique_key("empty");
    write_entry(storage, &key, &meta("empty"), &[]).await?;
    let read = expect_body(storage, &key, b"").await?;
    ensure!(marker(&read) == "empty", "meta of an empty-body entry lost");
    Ok(())
}

/// After the end of body, further reads keep returning the end.
pub async fn read_after_end_stays_none(storage: DynStorage) -> CheckResult {
    let key = unique_key("read-after-end");
    write_entry(storage, &key, &meta("r"), &[b"abc"]).await?;
    let (_, mut hit) = storage
        .lookup(&key, &span())
        .await
        .ctx("lookup")?
        .ok_or("entry missing")?;
    read_all(&mut hit).await?;
    for _ in 0..3 {
        ensure!(
            read_next(&mut hit).await?.is_none(),
            "read_body returned data after the end of body"
        );
    }
    Ok(())
}

/// Finishing a hit handler succeeds and leaves the entry in place.
pub async fn hit_finish_keeps_entry(storage: DynStorage) -> CheckResult {
    let key = unique_key("hit-finish");
    write_entry(storage, &key, &meta("f"), &[b"kept"]).await?;
    let (_, mut hit) = storage
        .lookup(&key, &span())
        .await
        .ctx("lookup")?
        .ok_or("entry missing")?;
    read_all(&mut hit).await?;
    hit.finish(storage, &key, &span()).await.ctx("hit finish")?;
    expect_body(storage, &key, b"kept").await?;
    Ok(())
}

/// Keys with the same primary key but different variance are separate entries.
pub async fn variance_keys_are_distinct(storage: DynStorage) -> CheckResult {
    let base = unique_key("variance");
    let mut gzip = base.clone();
    gzip.set_variance_key(hash_key("gzip"));
    let mut br = base.clone();
    br.set_variance_key(hash_key("br"));
    write_entry(storage, &gzip, &meta("gzip"), &[b"gzip body"]).await?;
    write_entry(storage, &br, &meta("br"), &[b"br body"]).await?;
    expect_body(storage, &gzip, b"gzip body").await?;
    expect_body(storage, &br, b"br body").await?;
    ensure!(
        lookup_body(storage, &base).await?.is_none(),
        "the key without variance found a variant's entry"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Writes: atomic publish, aborts, replacement, concurrency
// ---------------------------------------------------------------------------

/// A miss handler dropped before `finish` leaves nothing behind.
pub async fn dropped_miss_handler_leaves_nothing(storage: DynStorage) -> CheckResult {
    let key = unique_key("dropped-miss");
    let mut miss = storage
        .get_miss_handler(&key, &meta("dropped"), &span())
        .await
        .ctx("get_miss_handler")?;
    miss.write_body(Bytes::from_static(b"half a body"), false)
        .await
        .ctx("write_body")?;
    drop(miss);
    ensure!(
        lookup_body(storage, &key)
            .await
            .is_ok_and(|found| found.is_none()),
        "an aborted write left an entry (or a failing lookup) behind"
    );
    Ok(())
}

/// A write dropped before `finish` does not disturb the entry already stored.
pub async fn dropped_rewrite_keeps_previous_entry(storage: DynStorage) -> CheckResult {
    let key = unique_key("dropped-rewrite");
    write_entry(storage, &key, &meta("old"), &[b"old body"]).await?;
    let mut miss = storage
        .get_miss_handler(&key, &meta("new"), &span())
        .await
        .ctx("get_miss_handler")?;
    miss.write_body(Bytes::from_static(b"new bo"), false)
        .await
        .ctx("write_body")?;
    drop(miss);
    let read = expect_body(storage, &key, b"old body").await?;
    ensure!(marker(&read) == "old", "the old entry's meta was replaced");
    Ok(())
}

/// A second complete write of a key replaces the first, meta and body.
pub async fn rewrite_replaces_entry(storage: DynStorage) -> CheckResult {
    let key = unique_key("rewrite");
    write_entry(storage, &key, &meta("first"), &[b"first body"]).await?;
    write_entry(storage, &key, &meta("second"), &[b"second"]).await?;
    let read = expect_body(storage, &key, b"second").await?;
    ensure!(
        marker(&read) == "second",
        "meta of the first write survived"
    );
    Ok(())
}

/// Two writers of one key, interleaved, never publish a mixed body.
pub async fn concurrent_writers_never_mix(storage: DynStorage) -> CheckResult {
    let key = unique_key("concurrent-writers");
    let a = body(10, 64 << 10);
    let b = body(20, 64 << 10);
    let mut wa = storage
        .get_miss_handler(&key, &meta("a"), &span())
        .await
        .ctx("get_miss_handler a")?;
    let mut wb = storage
        .get_miss_handler(&key, &meta("b"), &span())
        .await
        .ctx("get_miss_handler b")?;
    let n = a.len() / 4096;
    for i in 0..n {
        let range = i * 4096..(i + 1) * 4096;
        let eof = i + 1 == n;
        wa.write_body(Bytes::copy_from_slice(&a[range.clone()]), eof)
            .await
            .ctx("write a")?;
        wb.write_body(Bytes::copy_from_slice(&b[range]), eof)
            .await
            .ctx("write b")?;
    }
    // Either writer may lose (a storage may refuse the second of two
    // concurrent writers), but what is published must be one of the two.
    let fa = wa.finish().await;
    let fb = wb.finish().await;
    ensure!(fa.is_ok() || fb.is_ok(), "both concurrent writers failed");
    let (read_meta, got) = lookup_body(storage, &key)
        .await?
        .ok_or("no entry after two finished writes")?;
    let m = marker(&read_meta);
    ensure!(
        (got == a && m == "a") || (got == b && m == "b"),
        "published entry mixes the writers: meta {m:?}, body matches a: {}, b: {}",
        got == a,
        got == b
    );
    Ok(())
}

/// Many readers of one entry at once all get the whole body.
pub async fn many_concurrent_readers(storage: DynStorage) -> CheckResult {
    let key = unique_key("many-readers");
    let data = body(4, 256 << 10);
    write_entry(storage, &key, &meta("many"), &[&data]).await?;
    let readers = (0..32).map(|_| {
        let key = key.clone();
        tokio::spawn(async move { lookup_body(storage, &key).await })
    });
    for reader in futures::future::join_all(readers).await {
        let got = reader.map_err(|e| format!("reader task failed: {e}"))??;
        match got {
            Some((_, got)) => ensure!(got == data, "a concurrent reader got a different body"),
            None => return Err("a concurrent reader missed".into()),
        }
    }
    Ok(())
}

/// A purge that races a write never leaves a partial entry or a panic.
pub async fn purge_racing_write_never_publishes_partial(storage: DynStorage) -> CheckResult {
    let key = unique_key("purge-race");
    let data = body(5, 32 << 10);
    let mut miss = storage
        .get_miss_handler(&key, &meta("race"), &span())
        .await
        .ctx("get_miss_handler")?;
    miss.write_body(Bytes::copy_from_slice(&data[..1000]), false)
        .await
        .ctx("write_body")?;
    let compact = key.to_compact();
    storage
        .purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span(),
        )
        .await
        .ctx("purge")?;
    // The writer may go on and publish, or fail: both are fine.
    let finished = async {
        miss.write_body(Bytes::copy_from_slice(&data[1000..]), true)
            .await?;
        miss.finish().await
    };
    let _ = finished.await;
    match lookup_body(storage, &key).await? {
        None => Ok(()),
        Some((_, got)) => {
            ensure!(got == data, "a purge during a write left a partial body");
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// Streaming partial writes
// ---------------------------------------------------------------------------

/// A reader that looks up during a write sees the body grow and then its end.
pub async fn streaming_reader_sees_growing_body(storage: DynStorage) -> CheckResult {
    let key = unique_key("streaming-grow");
    let mut miss = storage
        .get_miss_handler(&key, &meta("stream"), &span())
        .await
        .ctx("get_miss_handler")?;
    miss.write_body(Bytes::from_static(b"first,"), false)
        .await
        .ctx("write_body")?;
    let (_, mut hit) = storage
        .lookup(&key, &span())
        .await
        .ctx("lookup during write")?
        .ok_or("lookup during a streaming write missed")?;
    let got = read_at_least(&mut hit, 6).await?;
    ensure!(got == b"first,", "reader saw {got:?} of the first part");
    miss.write_body(Bytes::from_static(b"second,"), false)
        .await
        .ctx("write_body")?;
    let got = read_at_least(&mut hit, 7).await?;
    ensure!(got == b"second,", "reader saw {got:?} of the second part");
    miss.write_body(Bytes::from_static(b"end"), true)
        .await
        .ctx("write_body")?;
    miss.finish().await.ctx("finish")?;
    let rest = read_all(&mut hit).await?;
    ensure!(rest == b"end", "reader saw {rest:?} at the end");
    expect_body(storage, &key, b"first,second,end").await?;
    Ok(())
}

/// `lookup_streaming_write` with the writer's tag follows that writer's body.
pub async fn streaming_write_tag_finds_own_write(storage: DynStorage) -> CheckResult {
    let key = unique_key("streaming-tag");
    let mut miss = storage
        .get_miss_handler(&key, &meta("tagged"), &span())
        .await
        .ctx("get_miss_handler")?;
    miss.write_body(Bytes::from_static(b"tagged "), false)
        .await
        .ctx("write_body")?;
    let tag = miss
        .streaming_write_tag()
        .ok_or("a streaming storage's miss handler returned no write tag")?
        .to_vec();
    let (_, mut hit) = storage
        .lookup_streaming_write(&key, Some(&tag), &span())
        .await
        .ctx("lookup_streaming_write")?
        .ok_or("lookup_streaming_write did not find the write in progress")?;
    miss.write_body(Bytes::from_static(b"body"), true)
        .await
        .ctx("write_body")?;
    miss.finish().await.ctx("finish")?;
    let got = read_all(&mut hit).await?;
    ensure!(got == b"tagged body", "tagged reader saw {got:?}");
    Ok(())
}

/// A writer dropped mid-body makes a reader following it fail, not end cleanly.
pub async fn aborted_writer_fails_reader(storage: DynStorage) -> CheckResult {
    let key = unique_key("streaming-abort");
    let mut miss = storage
        .get_miss_handler(&key, &meta("abort"), &span())
        .await
        .ctx("get_miss_handler")?;
    miss.write_body(Bytes::from_static(b"partial"), false)
        .await
        .ctx("write_body")?;
    let (_, mut hit) = storage
        .lookup(&key, &span())
        .await
        .ctx("lookup during write")?
        .ok_or("lookup during a streaming write missed")?;
    let got = read_at_least(&mut hit, 7).await?;
    ensure!(got == b"partial", "reader saw {got:?}");
    drop(miss);
    loop {
        match tokio::time::timeout(READ_WAIT, hit.read_body()).await {
            Err(_) => return Err("reader hung after its writer was dropped".into()),
            Ok(Err(_)) => return Ok(()),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => {
                return Err("reader saw a clean end of body after its writer was dropped".into())
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Seek
// ---------------------------------------------------------------------------

async fn seekable(
    storage: DynStorage,
    check: &str,
    data: &[u8],
) -> Result<pingora_cache::storage::HitHandler, String> {
    let key = unique_key(check);
    write_entry(storage, &key, &meta(check), &[data]).await?;
    let (_, hit) = storage
        .lookup(&key, &span())
        .await
        .ctx("lookup")?
        .ok_or("entry missing")?;
    ensure!(hit.can_seek(), "hit handler says it cannot seek");
    Ok(hit)
}

/// `seek(start, Some(end))` serves exactly `start..end`.
pub async fn seek_selects_range(storage: DynStorage) -> CheckResult {
    let data = body(6, 10_000);
    let mut hit = seekable(storage, "seek-range", &data).await?;
    hit.seek(1234, Some(5678)).ctx("seek")?;
    let got = read_all(&mut hit).await?;
    ensure!(
        got == data[1234..5678],
        "seek served {} bytes, not the range",
        got.len()
    );
    Ok(())
}

/// `end: None` means the end of the body even after a bounded seek.
pub async fn seek_none_end_after_bounded_seek(storage: DynStorage) -> CheckResult {
    let data = body(7, 1000);
    let mut hit = seekable(storage, "seek-none-end", &data).await?;
    hit.seek(10, Some(20)).ctx("seek")?;
    let got = read_all(&mut hit).await?;
    ensure!(got == data[10..20], "bounded seek served the wrong bytes");
    hit.seek(500, None).ctx("seek")?;
    let got = read_all(&mut hit).await?;
    ensure!(
        got == data[500..],
        "seek(500, None) after seek(10, Some(20)) served {} bytes, not the rest of the body",
        got.len()
    );
    Ok(())
}

/// A seek whose start is at or past the end of the body is an error.
pub async fn seek_start_past_end_is_error(storage: DynStorage) -> CheckResult {
    let data = body(8, 100);
    let mut hit = seekable(storage, "seek-past-end", &data).await?;
    ensure!(hit.seek(100, None).is_err(), "seek(len, None) was accepted");
    ensure!(
        hit.seek(5000, Some(6000)).is_err(),
        "seek past the end was accepted"
    );
    Ok(())
}

/// An end past the body is clamped to the body.
pub async fn seek_end_past_body_is_clamped(storage: DynStorage) -> CheckResult {
    let data = body(9, 100);
    let mut hit = seekable(storage, "seek-clamp", &data).await?;
    hit.seek(90, Some(1000)).ctx("seek")?;
    let got = read_all(&mut hit).await?;
    ensure!(got == data[90..], "clamped seek served {} bytes", got.len());
    Ok(())
}

/// `seek_multipart` serves several ranges from one handler in turn.
pub async fn seek_multipart_ranges_in_sequence(storage: DynStorage) -> CheckResult {
    let data = body(11, 5000);
    let mut hit = seekable(storage, "seek-multipart", &data).await?;
    ensure!(
        hit.can_seek_multipart(),
        "hit handler cannot seek multipart"
    );
    for (start, end) in [(0, 10), (4000, 4100), (100, 200), (4990, 5000)] {
        hit.seek_multipart(start, Some(end)).ctx("seek_multipart")?;
        let got = read_all(&mut hit).await?;
        ensure!(got == data[start..end], "part {start}..{end} was wrong");
    }
    Ok(())
}

/// `seek_multipart(start, None)` after a bounded part reads to the end.
pub async fn seek_multipart_none_end_after_bounded(storage: DynStorage) -> CheckResult {
    let data = body(12, 3000);
    let mut hit = seekable(storage, "seek-multipart-none", &data).await?;
    hit.seek_multipart(0, Some(10)).ctx("seek_multipart")?;
    read_all(&mut hit).await?;
    hit.seek_multipart(2000, None).ctx("seek_multipart")?;
    let got = read_all(&mut hit).await?;
    ensure!(
        got == data[2000..],
        "seek_multipart(2000, None) served {} bytes, not the rest",
        got.len()
    );
    ensure!(
        hit.seek_multipart(3000, None).is_err(),
        "multipart seek past the end was accepted"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Purge and expire
// ---------------------------------------------------------------------------

/// `purge(Active)` removes the entry and says so.
pub async fn purge_active_removes_entry(storage: DynStorage) -> CheckResult {
    let key = unique_key("purge-active");
    write_entry(storage, &key, &meta("p"), &[b"gone soon"]).await?;
    let compact = key.to_compact();
    let outcome = storage
        .purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span(),
        )
        .await
        .ctx("purge")?;
    ensure!(
        matches!(outcome, PurgeOutcome::Purged(_)),
        "purge returned {outcome:?}"
    );
    ensure!(
        lookup_body(storage, &key).await?.is_none(),
        "entry still found after purge"
    );
    Ok(())
}

/// `purge(Exact)` with the entry's own identity removes it.
pub async fn purge_exact_removes_entry(storage: DynStorage) -> CheckResult {
    let key = unique_key("purge-exact");
    let id = write_entry(storage, &key, &meta("p"), &[b"exact"]).await?;
    let entry = CacheEntryKey::from_entry_id(key.to_compact(), id);
    let outcome = storage
        .purge(PurgeTarget::Exact(&entry), PurgeType::Invalidation, &span())
        .await
        .ctx("purge")?;
    ensure!(
        matches!(outcome, PurgeOutcome::Purged(_)),
        "purge returned {outcome:?}"
    );
    ensure!(
        lookup_body(storage, &key).await?.is_none(),
        "entry still found after purge"
    );
    Ok(())
}

/// Purging an absent entry is `NotFound`, not an error.
pub async fn purge_absent_is_not_found(storage: DynStorage) -> CheckResult {
    let compact = unique_key("purge-absent").to_compact();
    let outcome = storage
        .purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span(),
        )
        .await
        .ctx("purge")?;
    ensure!(
        outcome == PurgeOutcome::NotFound,
        "purge of an absent key returned {outcome:?}"
    );
    Ok(())
}

/// `purge(Exact)` naming another generation's id removes nothing.
pub async fn purge_exact_mismatched_id_keeps_entry(storage: DynStorage) -> CheckResult {
    let key = unique_key("purge-mismatch");
    let id = write_entry(storage, &key, &meta("keep"), &[b"still here"]).await?;
    let other = CacheEntryId::new(id.map_or(0x5eed, |id| id.get().wrapping_add(1)));
    let entry = CacheEntryKey::identified(key.to_compact(), other);
    let outcome = storage
        .purge(PurgeTarget::Exact(&entry), PurgeType::Eviction, &span())
        .await
        .ctx("purge")?;
    ensure!(
        outcome == PurgeOutcome::NotFound,
        "mismatched exact purge returned {outcome:?}"
    );
    expect_body(storage, &key, b"still here").await?;
    Ok(())
}

/// A purge for eviction removes the generation it names. The key may still be
/// served under another identity (a hybrid keeps its cold copy, which has its
/// own id); the evicted identity must not be served again.
pub async fn purge_eviction_removes_entry(storage: DynStorage) -> CheckResult {
    let key = unique_key("purge-eviction");
    let id = write_entry(storage, &key, &meta("e"), &[b"evict me"]).await?;
    let entry = CacheEntryKey::from_entry_id(key.to_compact(), id);
    let outcome = storage
        .purge(PurgeTarget::Exact(&entry), PurgeType::Eviction, &span())
        .await
        .ctx("purge")?;
    ensure!(
        matches!(outcome, PurgeOutcome::Purged(_)),
        "eviction purge returned {outcome:?}"
    );
    if let Some((_, hit)) = storage.lookup(&key, &span()).await.ctx("lookup")? {
        ensure!(
            hit.entry_id() != id,
            "the evicted generation {id:?} is still served"
        );
    }
    Ok(())
}

/// An active purge reports the id of the generation it removed.
pub async fn purge_active_reports_entry_id(storage: DynStorage) -> CheckResult {
    let key = unique_key("purge-id");
    let id = write_entry(storage, &key, &meta("id"), &[b"x"]).await?;
    ensure!(id.is_some(), "miss handler returned no entry id");
    let compact = key.to_compact();
    let outcome = storage
        .purge(
            PurgeTarget::Active(&compact),
            PurgeType::Invalidation,
            &span(),
        )
        .await
        .ctx("purge")?;
    ensure!(
        outcome == PurgeOutcome::Purged(id),
        "purge returned {outcome:?}, wrote {id:?}"
    );
    Ok(())
}

/// `expire` keeps the body and makes the entry stale.
pub async fn expire_keeps_body_and_makes_stale(storage: DynStorage) -> CheckResult {
    let key = unique_key("expire");
    let data = body(13, 2000);
    write_entry(storage, &key, &meta("exp"), &[&data]).await?;
    let compact = key.to_compact();
    let outcome = storage
        .expire(PurgeTarget::Active(&compact), &span())
        .await
        .ctx("expire")?;
    ensure!(
        outcome == PurgeOutcome::Expired,
        "expire returned {outcome:?}"
    );
    let read = expect_body(storage, &key, &data).await?;
    ensure!(
        !read.is_fresh(SystemTime::now()),
        "entry is still fresh after expire"
    );
    ensure!(marker(&read) == "exp", "expire changed the headers");
    Ok(())
}

/// `expire` of an absent entry is `NotFound`.
pub async fn expire_absent_is_not_found(storage: DynStorage) -> CheckResult {
    let compact = unique_key("expire-absent").to_compact();
    let outcome = storage
        .expire(PurgeTarget::Active(&compact), &span())
        .await
        .ctx("expire")?;
    ensure!(
        outcome == PurgeOutcome::NotFound,
        "expire of an absent key returned {outcome:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// update_meta
// ---------------------------------------------------------------------------

/// `update_meta` replaces headers and freshness and keeps the body.
pub async fn update_meta_replaces_headers(storage: DynStorage) -> CheckResult {
    let key = unique_key("update-meta");
    write_entry(storage, &key, &meta("before"), &[b"same body"]).await?;
    let updated = tier_core::testing::meta_fresh_for(
        std::time::Duration::from_secs(7200),
        &[("x-conformance", "after")],
    );
    let found = storage
        .update_meta(&key, &updated, &span())
        .await
        .ctx("update_meta")?;
    ensure!(found, "update_meta of a stored entry returned false");
    let read = expect_body(storage, &key, b"same body").await?;
    ensure!(
        marker(&read) == "after",
        "update_meta did not replace the headers"
    );
    ensure!(
        read.fresh_until() > SystemTime::now() + std::time::Duration::from_secs(3600),
        "update_meta did not replace the freshness"
    );
    Ok(())
}

/// `update_meta` of an absent entry returns `false` (and does not panic).
pub async fn update_meta_absent_returns_false(storage: DynStorage) -> CheckResult {
    let key = unique_key("update-meta-absent");
    let found = storage
        .update_meta(&key, &meta("x"), &span())
        .await
        .ctx("update_meta")?;
    ensure!(!found, "update_meta of an absent key returned true");
    ensure!(
        lookup_body(storage, &key).await?.is_none(),
        "update_meta created an entry"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Entry ids
// ---------------------------------------------------------------------------

/// The id from the miss handler is the one later hits report.
pub async fn entry_id_same_from_miss_and_hit(storage: DynStorage) -> CheckResult {
    let key = unique_key("entry-id");
    let id = write_entry(storage, &key, &meta("id"), &[b"x"]).await?;
    ensure!(id.is_some(), "miss handler returned no entry id");
    let (_, hit) = storage
        .lookup(&key, &span())
        .await
        .ctx("lookup")?
        .ok_or("entry missing")?;
    ensure!(
        hit.entry_id() == id,
        "hit reports {:?}, miss said {id:?}",
        hit.entry_id()
    );
    Ok(())
}

/// Every new write of a key gets a new id, and the old id no longer purges it.
pub async fn entry_id_new_for_each_write(storage: DynStorage) -> CheckResult {
    let key = unique_key("entry-id-new");
    let first = write_entry(storage, &key, &meta("1"), &[b"one"]).await?;
    let second = write_entry(storage, &key, &meta("2"), &[b"two"]).await?;
    ensure!(
        first.is_some() && second.is_some(),
        "miss handler returned no entry id"
    );
    ensure!(
        first != second,
        "two writes of one key got the same id {first:?}"
    );
    let old = CacheEntryKey::from_entry_id(key.to_compact(), first);
    let outcome = storage
        .purge(PurgeTarget::Exact(&old), PurgeType::Eviction, &span())
        .await
        .ctx("purge")?;
    ensure!(
        outcome == PurgeOutcome::NotFound,
        "a stale id purged the new generation: {outcome:?}"
    );
    expect_body(storage, &key, b"two").await?;
    Ok(())
}
