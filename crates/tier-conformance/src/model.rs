//! Model-based testing: random sequences of operations applied to a storage
//! and, step by step, to a simple reference model (a map from key to body,
//! meta marker, staleness and entry id), failing at the first divergence.
//!
//! A tier's test drives it with [`run_model`]:
//!
//! ```no_run
//! # async fn demo(storage: tier_conformance::DynStorage) {
//! use tier_conformance::model::{run_model, ModelSetup};
//! let setup = ModelSetup::new(|| Box::pin(async { /* a fresh storage */ unimplemented!() }));
//! let result = run_model("memory", setup, 1000);
//! # }
//! ```
//!
//! The model assumes nothing is evicted: give the storage room for the whole
//! key space (10 keys of at most 40 KiB).

use std::collections::HashMap;
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::BoxFuture;
use pingora_cache::eviction::{CacheEntryId, CacheEntryKey};
use pingora_cache::storage::{PurgeOutcome, PurgeTarget, PurgeType};
use pingora_cache::CacheKey;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::support::{marker, meta, span, DynStorage};

/// One step of a sequence.
#[derive(Debug, Clone)]
pub enum Op {
    /// Write a whole entry in `chunks` pieces and finish it.
    Write { key: u8, len: u16, chunks: u8 },
    /// Write part of an entry and drop the writer.
    Abort { key: u8, len: u16 },
    /// Two writers of one key, interleaved chunk by chunk, both finished:
    /// the entry must be exactly one of the two afterwards.
    Concurrent { key: u8, len_a: u16, len_b: u16 },
    /// Look up and read the whole body.
    Lookup { key: u8 },
    /// Look up and read a range.
    Range { key: u8, start: u16, len: u16 },
    /// `purge(Active, Invalidation)`.
    Purge { key: u8 },
    /// `purge(Exact(the id the model holds), Invalidation)`.
    PurgeExact { key: u8 },
    /// `purge(Active, Eviction)`.
    Evict { key: u8 },
    /// `expire(Active)`.
    Expire { key: u8 },
    /// `update_meta` with a new marker.
    UpdateMeta { key: u8 },
    /// Close and reopen the storage (only where the setup can).
    Reopen,
}

fn op(reopen: bool) -> BoxedStrategy<Op> {
    let key = 0u8..10;
    let ops = prop_oneof![
        5 => (key.clone(), 0u16..40_000, 1u8..5).prop_map(|(key, len, chunks)| Op::Write { key, len, chunks }),
        1 => (key.clone(), 1u16..20_000).prop_map(|(key, len)| Op::Abort { key, len }),
        1 => (key.clone(), 0u16..20_000, 0u16..20_000).prop_map(|(key, len_a, len_b)| Op::Concurrent { key, len_a, len_b }),
        4 => key.clone().prop_map(|key| Op::Lookup { key }),
        2 => (key.clone(), any::<u16>(), 1u16..5000).prop_map(|(key, start, len)| Op::Range { key, start, len }),
        1 => key.clone().prop_map(|key| Op::Purge { key }),
        1 => key.clone().prop_map(|key| Op::PurgeExact { key }),
        1 => key.clone().prop_map(|key| Op::Evict { key }),
        1 => key.clone().prop_map(|key| Op::Expire { key }),
        1 => key.prop_map(|key| Op::UpdateMeta { key }),
    ];
    if reopen {
        prop_oneof![18 => ops, 1 => Just(Op::Reopen)].boxed()
    } else {
        ops.boxed()
    }
}

/// Makes a fresh storage (or reopens the last one).
pub type Maker = Box<dyn Fn() -> BoxFuture<'static, DynStorage> + Send + Sync>;
/// Waits for a storage's background work (a hybrid's moves).
pub type Settle = Box<dyn Fn(DynStorage) -> BoxFuture<'static, ()> + Send + Sync>;

/// How to run the model against one kind of storage.
pub struct ModelSetup {
    fresh: Maker,
    reopen: Option<Box<dyn Fn(DynStorage) -> BoxFuture<'static, DynStorage> + Send + Sync>>,
    settle: Option<Settle>,
    eviction_removes: bool,
}

impl std::fmt::Debug for ModelSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSetup")
            .field("reopen", &self.reopen.is_some())
            .field("eviction_removes", &self.eviction_removes)
            .finish_non_exhaustive()
    }
}

impl ModelSetup {
    /// Each sequence runs on the storage `fresh` makes.
    pub fn new(fresh: impl Fn() -> BoxFuture<'static, DynStorage> + Send + Sync + 'static) -> Self {
        ModelSetup {
            fresh: Box::new(fresh),
            reopen: None,
            settle: None,
            eviction_removes: true,
        }
    }

    /// The storage survives a close and reopen: `reopen` gets the storage in
    /// use and returns the reopened one, which must hold every finished write.
    pub fn reopen(
        mut self,
        reopen: impl Fn(DynStorage) -> BoxFuture<'static, DynStorage> + Send + Sync + 'static,
    ) -> Self {
        self.reopen = Some(Box::new(reopen));
        self
    }

    /// Wait for background work after each step.
    pub fn settle(
        mut self,
        settle: impl Fn(DynStorage) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) -> Self {
        self.settle = Some(Box::new(settle));
        self
    }

    /// `purge(_, Eviction)` keeps the entry readable (a hybrid keeps or
    /// demotes its cold copy) instead of removing it.
    pub fn eviction_keeps_entry(mut self) -> Self {
        self.eviction_removes = false;
        self
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelResult {
    /// Sequences run.
    pub sequences: u64,
    /// Steps run in all.
    pub steps: u64,
}

#[derive(Debug, Clone)]
struct Expected {
    body: Vec<u8>,
    marker: String,
    stale: bool,
    id: Option<CacheEntryId>,
}

fn key(k: u8) -> CacheKey {
    CacheKey::new(format!("model/{k}"), "")
}

fn body(k: u8, len: u16, step: usize) -> Vec<u8> {
    (0..len as usize)
        .map(|i| (i as u64 * 7 + u64::from(k) * 13 + step as u64) as u8)
        .collect()
}

fn fail(step: usize, op: &Op, why: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(format!("step {step} ({op:?}): {why}"))
}

async fn read(hit: &mut pingora_cache::storage::HitHandler) -> Result<Vec<u8>, String> {
    tier_core::testing::read_body(hit)
        .await
        .map_err(|e| e.to_string())
}

async fn sequence(setup: &ModelSetup, ops: &[Op]) -> Result<u64, TestCaseError> {
    let mut storage = (setup.fresh)().await;
    let mut model: HashMap<u8, Expected> = HashMap::new();
    let s = span();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Write {
                key: k,
                len,
                chunks,
            } => {
                let data = body(*k, *len, step);
                let marker_text = format!("w{step}");
                let mut miss = storage
                    .get_miss_handler(&key(*k), &meta(&marker_text), &s)
                    .await
                    .map_err(|e| fail(step, op, e))?;
                let id = miss.entry_id();
                let size = data.len().div_ceil(usize::from(*chunks)).max(1);
                for piece in data.chunks(size) {
                    miss.write_body(Bytes::copy_from_slice(piece), false)
                        .await
                        .map_err(|e| fail(step, op, e))?;
                }
                miss.write_body(Bytes::new(), true)
                    .await
                    .map_err(|e| fail(step, op, e))?;
                miss.finish().await.map_err(|e| fail(step, op, e))?;
                model.insert(
                    *k,
                    Expected {
                        body: data,
                        marker: marker_text,
                        stale: false,
                        id,
                    },
                );
            }
            Op::Abort { key: k, len } => {
                let mut miss = storage
                    .get_miss_handler(&key(*k), &meta("aborted"), &s)
                    .await
                    .map_err(|e| fail(step, op, e))?;
                let _ = miss
                    .write_body(Bytes::from(body(*k, *len, step)), false)
                    .await;
                drop(miss);
            }
            Op::Concurrent {
                key: k,
                len_a,
                len_b,
            } => {
                let (marker_a, marker_b) = (format!("a{step}"), format!("b{step}"));
                let (data_a, data_b) = (body(*k, *len_a, step), body(*k, *len_b, step + 1));
                let mut a = storage
                    .get_miss_handler(&key(*k), &meta(&marker_a), &s)
                    .await
                    .map_err(|e| fail(step, op, e))?;
                let mut b = storage
                    .get_miss_handler(&key(*k), &meta(&marker_b), &s)
                    .await
                    .map_err(|e| fail(step, op, e))?;
                let (id_a, id_b) = (a.entry_id(), b.entry_id());
                let (mut ca, mut cb) = (data_a.chunks(3000), data_b.chunks(3000));
                loop {
                    let (na, nb) = (ca.next(), cb.next());
                    if na.is_none() && nb.is_none() {
                        break;
                    }
                    if let Some(chunk) = na {
                        a.write_body(Bytes::copy_from_slice(chunk), false)
                            .await
                            .map_err(|e| fail(step, op, e))?;
                    }
                    if let Some(chunk) = nb {
                        b.write_body(Bytes::copy_from_slice(chunk), false)
                            .await
                            .map_err(|e| fail(step, op, e))?;
                    }
                }
                let finished_a = a.finish().await.is_ok();
                let finished_b = b.finish().await.is_ok();
                if !finished_a && !finished_b {
                    return Err(fail(step, op, "both concurrent writers failed"));
                }
                if let Some(settle) = &setup.settle {
                    settle(storage).await;
                }
                let Some((m, mut hit)) = storage
                    .lookup(&key(*k), &s)
                    .await
                    .map_err(|e| fail(step, op, e))?
                else {
                    return Err(fail(step, op, "no entry after two finished writes"));
                };
                let got = read(&mut hit).await.map_err(|e| fail(step, op, e))?;
                let winner = marker(&m);
                let expected = if winner == marker_a && got == data_a {
                    Expected {
                        body: data_a,
                        marker: marker_a,
                        stale: false,
                        id: id_a,
                    }
                } else if winner == marker_b && got == data_b {
                    Expected {
                        body: data_b,
                        marker: marker_b,
                        stale: false,
                        id: id_b,
                    }
                } else {
                    return Err(fail(
                        step,
                        op,
                        format!(
                            "the entry mixes the writers: meta {winner:?}, {} bytes",
                            got.len()
                        ),
                    ));
                };
                model.insert(*k, expected);
            }
            Op::Lookup { key: k } => {
                let found = storage
                    .lookup(&key(*k), &s)
                    .await
                    .map_err(|e| fail(step, op, e))?;
                match (found, model.get(k)) {
                    (None, None) => {}
                    (Some(_), None) => {
                        return Err(fail(step, op, "found an entry the model does not have"))
                    }
                    (None, Some(_)) => return Err(fail(step, op, "lost an entry the model has")),
                    (Some((m, mut hit)), Some(want)) => {
                        let got = read(&mut hit).await.map_err(|e| fail(step, op, e))?;
                        if got != want.body {
                            return Err(fail(
                                step,
                                op,
                                format!(
                                    "body of {} bytes, model has {}",
                                    got.len(),
                                    want.body.len()
                                ),
                            ));
                        }
                        if marker(&m) != want.marker {
                            return Err(fail(
                                step,
                                op,
                                format!("meta {:?}, model {:?}", marker(&m), want.marker),
                            ));
                        }
                        if m.is_fresh(SystemTime::now()) == want.stale {
                            return Err(fail(
                                step,
                                op,
                                format!("stale is {}, model says {}", !want.stale, want.stale),
                            ));
                        }
                    }
                }
            }
            Op::Range { key: k, start, len } => {
                let Some(want) = model.get(k) else { continue };
                let total = want.body.len();
                let start = usize::from(*start) % (total + 1);
                let end = start + usize::from(*len);
                let Some((_, mut hit)) = storage
                    .lookup(&key(*k), &s)
                    .await
                    .map_err(|e| fail(step, op, e))?
                else {
                    return Err(fail(step, op, "lost an entry the model has"));
                };
                if !hit.can_seek() {
                    continue;
                }
                let valid = start < total || (total == 0 && start == 0);
                match hit.seek(start, Some(end)) {
                    Ok(()) if valid => {
                        let got = read(&mut hit).await.map_err(|e| fail(step, op, e))?;
                        if got != want.body[start..end.min(total)] {
                            return Err(fail(step, op, "range bytes differ"));
                        }
                    }
                    Ok(()) => return Err(fail(step, op, "a seek past the end was accepted")),
                    Err(_) if !valid => {}
                    Err(e) => return Err(fail(step, op, e)),
                }
            }
            Op::Purge { key: k } | Op::PurgeExact { key: k } | Op::Evict { key: k } => {
                let compact = key(*k).to_compact();
                let exact =
                    CacheEntryKey::from_entry_id(compact.clone(), model.get(k).and_then(|e| e.id));
                let (target, kind) = match op {
                    Op::Purge { .. } => (PurgeTarget::Active(&compact), PurgeType::Invalidation),
                    Op::PurgeExact { .. } => (PurgeTarget::Exact(&exact), PurgeType::Invalidation),
                    _ => (PurgeTarget::Active(&compact), PurgeType::Eviction),
                };
                let outcome = storage
                    .purge(target, kind, &s)
                    .await
                    .map_err(|e| fail(step, op, e))?;
                let had = model.contains_key(k);
                let removes = !matches!(op, Op::Evict { .. }) || setup.eviction_removes;
                // Where an eviction keeps the entry (a hybrid evicts its hot
                // copy only), whether there was a hot copy to evict is the
                // storage's business: only removals are held to the model.
                if removes && matches!(outcome, PurgeOutcome::Purged(_)) != had {
                    return Err(fail(
                        step,
                        op,
                        format!("purge said {outcome:?}, model has the key: {had}"),
                    ));
                }
                if removes {
                    model.remove(k);
                }
            }
            Op::Expire { key: k } => {
                let compact = key(*k).to_compact();
                let outcome = storage
                    .expire(PurgeTarget::Active(&compact), &s)
                    .await
                    .map_err(|e| fail(step, op, e))?;
                match (outcome, model.get_mut(k)) {
                    (PurgeOutcome::Expired, Some(e)) => e.stale = true,
                    (PurgeOutcome::NotFound, None) => {}
                    (other, e) => {
                        return Err(fail(
                            step,
                            op,
                            format!("expire said {other:?}, model has the key: {}", e.is_some()),
                        ))
                    }
                }
            }
            Op::UpdateMeta { key: k } => {
                let marker_text = format!("u{step}");
                let found = storage
                    .update_meta(&key(*k), &meta(&marker_text), &s)
                    .await
                    .map_err(|e| fail(step, op, e))?;
                match (found, model.get_mut(k)) {
                    (true, Some(e)) => {
                        e.marker = marker_text;
                        e.stale = false;
                    }
                    (false, None) => {}
                    (found, e) => {
                        return Err(fail(
                            step,
                            op,
                            format!(
                                "update_meta said {found}, model has the key: {}",
                                e.is_some()
                            ),
                        ))
                    }
                }
            }
            Op::Reopen => {
                if let Some(reopen) = &setup.reopen {
                    storage = reopen(storage).await;
                }
            }
        }
        if let Some(settle) = &setup.settle {
            settle(storage).await;
        }
    }
    Ok(ops.len() as u64)
}

/// Run `sequences` random sequences (1 to 40 steps each) against fresh
/// storages from `setup`, comparing each step with the model. Panics with the
/// shrunk failing sequence on a divergence; prints a `RESULT` line.
pub fn run_model(name: &str, setup: ModelSetup, sequences: u32) -> ModelResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime for the model run");
    let mut runner = TestRunner::new(Config {
        cases: sequences,
        failure_persistence: None,
        ..Config::default()
    });
    let steps = std::sync::atomic::AtomicU64::new(0);
    let strategy = proptest::collection::vec(op(setup.reopen.is_some()), 1..40);
    let outcome = runner.run(&strategy, |ops| {
        let n = rt.block_on(sequence(&setup, &ops))?;
        steps.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    });
    let result = ModelResult {
        sequences: u64::from(sequences),
        steps: steps.load(std::sync::atomic::Ordering::Relaxed),
    };
    match outcome {
        Ok(()) => {
            println!(
                "RESULT model {name}: {} sequences, {} steps, 0 divergences",
                result.sequences, result.steps
            );
            result
        }
        Err(e) => panic!("RESULT model {name}: divergence: {e}"),
    }
}
