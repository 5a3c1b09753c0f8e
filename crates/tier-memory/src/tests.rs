//! Property tests of the byte bound and the accounting behind it, with access
//! to the shards so the charge ledger can be audited after every step.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use pingora_cache::eviction::{CacheEntryId, CacheEntryKey};
use pingora_cache::storage::{MissHandler, PurgeOutcome, PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use proptest::prelude::*;

use crate::{MemoryConfig, MemoryStorage};

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
        3 => key.clone().prop_map(|key| Op::Lookup { key }),
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
                s.maps
                    .read()
                    .complete
                    .values()
                    .map(|e| e.charge)
                    .sum::<usize>()
            })
            .sum();
        prop_assert_eq!(used, stored, "charged bytes drifted from stored entries");
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
            .shards(2),
    )));
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("x-prop", "1");
    // What a hit on each key must return, if it hits: (entry id, body).
    let mut model: HashMap<u8, (Option<CacheEntryId>, Vec<u8>)> = HashMap::new();
    let mut open: Vec<(u8, MissHandler)> = Vec::new();
    let mut generation = 0u64;
    for op in ops {
        generation += 1;
        match op {
            Op::Write { key, len, chunks } => {
                let data = body(key, len, generation);
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
                    model.insert(key, (id, data));
                }
            }
            Op::Abort { key, len } => {
                if let Ok(mut miss) = storage
                    .get_miss_handler(&cache_key(key), &meta, &span)
                    .await
                {
                    let _ = miss.write_body(Bytes::from(vec![1u8; len]), false).await;
                }
            }
            Op::Open { key, len } => {
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
                if let (Some((_, mut hit)), false) = (found.ok().flatten(), writing) {
                    let mut got = Vec::new();
                    while let Some(chunk) = hit
                        .read_body()
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?
                    {
                        got.extend_from_slice(&chunk);
                    }
                    if let Some((id, expected)) = model.get(&key) {
                        prop_assert_eq!(hit.entry_id(), *id);
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
                let _ = storage.update_meta(&cache_key(key), &meta, &span).await;
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

#[test]
fn queues_stay_bounded_when_keys_are_rewritten_without_eviction() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let storage: &'static MemoryStorage = Box::leak(Box::new(MemoryStorage::new(
        MemoryConfig::new(64 << 20).shards(1),
    )));
    let span = Span::inactive().handle();
    let meta = tier_core::testing::meta_with_header("x", "1");
    rt.block_on(async {
        for i in 0..10_000u32 {
            let key = cache_key((i % 4) as u8);
            let mut miss = storage
                .get_miss_handler(&key, &meta, &span)
                .await
                .expect("miss");
            miss.write_body(Bytes::from_static(b"x"), true)
                .await
                .expect("write");
            miss.finish().await.expect("finish");
        }
    });
    assert!(
        storage.shards[0].queue_len() < 200,
        "queue grew to {}",
        storage.shards[0].queue_len()
    );
}
