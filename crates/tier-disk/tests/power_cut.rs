//! Power cuts, simulated. SIGKILL keeps the page cache, so it cannot show
//! what a power cut does: here the fault plan records every segment
//! creation, write, sync and removal of a concurrent workload (writes,
//! purges, expiries), and at each cut point the directory is rebuilt keeping
//! only what was synced before the cut, plus an arbitrary part of what was
//! not (each unsynced write whole, dropped or torn at a 512-byte boundary;
//! an unsynced file created or not). Then it is reopened and every key is
//! judged against what its operations' acknowledgments promise.
//!
//! With `Durability::Data`, every entry whose `finish` returned before the
//! cut is there byte for byte (or a newer write of it), no purge that
//! returned comes back, and nothing corrupt is served. `None` and a
//! negative control (`Data` with its syncs switched off) are measured the
//! same way and print what they lose.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use pingora_cache::storage::{PurgeTarget, PurgeType, Storage};
use pingora_cache::trace::Span;
use pingora_cache::CacheKey;
use tier_disk::{Controls, DiskConfig, DiskStorage, Durability, Event, FaultPlan};

const TASKS: u32 = 4;
const KEYS_PER_TASK: u32 = 3;
const OPS_PER_TASK: u32 = 40;

fn config(dir: &Path, durability: Durability) -> DiskConfig {
    DiskConfig::new(dir, 64 << 20)
        .block_size(4096)
        .segment_bytes(64 << 10)
        .durability(durability)
}

fn body(key: u32, gen: u32) -> Vec<u8> {
    tier_conformance::crash::generation_body(key, gen, 8, 20_000)
}

/// One acknowledged operation of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Write(u32),
    Purge,
}

/// Per key, its operations in order, each with the marker its
/// acknowledgment put in the journal.
type History = BTreeMap<u32, Vec<(u64, Op)>>;

async fn workload(disk: &'static DiskStorage, plan: Arc<FaultPlan>) -> History {
    let history = Arc::new(Mutex::new(History::new()));
    let next_mark = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (plan, history, next_mark) = (plan.clone(), history.clone(), next_mark.clone());
        tasks.push(tokio::spawn(async move {
            let span = Span::inactive().handle();
            let mut rng = fastrand::Rng::with_seed(u64::from(t) + 7);
            for n in 0..OPS_PER_TASK {
                let key_n = t * KEYS_PER_TASK + rng.u32(0..KEYS_PER_TASK);
                let key = CacheKey::new(format!("cut/{key_n}"), "");
                let gen = t * 1000 + n + 1;
                let op = match rng.u32(0..10) {
                    0 | 1 => {
                        let done = disk
                            .purge(
                                PurgeTarget::Active(&key.to_compact()),
                                PurgeType::Invalidation,
                                &span,
                            )
                            .await;
                        done.ok().map(|_| Op::Purge)
                    }
                    2 => {
                        // An expiry changes the meta only; judged as no op.
                        let _ = disk
                            .expire(PurgeTarget::Active(&key.to_compact()), &span)
                            .await;
                        None
                    }
                    _ => {
                        let meta = tier_core::testing::meta_with_header("x-gen", &gen.to_string());
                        let mut miss = disk
                            .get_miss_handler(&key, &meta, &span)
                            .await
                            .expect("miss");
                        for chunk in body(key_n, gen).chunks(3000) {
                            miss.write_body(Bytes::copy_from_slice(chunk), false)
                                .await
                                .expect("write");
                        }
                        miss.finish().await.ok().map(|_| Op::Write(gen))
                    }
                };
                if let Some(op) = op {
                    let mark = next_mark.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    // The marker goes in after the acknowledgment: a cut
                    // after it must keep what it promises.
                    let mut h = history.lock();
                    plan.mark(mark);
                    h.entry(key_n).or_default().push((mark, op));
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let h = history.lock().clone();
    h
}

/// A file as the disk holds it across the cut.
#[derive(Debug, Default, Clone)]
struct FileState {
    size: u64,
    durable: Vec<u8>,
    /// Synced at least once (its directory entry is then on disk: ext4 and
    /// XFS commit it with the file's first fdatasync), or a directory sync
    /// came after its creation.
    exists_durably: bool,
    unsynced: Vec<(u64, Vec<u8>)>,
}

fn apply(buf: &mut [u8], offset: u64, bytes: &[u8]) {
    let at = offset as usize;
    let end = (at + bytes.len()).min(buf.len());
    buf[at..end].copy_from_slice(&bytes[..end - at]);
}

/// Rebuild in `out` the directory a power cut after `events[..cut]` leaves.
fn rebuild(events: &[Event], cut: usize, rng: &mut fastrand::Rng, out: &Path) -> HashSet<u64> {
    let mut files: HashMap<u64, FileState> = HashMap::new();
    let mut removed: Vec<(u64, FileState)> = Vec::new();
    let mut removals_durable = 0;
    let mut acked = HashSet::new();
    for event in &events[..cut] {
        match event {
            Event::Create { segment, size } => {
                files.insert(
                    *segment,
                    FileState {
                        size: *size,
                        durable: vec![0; *size as usize],
                        ..FileState::default()
                    },
                );
            }
            Event::Write {
                segment,
                offset,
                bytes,
            } => {
                if let Some(f) = files.get_mut(segment) {
                    f.unsynced.push((*offset, bytes.clone()));
                }
            }
            Event::Sync { segment } => {
                if let Some(f) = files.get_mut(segment) {
                    for (offset, bytes) in std::mem::take(&mut f.unsynced) {
                        apply(&mut f.durable, offset, &bytes);
                    }
                    f.exists_durably = true;
                }
            }
            Event::Remove { segment } => {
                if let Some(f) = files.remove(segment) {
                    removed.push((*segment, f));
                }
            }
            Event::DirSync => {
                for f in files.values_mut() {
                    f.exists_durably = true;
                }
                removals_durable = removed.len();
            }
            Event::Mark(n) => {
                acked.insert(*n);
            }
        }
    }
    // Removals reach the disk in order (the file system's journal): some
    // prefix of them, at least those a directory sync covered.
    let kept_removals = removals_durable + rng.usize(0..=removed.len() - removals_durable);
    for (segment, f) in removed.into_iter().skip(kept_removals) {
        files.insert(segment, f);
    }
    std::fs::create_dir_all(out).expect("mkdir");
    for (segment, f) in files {
        if !f.exists_durably && rng.bool() {
            continue;
        }
        let mut content = f.durable.clone();
        for (offset, bytes) in &f.unsynced {
            match rng.u32(0..3) {
                0 => apply(&mut content, *offset, bytes),
                1 => {}
                _ => {
                    let torn = (rng.usize(0..=bytes.len()) / 512) * 512;
                    apply(&mut content, *offset, &bytes[..torn]);
                }
            }
        }
        content.truncate(f.size as usize);
        std::fs::write(out.join(format!("seg-{segment:016x}.v2")), &content).expect("write");
    }
    acked
}

/// Why a read of a reopened directory is not a plain answer.
enum Found {
    /// Wrong bytes were served.
    Wrong(String),
    /// The lookup or the body read failed (a mid-body error is allowed for
    /// corruption; it is not for acknowledged entries under `Data`).
    Failed(String),
}

/// What a reopened directory holds for `key_n`: its generation, or `None`.
async fn found(disk: &'static DiskStorage, key_n: u32) -> Result<Option<u32>, Found> {
    let span = Span::inactive().handle();
    let key = CacheKey::new(format!("cut/{key_n}"), "");
    let Some((meta, mut hit)) = disk
        .lookup(&key, &span)
        .await
        .map_err(|e| Found::Failed(e.to_string()))?
    else {
        return Ok(None);
    };
    let gen: u32 = meta
        .headers()
        .get("x-gen")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or(Found::Wrong("no x-gen".into()))?;
    let got = tier_core::testing::read_body(&mut hit)
        .await
        .map_err(|e| Found::Failed(e.to_string()))?;
    if got != body(key_n, gen) {
        return Err(Found::Wrong(format!(
            "cut/{key_n}: the body is not generation {gen}'s"
        )));
    }
    Ok(Some(gen))
}

#[derive(Debug, Default)]
struct Verdict {
    cuts: usize,
    judged: usize,
    lost: usize,
    purges_back: usize,
    wrong: usize,
    failed: usize,
}

async fn run(durability: Durability, controls: Controls, cuts: usize, label: &str) -> Verdict {
    let root = tempfile::tempdir().expect("tempdir");
    let plan = FaultPlan::new();
    plan.set_controls(controls);
    plan.record_journal();
    let live = root.path().join("live");
    let disk = DiskStorage::open(config(&live, durability).fault_plan(plan.clone()))
        .await
        .expect("open")
        .leak();
    let history = workload(disk, plan.clone()).await;
    let events = plan.take_journal();
    disk.close().await.expect("close");
    let mut verdict = Verdict::default();
    let mut rng = fastrand::Rng::with_seed(99);
    for c in 0..cuts {
        let cut = (events.len() * (c + 1)) / cuts;
        let dir = root.path().join(format!("cut-{c}"));
        let acked = rebuild(&events, cut, &mut rng, &dir);
        let reopened = DiskStorage::open(config(&dir, Durability::None))
            .await
            .expect("a cut directory opens")
            .leak();
        for (key_n, ops) in &history {
            let got = match found(reopened, *key_n).await {
                Ok(g) => g,
                Err(Found::Wrong(e)) => {
                    println!("{label}: cut {cut}: {e}");
                    verdict.wrong += 1;
                    continue;
                }
                Err(Found::Failed(e)) => {
                    if durability == Durability::Data && !controls.skip_sync {
                        println!("{label}: cut {cut}: cut/{key_n}: {e}");
                    }
                    verdict.failed += 1;
                    continue;
                }
            };
            verdict.judged += 1;
            // The last acknowledged operation; the one after it (each key's
            // operations run one at a time) may have been in flight at the
            // cut, and may or may not have reached the disk.
            let Some(last) = ops.iter().rposition(|(mark, _)| acked.contains(mark)) else {
                continue;
            };
            let in_flight = ops.get(last + 1).map(|(_, op)| *op);
            let ok = match (ops[last].1, got) {
                (Op::Write(gen), Some(g)) => g == gen || in_flight == Some(Op::Write(g)),
                (Op::Write(_), None) => in_flight == Some(Op::Purge),
                (Op::Purge, None) => true,
                (Op::Purge, Some(g)) => in_flight == Some(Op::Write(g)),
            };
            if !ok {
                if durability == Durability::Data && !controls.skip_sync {
                    println!(
                        "{label}: cut {cut} of {}: cut/{key_n} last acknowledged {:?}, next {in_flight:?}, found {got:?}",
                        events.len(),
                        ops[last]
                    );
                }
                match ops[last].1 {
                    Op::Write(_) => verdict.lost += 1,
                    Op::Purge => verdict.purges_back += 1,
                }
            }
        }
        reopened.close().await.expect("close");
        std::fs::remove_dir_all(&dir).ok();
        verdict.cuts += 1;
    }
    println!(
        "RESULT power cut {label}: {} cut points over {} journaled operations, {} keys judged, {} acknowledged writes lost, {} purges came back, {} reads failed mid-body, {} wrong bodies served",
        verdict.cuts,
        events.len(),
        verdict.judged,
        verdict.lost,
        verdict.purges_back,
        verdict.failed,
        verdict.wrong
    );
    verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_data_durability_a_power_cut_loses_nothing_acknowledged() {
    let v = run(Durability::Data, Controls::default(), 200, "Data").await;
    assert_eq!(v.cuts, 200);
    assert!(v.judged > 1000, "{v:?}");
    assert_eq!(v.wrong, 0, "{v:?}");
    assert_eq!(v.failed, 0, "{v:?}");
    assert_eq!(v.lost, 0, "{v:?}");
    assert_eq!(v.purges_back, 0, "{v:?}");
}

/// What `None` loses, and the negative control: `Data` with its syncs off
/// loses acknowledged writes, so the test above has teeth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_syncs_a_power_cut_loses_acknowledged_writes() {
    let none = run(Durability::None, Controls::default(), 50, "None").await;
    assert_eq!(none.wrong, 0, "{none:?}");
    let control = run(
        Durability::Data,
        Controls {
            skip_sync: true,
            ..Controls::default()
        },
        50,
        "Data with syncs off (negative control)",
    )
    .await;
    assert_eq!(control.wrong, 0, "{control:?}");
    assert!(control.lost + control.purges_back > 0, "{control:?}");
}
