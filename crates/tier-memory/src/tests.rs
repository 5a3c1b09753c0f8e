//! Property tests of the byte bound and the accounting behind it, with access
//! to the shards so the charge ledger can be audited after every step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use pingora_cache::eviction::{CacheEntryId, CacheEntryKey};
use pingora_cache::storage::{MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use proptest::prelude::*;

use tier_core::testing::write_entry;

use crate::{MemoryConfig, MemoryStorage};

/// How long, at most, a hit waits between building a hot entry's header and
/// keeping it parsed, in microseconds (0: not at all). Set by the race test.
static KEEP_PAUSE_MICROS: AtomicU64 = AtomicU64::new(0);

/// The test hook `keep_hot_header` calls: a random blocking pause, to widen
/// the window in which a meta update can land between the two.
pub(crate) fn pause_before_keeping_a_header() {
    let max = KEEP_PAUSE_MICROS.load(Ordering::Relaxed);
    if max > 0 && fastrand::bool() {
        std::thread::sleep(Duration::from_micros(fastrand::u64(0..=max)));
    }
}

const CAPACITY: usize = 96 << 10;
const MAX_OBJECT: usize = 24 << 10;

#[derive(Debug, Clone)]
enum Op {
    /// Write a whole entry in `chunks` pieces.
    Write {
        key: u8,
        len: usize,
        chunks: usize,
    },
    /// Write part of an entry and drop the writer.
    Abort {
        key: u8,
        len: usize,
    },
    /// Start a write and leave it open.
    Open {
        key: u8,
        len: usize,
    },
    /// Finish (true) or drop (false) the oldest open write.
    Close {
        finish: bool,
    },
    Lookup {
        key: u8,
    },
    Purge {
        key: u8,
        wrong_id: bool,
    },
    Expire {
        key: u8,
    },
    UpdateMeta {
        key: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..10;
    prop_oneof![
        4 => (key.clone(), 0usize..30_000, 1usize..5).prop_map(|(key, len, chunks)| Op::Write { key, len, chunks }),
        1 => (key.clone(), 1usize..20_000).prop_map(|(key, len)| Op::Abort { key, len }),
        1 => (key.clone(), 1usize..20_000).prop_map(|(key, len)| Op::Open { key, len }),
        1 => any::<bool>().prop_map(|finish| Op::Close { finish }),
        5 => key.clone().prop_map(|key| Op::Lookup { key }),
        1 => (key.clone(), any::<bool>()).prop_map(|(key, wrong_id)| Op::Purge { key, wrong_id }),
        1 => key.clone().prop_map(|key| Op::Expire { key }),
        1 => key.prop_map(|key| Op::UpdateMeta { key }),
    ]
}

fn cache_key(key: u8) -> CacheKey {
    CacheKey::new(format!("prop/{key}"), "")
}

fn body(key: u8, len: usize, generation: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 7 + u64::from(key) * 13 + generation) as u8)
        .collect()
}

/// The ledger must balance: bytes charged equal the charges of stored
/// entries plus what open writers hold.
fn audit(storage: &MemoryStorage, open: &[(u8, MissHandler)]) -> Result<(), TestCaseError> {
    let used = storage.used.load(Ordering::Relaxed);
    prop_assert!(used <= CAPACITY, "used {used} over capacity {CAPACITY}");
    if open.is_empty() {
        let stored: usize = storage
            .shards
            .iter()
            .map(|s| {
                let maps = s.maps.read();
                maps.complete.values().map(|e| e.charge()).sum::<usize>() + maps.hot_bytes()
            })
            .sum();
        prop_assert_eq!(
            used,
            stored,
            "charged bytes drifted from stored entries and hot headers"
        );
        let hot: usize = storage
            .shards
            .iter()
            .map(|s| s.maps.read().hot_bytes())
            .sum();
        prop_assert_eq!(
            storage.hot_used.load(Ordering::Relaxed),
            hot,
            "the hot-header count drifted from the headers kept"
        );
        let writing: usize = storage
            .shards
            .iter()
            .map(|s| s.maps.read().writing.len())
            .sum();
        prop_assert_eq!(writing, 0, "a closed write is still listed as in progress");
    }
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let storage: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(
        MemoryConfig::new(CAPACITY)
            .max_object_bytes(MAX_OBJECT)
            .shards(2)
            // Room for a few parsed headers of hot entries, so their
            // charges and their invalidation are exercised too.
            .hot_header_percent(5),
    )));
    let span = Span::inactive().handle();
    // Each write and meta update carries its own x-prop value.
    let meta_of = |value: String| tier_core::testing::meta_with_header("x-prop", &value);
    // What a hit on each key must return, if it hits: (entry id, body, x-prop).
    let mut model: HashMap<u8, (Option<CacheEntryId>, Vec<u8>, String)> = HashMap::new();
    let mut open: Vec<(u8, MissHandler)> = Vec::new();
    let mut generation = 0u64;
    for op in ops {
        generation += 1;
        match op {
            Op::Write { key, len, chunks } => {
                let data = body(key, len, generation);
                let tag = format!("w{generation}");
                let meta = meta_of(tag.clone());
                let mut miss = match storage
                    .get_miss_handler(&cache_key(key), &meta, &span)
                    .await
                {
                    Ok(miss) => miss,
                    Err(_) => continue,
                };
                let id = miss.entry_id();
                let step = len.div_ceil(chunks).max(1);
                let mut ok = true;
                for piece in data.chunks(step) {
                    if miss
                        .write_body(Bytes::copy_from_slice(piece), false)
                        .await
                        .is_err()
                    {
                        ok = false;
                        break;
                    }
                }
                prop_assert!(
                    ok || len > MAX_OBJECT || !open.is_empty(),
                    "write of {len} refused"
                );
                if ok && miss.finish().await.is_ok() {
                    model.insert(key, (id, data, tag));
                }
            }
            Op::Abort { key, len } => {
                let meta = meta_of(format!("a{generation}"));
                if let Ok(mut miss) = storage
                    .get_miss_handler(&cache_key(key), &meta, &span)
                    .await
                {
                    let _ = miss.write_body(Bytes::from(vec![1u8; len]), false).await;
                }
            }
            Op::Open { key, len } => {
                let meta = meta_of(format!("o{generation}"));
                if let Ok(mut miss) = storage
                    .get_miss_handler(&cache_key(key), &meta, &span)
                    .await
                {
                    if miss
                        .write_body(Bytes::from(body(key, len, generation)), false)
                        .await
                        .is_ok()
                    {
                        open.push((key, miss));
                    }
                }
            }
            Op::Close { finish } => {
                if !open.is_empty() {
                    let (key, miss) = open.remove(0);
                    // A finished open write replaces the key with a body the
                    // model does not track, so the model forgets the key.
                    if finish && miss.finish().await.is_ok() {
                        model.remove(&key);
                    }
                }
            }
            Op::Lookup { key } => {
                let found = storage.lookup(&cache_key(key), &span).await;
                prop_assert!(found.is_ok());
                let writing = open.iter().any(|(k, _)| *k == key);
                if let (Some((found_meta, mut hit)), false) = (found.ok().flatten(), writing) {
                    let mut got = Vec::new();
                    while let Some(chunk) = hit
                        .read_body()
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?
                    {
                        got.extend_from_slice(&chunk);
                    }
                    if let Some((id, expected, tag)) = model.get(&key) {
                        prop_assert_eq!(hit.entry_id(), *id);
                        let header = found_meta.headers().get("x-prop");
                        prop_assert_eq!(
                            header.map(|v| v.as_bytes()),
                            Some(tag.as_bytes()),
                            "key {} served another meta's header",
                            key
                        );
                        prop_assert_eq!(
                            &got,
                            expected,
                            "key {} served another generation's body",
                            key
                        );
                    }
                }
            }
            Op::Purge { key, wrong_id } => {
                let compact = cache_key(key).to_compact();
                let outcome = if wrong_id {
                    let entry = CacheEntryKey::identified(compact, CacheEntryId::new(u64::MAX));
                    storage
                        .purge(PurgeTarget::Exact(&entry), PurgeType::Eviction, &span)
                        .await
                } else {
                    storage
                        .purge(
                            PurgeTarget::Active(&compact),
                            PurgeType::Invalidation,
                            &span,
                        )
                        .await
                };
                let outcome = outcome.map_err(|e| TestCaseError::fail(e.to_string()))?;
                if wrong_id {
                    prop_assert_eq!(outcome, PurgeOutcome::NotFound);
                } else {
                    model.remove(&key);
                }
            }
            Op::Expire { key } => {
                let compact = cache_key(key).to_compact();
                let _ = storage.expire(PurgeTarget::Active(&compact), &span).await;
            }
            Op::UpdateMeta { key } => {
                let tag = format!("u{generation}");
                let updated = storage
                    .update_meta(&cache_key(key), &meta_of(tag.clone()), &span)
                    .await;
                if let (Ok(true), Some(known)) = (updated, model.get_mut(&key)) {
                    known.2 = tag;
                }
            }
        }
        audit(storage, &open)?;
    }
    open.clear();
    audit(storage, &open)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn byte_bound_holds_and_ledger_balances_after_every_step(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(run(ops))?;
    }
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn leaked(config: MemoryConfig) -> &'static MemoryStorage {
    Box::leak(Box::new(MemoryStorage::new(config)))
}

#[test]
fn queues_stay_bounded_when_keys_are_rewritten_without_eviction() {
    let rt = current_thread();
    let storage = leaked(MemoryConfig::new(64 << 20).shards(1));
    let meta = tier_core::testing::meta_with_header("x", "1");
    rt.block_on(async {
        for i in 0..10_000u32 {
            let key = cache_key((i % 4) as u8);
            write_entry(storage, &key, &meta, b"x")
                .await
                .expect("write");
        }
    });
    assert!(
        storage.queues.len() < 200,
        "queue grew to {}",
        storage.queues.len()
    );
}

#[test]
fn a_hot_entry_keeps_a_parsed_header_until_its_meta_or_the_entry_changes() {
    let rt = current_thread();
    let storage = leaked(MemoryConfig::new(1 << 20).shards(1));
    let span = Span::inactive().handle();
    let hot_bytes = || storage.shards[0].maps.read().hot_bytes();
    let x_prop = |meta: &pingora_cache::CacheMeta| {
        meta.headers()
            .get("x-prop")
            .map(|v| v.to_str().unwrap_or_default().to_string())
    };
    rt.block_on(async {
        let key = cache_key(1);
        let first = tier_core::testing::meta_with_header("x-prop", "first");
        write_entry(storage, &key, &first, b"body")
            .await
            .expect("write");
        let entry_only = storage.used_bytes();
        // Three reads make it hot; the fourth keeps its header parsed.
        for _ in 0..4 {
            let (meta, _) = storage.lookup(&key, &span).await.expect("ok").expect("hit");
            assert_eq!(x_prop(&meta).as_deref(), Some("first"));
        }
        assert!(hot_bytes() > 0, "a hot entry kept no parsed header");
        assert_eq!(storage.used_bytes(), entry_only + hot_bytes());
        let (meta, _) = storage.lookup(&key, &span).await.expect("ok").expect("hit");
        assert_eq!(x_prop(&meta).as_deref(), Some("first"));
        // A revalidation changes the header: the parsed copy must go with it.
        let second = tier_core::testing::meta_with_header("x-prop", "second");
        assert!(storage
            .update_meta(&key, &second, &span)
            .await
            .expect("update"));
        assert_eq!(hot_bytes(), 0);
        let (meta, _) = storage.lookup(&key, &span).await.expect("ok").expect("hit");
        assert_eq!(x_prop(&meta).as_deref(), Some("second"));
        for _ in 0..4 {
            storage.lookup(&key, &span).await.expect("ok").expect("hit");
        }
        assert!(hot_bytes() > 0);
        // A purge gives back the entry's bytes and its header's.
        let compact = key.to_compact();
        storage
            .purge(
                PurgeTarget::Active(&compact),
                PurgeType::Invalidation,
                &span,
            )
            .await
            .expect("purge");
        assert_eq!(hot_bytes(), 0);
        assert_eq!(storage.used_bytes(), 0);
    });
}

#[test]
fn no_hit_after_a_meta_update_returns_serves_the_header_it_replaced() {
    KEEP_PAUSE_MICROS.store(300, Ordering::Relaxed);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let storage = leaked(MemoryConfig::new(8 << 20).shards(1));
    // One logical clock stamps when updates return and reads start.
    let clock: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
    let revision = |meta: &pingora_cache::CacheMeta| -> u64 {
        meta.headers()
            .get("x-rev")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0)
    };
    let violations = rt.block_on(async move {
        let key = cache_key(7);
        let meta = tier_core::testing::meta_with_header("x-rev", "0");
        write_entry(storage, &key, &meta, b"body")
            .await
            .expect("write");
        // (clock when revision r's update returned, r)
        let updates: &'static parking_lot::Mutex<Vec<(u64, u64)>> = Box::leak(Box::default());
        let updater = tokio::spawn(async move {
            let span = Span::inactive().handle();
            for rev in 1..=300u64 {
                let meta = tier_core::testing::meta_with_header("x-rev", &rev.to_string());
                let ok = storage
                    .update_meta(&cache_key(7), &meta, &span)
                    .await
                    .expect("update");
                assert!(ok);
                updates
                    .lock()
                    .push((clock.fetch_add(1, Ordering::SeqCst), rev));
                tokio::time::sleep(Duration::from_micros(fastrand::u64(0..200))).await;
            }
        });
        let readers: Vec<_> = (0..6)
            .map(|_| {
                tokio::spawn(async move {
                    let span = Span::inactive().handle();
                    let mut seen = Vec::new();
                    for _ in 0..3000 {
                        let invoked = clock.fetch_add(1, Ordering::SeqCst);
                        let (meta, _) = storage
                            .lookup(&cache_key(7), &span)
                            .await
                            .expect("lookup")
                            .expect("hit");
                        seen.push((invoked, revision(&meta)));
                        tokio::task::yield_now().await;
                    }
                    seen
                })
            })
            .collect();
        updater.await.expect("updater");
        let mut violations = Vec::new();
        let updates = updates.lock().clone();
        for reader in readers {
            for (invoked, rev) in reader.await.expect("reader") {
                // The newest update that returned before this read started.
                let floor = updates
                    .iter()
                    .filter(|(returned, _)| *returned < invoked)
                    .map(|(_, r)| *r)
                    .max()
                    .unwrap_or(0);
                if rev < floor {
                    violations.push((invoked, rev, floor));
                }
            }
        }
        violations
    });
    KEEP_PAUSE_MICROS.store(0, Ordering::Relaxed);
    let maps = storage.shards[0].maps.read();
    let entries: usize = maps.complete.values().map(|e| e.charge()).sum();
    assert_eq!(storage.hot_used.load(Ordering::Relaxed), maps.hot_bytes());
    assert_eq!(storage.used_bytes(), entries + maps.hot_bytes());
    drop(maps);
    assert!(
        violations.is_empty(),
        "{} reads served a header older than an update that had returned, e.g. {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
}
