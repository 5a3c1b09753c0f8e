//! Concurrent histories judged per key: many tasks write, overwrite, purge,
//! revalidate, expire and read a few keys at once, every call's invocation
//! and response are stamped on one logical clock, and each key's history is
//! then checked against the rule every composition keeps:
//!
//! > after a write's `finish`, a purge or a meta update returns, no later
//! > lookup returns an older generation, a purged entry, or a body with a
//! > meta it was not written with. A miss is always allowed.
//!
//! Model tests run one operation at a time; this runs them together, with
//! readers that are slow, seek, or drop mid-body, and writers that abort, so
//! that moves between tiers race with everything else. Wrap the tiers in
//! [`Delayed`](crate::delayed::Delayed) to widen the races.
//!
//! Every body is its generation's pattern, and every meta names the
//! generation (`x-gen`) and length (`x-len`) it was written with, so a read
//! checks that body and meta belong together byte by byte.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use pingora_cache::storage::{PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::{CacheKey, CacheMeta};

/// What one run does.
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// Keys the tasks share (few, so they collide).
    pub keys: usize,
    /// Tasks running at once.
    pub tasks: usize,
    /// Operations per task.
    pub ops_per_task: usize,
    /// Body sizes writes choose from; include some over the hot tier's limit.
    pub body_sizes: Vec<usize>,
    /// Largest pause inside a slow reader or writer, between chunks.
    pub pause: Duration,
    /// Seed of the operation mix.
    pub seed: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            keys: 3,
            tasks: 8,
            ops_per_task: 40,
            body_sizes: vec![300, 5_000, 40_000, 200_000],
            pause: Duration::from_millis(2),
            seed: 1,
        }
    }
}

/// One call in a key's history.
#[derive(Debug, Clone)]
enum Event {
    Write {
        generation: u64,
        len: usize,
        invoked: u64,
        finish_started: u64,
        returned: u64,
        ok: bool,
    },
    Purge {
        invoked: u64,
        returned: u64,
    },
    Revalidate {
        generation: u64,
        returned: u64,
    },
    Read {
        invoked: u64,
        returned: u64,
        outcome: ReadOutcome,
    },
}

#[derive(Debug, Clone)]
enum ReadOutcome {
    Miss,
    /// The meta's generation, whether every byte read matched it, and
    /// otherwise the bytes read and their offset, to find whose they are.
    Hit {
        generation: u64,
        mismatch: Option<(usize, Vec<u8>)>,
    },
    /// A meta that names no generation: not one the history wrote.
    Foreign,
    /// The read failed part-way.
    Failed {
        generation: u64,
        error: String,
    },
}

/// What a run found.
#[derive(Debug, Default)]
pub struct HistoryReport {
    /// Operations run.
    pub operations: u64,
    /// Reads that returned an entry.
    pub hits: u64,
    /// Reads that found nothing.
    pub misses: u64,
    /// Each violation, described with the key's history around it.
    pub violations: Vec<String>,
}

impl HistoryReport {
    /// Panic with the violations, if any.
    pub fn assert_consistent(&self) {
        assert!(self.violations.is_empty(), "{self}");
    }

    /// Add another run's figures.
    pub fn absorb(&mut self, other: HistoryReport) {
        self.operations += other.operations;
        self.hits += other.hits;
        self.misses += other.misses;
        self.violations.extend(other.violations);
    }
}

impl fmt::Display for HistoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} operations, {} hits, {} misses, {} violations",
            self.operations,
            self.hits,
            self.misses,
            self.violations.len()
        )?;
        for violation in self.violations.iter().take(10) {
            writeln!(f, "- {violation}")?;
        }
        Ok(())
    }
}

/// The logical clock every call is stamped on.
#[derive(Debug, Default)]
struct Clock(AtomicU64);

impl Clock {
    fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst)
    }
}

struct Run {
    clock: Clock,
    generations: AtomicU64,
    histories: Vec<Mutex<Vec<Event>>>,
    config: HistoryConfig,
}

/// The body of `generation`: its number, then a pattern derived from it.
pub fn body_of(generation: u64, len: usize) -> Vec<u8> {
    let mut body: Vec<u8> = (0..len)
        .map(|i| (generation.wrapping_mul(131) as usize + i * 7 + (i >> 8)) as u8)
        .collect();
    let id = generation.to_le_bytes();
    let n = id.len().min(len);
    body[..n].copy_from_slice(&id[..n]);
    body
}

fn meta_of(generation: u64, len: usize, announce: bool, revision: u64) -> CacheMeta {
    let generation = generation.to_string();
    let len_text = len.to_string();
    let revision = revision.to_string();
    let mut headers = vec![
        ("x-gen", generation.as_str()),
        ("x-len", len_text.as_str()),
        ("x-rev", revision.as_str()),
    ];
    if announce {
        headers.push(("content-length", len_text.as_str()));
    }
    tier_core::testing::meta_fresh_for(Duration::from_secs(3600), &headers)
}

fn header_u64(meta: &CacheMeta, name: &str) -> Option<u64> {
    meta.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// The keys come in pairs whose primary hashes share their first eight
/// bytes, so their 64-bit slots collide in a tier that takes its slot from
/// them (the memory tier does): a tier that trusts a slot alone then serves
/// one key's body as the other's, which the judge sees as a generation the
/// key never wrote.
fn key_of(idx: usize) -> CacheKey {
    let mut key = CacheKey::new("", "");
    let mut primary = [0x5a; 16];
    primary[0] = (idx / 2) as u8;
    primary[15] = idx as u8;
    key.set_primary_bin_override(primary);
    key
}

/// Run one set of concurrent histories against `storage`, let `settle` wait
/// for its background work, read every key once more, and judge each key's
/// history.
pub async fn run_histories<S: Storage + Sync + 'static>(
    storage: &'static S,
    config: HistoryConfig,
    settle: impl Fn() -> BoxFuture<'static, ()>,
) -> HistoryReport {
    let run = Arc::new(Run {
        clock: Clock::default(),
        generations: AtomicU64::new(config.seed.wrapping_mul(1 << 20) + 1),
        histories: (0..config.keys).map(|_| Mutex::default()).collect(),
        config: config.clone(),
    });
    let mut tasks = Vec::new();
    for task in 0..config.tasks {
        let run = run.clone();
        let seed = config.seed.wrapping_mul(1000).wrapping_add(task as u64);
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..run.config.ops_per_task {
                let key = rng.usize(..run.config.keys);
                match rng.u8(..100) {
                    0..=29 => write(storage, &run, key, &mut rng).await,
                    30..=39 => purge(storage, &run, key, PurgeType::Invalidation).await,
                    40..=44 => purge(storage, &run, key, PurgeType::Eviction).await,
                    45..=52 => revalidate(storage, &run, key, &mut rng).await,
                    53..=57 => expire(storage, key).await,
                    _ => {
                        let mode = rng.u8(..10);
                        read(storage, &run, key, &mut rng, mode).await
                    }
                }
            }
        }));
    }
    let mut report = HistoryReport::default();
    for task in tasks {
        if let Err(e) = task.await {
            report
                .violations
                .push(format!("a task of the history panicked: {e}"));
        }
    }
    settle().await;
    // One more read of every key, with nothing else running: what the tiers
    // hold once every move has ended must obey the rule too.
    let mut rng = fastrand::Rng::with_seed(config.seed);
    for key in 0..config.keys {
        read(storage, &run, key, &mut rng, WHOLE).await;
    }
    report.operations = (config.tasks * config.ops_per_task + config.keys) as u64;
    for (key, history) in run.histories.iter().enumerate() {
        let events = history.lock().clone();
        for event in &events {
            if let Event::Read { outcome, .. } = event {
                match outcome {
                    ReadOutcome::Miss => report.misses += 1,
                    _ => report.hits += 1,
                }
            }
        }
        let violations = judge(&events);
        if !violations.is_empty() && std::env::var_os("TIERS_HISTORY_DUMP").is_some() {
            eprintln!("history of key {key} (seed {}):", config.seed);
            for event in &events {
                eprintln!("  {event:?}");
            }
        }
        for violation in violations {
            report.violations.push(format!("key {key}: {violation}"));
        }
    }
    report
}

fn record(run: &Run, key: usize, event: Event) {
    run.histories[key].lock().push(event);
}

/// Record a read invoked at `invoked` that returns now with `outcome`.
fn record_read(run: &Run, key: usize, invoked: u64, outcome: ReadOutcome) {
    let returned = run.clock.tick();
    record(
        run,
        key,
        Event::Read {
            invoked,
            returned,
            outcome,
        },
    );
}

async fn pause(rng: &mut fastrand::Rng, max: Duration) {
    if rng.u8(..4) == 0 {
        let micros = max.as_micros() as u64;
        tokio::time::sleep(Duration::from_micros(rng.u64(0..=micros))).await;
    }
}

async fn write<S: Storage + Sync>(
    storage: &'static S,
    run: &Run,
    key: usize,
    rng: &mut fastrand::Rng,
) {
    let span = Span::inactive().handle();
    let generation = run.generations.fetch_add(1, Ordering::SeqCst);
    let sizes = &run.config.body_sizes;
    let len = sizes[rng.usize(..sizes.len())];
    let body = body_of(generation, len);
    let meta = meta_of(generation, len, rng.bool(), 0);
    let invoked = run.clock.tick();
    let Ok(mut miss) = storage.get_miss_handler(&key_of(key), &meta, &span).await else {
        return;
    };
    let abort_at = (rng.u8(..10) == 0).then(|| rng.usize(..=len));
    let mut written = 0;
    let mut aborted = false;
    for chunk in body.chunks(16 * 1024) {
        if abort_at.is_some_and(|at| written >= at) {
            aborted = true;
            break;
        }
        if miss
            .write_body(Bytes::copy_from_slice(chunk), false)
            .await
            .is_err()
        {
            break;
        }
        written += chunk.len();
        pause(rng, run.config.pause).await;
    }
    let (finish_started, ok) = if aborted {
        // A writer that goes away mid-body: nothing of it may be served
        // once it is gone.
        drop(miss);
        (run.clock.tick(), false)
    } else {
        let _ = miss.write_body(Bytes::new(), true).await;
        let finish_started = run.clock.tick();
        (
            finish_started,
            written == len && miss.finish().await.is_ok(),
        )
    };
    let returned = run.clock.tick();
    record(
        run,
        key,
        Event::Write {
            generation,
            len,
            invoked,
            finish_started,
            returned,
            ok,
        },
    );
}

async fn purge<S: Storage + Sync>(storage: &'static S, run: &Run, key: usize, kind: PurgeType) {
    let span = Span::inactive().handle();
    let compact = key_of(key).to_compact();
    let invoked = run.clock.tick();
    let purged = storage
        .purge(PurgeTarget::Active(&compact), kind, &span)
        .await;
    let returned = run.clock.tick();
    // An eviction may keep the entry in a lower tier: only an invalidation
    // promises it is gone.
    if purged.is_ok() && matches!(kind, PurgeType::Invalidation) {
        record(run, key, Event::Purge { invoked, returned });
    }
}

async fn expire<S: Storage + Sync>(storage: &'static S, key: usize) {
    let span = Span::inactive().handle();
    let compact = key_of(key).to_compact();
    let _ = storage.expire(PurgeTarget::Active(&compact), &span).await;
}

/// A 304's work: look the entry up, then store its headers again with a
/// new revision.
async fn revalidate<S: Storage + Sync>(
    storage: &'static S,
    run: &Run,
    key: usize,
    rng: &mut fastrand::Rng,
) {
    let span = Span::inactive().handle();
    let Ok(Some((meta, hit))) = storage.lookup(&key_of(key), &span).await else {
        return;
    };
    drop(hit);
    let (Some(generation), Some(len)) = (header_u64(&meta, "x-gen"), header_u64(&meta, "x-len"))
    else {
        return;
    };
    let announce = meta.headers().get("content-length").is_some();
    let fresh = meta_of(generation, len as usize, announce, rng.u64(1..));
    let updated = storage.update_meta(&key_of(key), &fresh, &span).await;
    let returned = run.clock.tick();
    if updated.is_ok() {
        record(
            run,
            key,
            Event::Revalidate {
                generation,
                returned,
            },
        );
    }
}

/// A read's `mode`: 0..=2 a random range (where the hit can seek), 3..=6
/// whole at full speed, 7..=8 whole with pauses, 9 dropped after one chunk.
const WHOLE: u8 = 4;

async fn read<S: Storage + Sync>(
    storage: &'static S,
    run: &Run,
    key: usize,
    rng: &mut fastrand::Rng,
    mode: u8,
) {
    let span = Span::inactive().handle();
    let invoked = run.clock.tick();
    // A failed lookup is a miss: the cache answers nothing wrong.
    let found = storage
        .lookup(&key_of(key), &span)
        .await
        .unwrap_or_default();
    let Some((meta, mut hit)) = found else {
        record_read(run, key, invoked, ReadOutcome::Miss);
        return;
    };
    let (Some(generation), Some(len)) = (header_u64(&meta, "x-gen"), header_u64(&meta, "x-len"))
    else {
        record_read(run, key, invoked, ReadOutcome::Foreign);
        return;
    };
    let len = len as usize;
    let expected = body_of(generation, len);
    let (start, end) = if mode < 3 && hit.can_seek() && len > 0 {
        let start = rng.usize(..len);
        let end = rng.usize(start..=len);
        if hit.seek(start, Some(end)).is_err() {
            (0, len)
        } else {
            (start, end)
        }
    } else {
        (0, len)
    };
    let mut got = Vec::new();
    let mut error = None;
    loop {
        match hit.read_body().await {
            Ok(Some(chunk)) => got.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
        if mode == 9 {
            // The client went away: only what arrived so far is judged.
            drop(hit);
            let intact = expected[start..].starts_with(&got);
            let outcome = ReadOutcome::Hit {
                generation,
                mismatch: (!intact).then_some((start, got)),
            };
            record_read(run, key, invoked, outcome);
            return;
        }
        if mode >= 7 {
            pause(rng, run.config.pause).await;
        }
    }
    let outcome = match error {
        Some(error) => ReadOutcome::Failed { generation, error },
        None => {
            let intact = got == expected[start..end];
            ReadOutcome::Hit {
                generation,
                mismatch: (!intact).then_some((start, got)),
            }
        }
    };
    record_read(run, key, invoked, outcome);
}

/// A write in a key's history: generation, length, invoked, finish
/// started, returned, succeeded.
type WriteSpan = (u64, usize, u64, u64, u64, bool);

/// The violations in one key's history.
fn judge(events: &[Event]) -> Vec<String> {
    let mut found = Vec::new();
    let writes: Vec<WriteSpan> = events
        .iter()
        .filter_map(|e| match e {
            Event::Write {
                generation,
                len,
                invoked,
                finish_started,
                returned,
                ok,
            } => Some((*generation, *len, *invoked, *finish_started, *returned, *ok)),
            _ => None,
        })
        .collect();
    let overlaps_a_write =
        |invoked: u64, returned: u64| writes.iter().any(|w| w.2 < returned && w.4 > invoked);
    for event in events {
        let Event::Read {
            invoked,
            returned,
            outcome,
        } = event
        else {
            continue;
        };
        let (invoked, returned) = (*invoked, *returned);
        let judged = match outcome {
            ReadOutcome::Miss => continue,
            ReadOutcome::Foreign => {
                found.push(format!(
                    "read [{invoked}, {returned}] got a meta that names no generation"
                ));
                continue;
            }
            ReadOutcome::Failed { generation, error } => {
                // A reader following a write that was given up may fail;
                // one reading a complete entry may not.
                if !overlaps_a_write(invoked, returned) {
                    found.push(format!(
                        "a read [{invoked}, {returned}] of generation {generation} failed \
                         with no write in progress: {error}"
                    ));
                }
                continue;
            }
            ReadOutcome::Hit {
                generation,
                mismatch: None,
            } => *generation,
            ReadOutcome::Hit {
                generation,
                mismatch: Some((start, got)),
            } => {
                // Whose body is it? Some written generation's, byte for byte,
                // or a torn mix of several.
                let owner = writes.iter().find(|w| {
                    w.0 != *generation
                        && body_of(w.0, w.1).get(*start..*start + got.len()) == Some(&got[..])
                });
                let Some(owner) = owner else {
                    found.push(format!(
                        "read [{invoked}, {returned}] got a torn body under generation \
                         {generation}'s meta ({} bytes from {start})",
                        got.len()
                    ));
                    continue;
                };
                // Another generation's body: allowed only where a
                // revalidation carrying this meta ran while that body was
                // stored (the Storage API gives update_meta no entry id, so
                // it lands on whatever is current). The body's generation is
                // then judged as what the read returned.
                let raced = events.iter().any(|e| {
                    matches!(e, Event::Revalidate { generation: g, returned: r_ret }
                        if g == generation && owner.3 < *r_ret)
                });
                if !raced {
                    found.push(format!(
                        "read [{invoked}, {returned}] got generation {}'s body under \
                         generation {generation}'s meta",
                        owner.0
                    ));
                }
                owner.0
            }
        };
        judge_generation(&mut found, events, &writes, judged, invoked, returned);
    }
    found
}

/// The rule for one generation a read returned.
fn judge_generation(
    found: &mut Vec<String>,
    events: &[Event],
    writes: &[WriteSpan],
    generation: u64,
    invoked: u64,
    returned: u64,
) {
    let Some(&(_, _, w_inv, _, w_ret, ok)) = writes.iter().find(|w| w.0 == generation) else {
        found.push(format!(
            "read [{invoked}, {returned}] got generation {generation}, which was never written"
        ));
        return;
    };
    if !ok && w_ret < invoked {
        found.push(format!(
            "read [{invoked}, {returned}] got generation {generation}, whose write \
             [{w_inv}, {w_ret}] never finished"
        ));
    }
    for &(newer, _, _, n_fin, n_ret, n_ok) in writes {
        if n_ok && newer != generation && n_fin > w_ret && n_ret < invoked {
            found.push(format!(
                "read [{invoked}, {returned}] got generation {generation} (written [{w_inv}, {w_ret}]) \
                 after generation {newer} finished [{n_fin}, {n_ret}]"
            ));
        }
    }
    for event in events {
        if let Event::Purge {
            invoked: p_inv,
            returned: p_ret,
        } = event
        {
            if *p_inv > w_ret && *p_ret < invoked {
                found.push(format!(
                    "read [{invoked}, {returned}] got generation {generation} (written [{w_inv}, {w_ret}]) \
                     after a purge [{p_inv}, {p_ret}]"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(generation: u64, invoked: u64, finish_started: u64, returned: u64) -> Event {
        Event::Write {
            generation,
            len: 64,
            invoked,
            finish_started,
            returned,
            ok: true,
        }
    }

    fn hit(generation: u64, invoked: u64, returned: u64) -> Event {
        Event::Read {
            invoked,
            returned,
            outcome: ReadOutcome::Hit {
                generation,
                mismatch: None,
            },
        }
    }

    /// A read of `body`'s bytes under `meta`'s meta.
    fn mixed(meta: u64, body: u64, invoked: u64, returned: u64) -> Event {
        Event::Read {
            invoked,
            returned,
            outcome: ReadOutcome::Hit {
                generation: meta,
                mismatch: Some((0, body_of(body, 64))),
            },
        }
    }

    #[test]
    fn the_judge_finds_an_older_generation_a_purged_entry_and_a_mixed_body() {
        let older = [write(1, 0, 1, 2), write(2, 3, 4, 5), hit(1, 6, 7)];
        assert_eq!(judge(&older).len(), 1, "{:?}", judge(&older));
        let purged = [
            write(1, 0, 1, 2),
            Event::Purge {
                invoked: 3,
                returned: 4,
            },
            hit(1, 5, 6),
        ];
        assert_eq!(judge(&purged).len(), 1);
        // Generation 1's body under generation 2's meta: both a mixed body
        // and an older generation.
        let under_new_meta = [write(1, 0, 1, 2), write(2, 3, 4, 5), mixed(2, 1, 6, 7)];
        let found = judge(&under_new_meta);
        assert!(found.iter().any(|v| v.contains("body under")), "{found:?}");
        assert!(
            found.iter().any(|v| v.contains("after generation 2")),
            "{found:?}"
        );
        let torn = [
            write(1, 0, 1, 2),
            Event::Read {
                invoked: 3,
                returned: 4,
                outcome: ReadOutcome::Hit {
                    generation: 1,
                    mismatch: Some((0, vec![0; 64])),
                },
            },
        ];
        assert!(judge(&torn)[0].contains("torn"));
    }

    #[test]
    fn the_judge_allows_misses_overlaps_races_of_revalidation_and_the_newest_generation() {
        let fine = [
            write(1, 0, 1, 2),
            // Overlapping writes: either may be the last.
            write(2, 3, 5, 8),
            write(3, 4, 6, 7),
            hit(2, 9, 10),
            hit(3, 11, 12),
            Event::Read {
                invoked: 13,
                returned: 14,
                outcome: ReadOutcome::Miss,
            },
            // A read that began before the purge returned.
            Event::Purge {
                invoked: 15,
                returned: 17,
            },
            hit(3, 16, 18),
            // A revalidation that looked up generation 5 (in progress, later
            // given up) and landed on generation 4's body.
            write(4, 19, 20, 21),
            Event::Write {
                generation: 5,
                len: 64,
                invoked: 22,
                finish_started: 23,
                returned: 23,
                ok: false,
            },
            Event::Revalidate {
                generation: 5,
                returned: 24,
            },
            mixed(5, 4, 25, 26),
        ];
        assert!(judge(&fine).is_empty(), "{:?}", judge(&fine));
    }

    #[test]
    fn bodies_name_their_generation() {
        let body = body_of(77, 100);
        assert_eq!(u64::from_le_bytes(body[..8].try_into().expect("8")), 77);
        assert_ne!(body_of(77, 100), body_of(78, 100));
        assert_eq!(body_of(5, 3).len(), 3);
    }
}
