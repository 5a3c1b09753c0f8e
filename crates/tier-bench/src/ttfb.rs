//! Time to first byte of large objects: a streaming tier hands out its first
//! chunk before it has read the rest; a cache that returns whole values
//! cannot, and its first byte is its last.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use pingora_cache::trace::Span;
use tokio::runtime::Runtime;

use crate::latency::Lineup;
use crate::runner::{bench_meta, insert, DynStorage};
use crate::workload::{Expected, SizeClass, Workload};

const BODY: usize = 8 << 20;

/// Reads of one storage: time to the first chunk and to the last, per read.
#[derive(Debug, Default)]
struct Reads {
    first: Vec<Duration>,
    whole: Vec<Duration>,
    wrong: u64,
    misses: u64,
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at].as_secs_f64() * 1e3
}

impl Reads {
    fn row(mut self, name: &str, note: &str) -> String {
        self.first.sort();
        self.whole.sort();
        let (first, whole) = (quantile(&self.first, 0.5), quantile(&self.whole, 0.5));
        format!(
            "| {name} | {first:.2} | {:.2} | {whole:.2} | {:.2} | {} | {} | {note} |\n",
            quantile(&self.first, 0.99),
            first / whole,
            self.misses,
            self.wrong
        )
    }
}

async fn read_all(storage: DynStorage, workload: &Workload, keys: u64, reads: usize) -> Reads {
    let span = Span::inactive().handle();
    let mut out = Reads::default();
    for i in 0..reads {
        let idx = i as u64 % keys;
        let started = Instant::now();
        let Ok(Some((_, mut hit))) = storage.lookup(&workload.key(idx), &span).await else {
            out.misses += 1;
            continue;
        };
        let expected = Expected::new(idx, BODY.min(64 << 10));
        let (mut offset, mut ok, mut first) = (0, true, None);
        while let Ok(Some(chunk)) = hit.read_body().await {
            first.get_or_insert_with(|| started.elapsed());
            ok &= expected.check(offset, &chunk);
            offset += chunk.len();
        }
        out.whole.push(started.elapsed());
        out.first.push(first.unwrap_or_else(|| started.elapsed()));
        out.wrong += u64::from(!ok || offset != BODY);
    }
    out
}

/// How each storage of the lineup serves a large body.
fn note(name: &str) -> &'static str {
    match name.split(' ').next() {
        Some("pingora") => "one whole body in memory",
        Some("tier-memory") => "chunks as written, zero-copy",
        Some("tier-disk") => "runs of blocks, each checked",
        Some("tier-redis") => "256 KiB chunks, one GET each",
        _ => "",
    }
}

/// The TTFB section; the disk tier lives under `dir`.
pub fn section(rt: &Runtime, dir: &Path, quick: bool) -> String {
    let keys = 8u64;
    let reads = if quick { 24 } else { 96 };
    let workload = Workload {
        n_keys: keys,
        alpha: 1.0,
        size: SizeClass::Fixed(BODY),
        seed: 51,
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Time to first byte, {} MiB objects, one reader\n\n\
         {reads} reads over {keys} cached objects; first byte is the time from `lookup` to the \
         first body chunk, whole body to the last. The disk tier reads through the page cache \
         (buffered, no O_DIRECT; the objects were just written), so its figures are the tier's own \
         work, not the device's.\n\n\
         | storage | first byte p50 ms | first byte p99 ms | whole body p50 ms | first / whole | misses | wrong bodies | note |\n\
         |---|---:|---:|---:|---:|---:|---:|---|",
        BODY >> 20
    );
    let meta = bench_meta();
    let fill = |storage: DynStorage| {
        rt.block_on(async {
            for idx in 0..keys {
                let _ = insert(storage, &workload, &meta, idx).await;
            }
        })
    };
    let lineup = Lineup::new(rt, dir, 16 << 20);
    for &(name, storage) in &lineup.storages {
        fill(storage);
        let measured = rt.block_on(read_all(storage, &workload, keys, reads));
        out.push_str(&measured.row(name, note(name)));
    }
    #[cfg(feature = "peers")]
    out.push_str(&foyer_row(rt, dir, &workload, keys, reads));
    out.push('\n');
    out
}

/// foyer returns whole values: its first byte comes with its last.
#[cfg(feature = "peers")]
fn foyer_row(rt: &Runtime, dir: &Path, workload: &Workload, keys: u64, reads: usize) -> String {
    let Ok(foyer_dir) = tempfile::tempdir_in(dir) else {
        return String::new();
    };
    rt.block_on(async {
        let cache = match crate::foyer_peer::open(
            foyer_dir.path(),
            1 << 20,
            1 << 30,
            foyer::HybridCachePolicy::WriteOnInsertion,
        )
        .await
        {
            Ok(cache) => cache,
            Err(e) => {
                return format!("| foyer (disk) | - | - | - | - | - | - | not measured: {e} |\n")
            }
        };
        for k in 0..keys {
            cache.insert(k, workload.body(k).to_vec());
        }
        cache.storage().wait().await;
        let mut measured = Reads::default();
        for i in 0..reads {
            let k = i as u64 % keys;
            let started = Instant::now();
            match cache.get(&k).await {
                Ok(Some(entry)) => {
                    let elapsed = started.elapsed();
                    let value = entry.value();
                    let ok =
                        Expected::new(k, BODY.min(64 << 10)).check(0, value) && value.len() == BODY;
                    measured.wrong += u64::from(!ok);
                    measured.first.push(elapsed);
                    measured.whole.push(elapsed);
                }
                _ => measured.misses += 1,
            }
        }
        let _ = cache.close().await;
        measured.row(
            "foyer 0.22 (1 MiB memory over disk)",
            "whole values only: cannot stream, first byte = last byte",
        )
    })
}
