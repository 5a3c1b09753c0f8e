//! The disk tier against the machine's raw file rate and foyer, same bytes,
//! same run: durable inserts with group commit, inserts without syncs, hits
//! against a raw `pread` of the same records, bytes written per byte
//! admitted, and the time to reopen a populated cache; and, as its own
//! section, 1 MiB bodies against raw files in alternating rounds.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tier_disk::{DiskConfig, DiskStorage, Durability};
use tokio::runtime::Runtime;

use crate::disk_raw;
use crate::runner::{median, populate, range, run_trace, DynStorage, Op};
use crate::workload::{SizeClass, Workload};

/// Bytes this process has caused to be written to storage (`/proc/self/io`).
pub fn written_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

fn open_with(
    rt: &Runtime,
    dir: &Path,
    capacity: u64,
    durability: Durability,
) -> std::io::Result<&'static DiskStorage> {
    let config = DiskConfig::new(dir, capacity)
        .max_object_bytes(16 << 20)
        .durability(durability);
    rt.block_on(DiskStorage::open(config))
        .map(DiskStorage::leak)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

/// The disk section of the report, measured under `dir`.
pub fn section(rt: &Runtime, dir: &Path, quick: bool, tasks: usize) -> String {
    match run(rt, dir, quick, tasks) {
        Ok(text) => text,
        Err(e) => format!("Disk tier not measured: {e}\n\n"),
    }
}

/// Concurrent writers in the durable-insert rows: enough for group commit
/// to matter, as a proxy's many connections give it.
const WRITERS: usize = 16;

struct Inserted {
    m: crate::runner::Measurement,
    /// Bytes written to storage per body byte admitted.
    amplification: Option<f64>,
    syncs_per_sec: f64,
    disk: &'static DiskStorage,
}

fn insert(
    rt: &Runtime,
    dir: &Path,
    workload: &Workload,
    durability: Durability,
    writers: usize,
) -> std::io::Result<Inserted> {
    let cache_dir = tempfile::tempdir_in(dir)?.keep();
    let disk = open_with(rt, &cache_dir, 64 << 30, durability)?;
    let syncs = disk.disk_stats().syncs;
    let before = written_bytes();
    let m = populate(rt, disk as DynStorage, workload, writers);
    let after = written_bytes();
    if m.errors > 0 {
        return Err(std::io::Error::other(format!("{} write errors", m.errors)));
    }
    let syncs_per_sec =
        (disk.disk_stats().syncs - syncs) as f64 / m.elapsed.as_secs_f64().max(1e-9);
    Ok(Inserted {
        amplification: before
            .zip(after)
            .map(|(b, a)| (a - b) as f64 / m.bytes.max(1) as f64),
        m,
        syncs_per_sec,
        disk,
    })
}

fn workload(size: usize, n_keys: u64) -> Workload {
    Workload {
        n_keys,
        alpha: 1.0,
        size: SizeClass::Fixed(size),
        seed: 21,
    }
}

fn run(rt: &Runtime, dir: &Path, quick: bool, tasks: usize) -> std::io::Result<String> {
    let mut out = String::new();
    let small_keys = if quick { 4_000 } else { 20_000 };
    let _ = writeln!(
        out,
        "### Disk tier (format v2: a log of segments) against raw files and foyer\n\n\
         Same run, same bodies. Raw files: one file per body written with an fsync each, the \
         rate v1 was built on; raw reads: the same record bytes read with `pread` from an \
         already open file by {tasks} threads, each block's checksum checked, as the tier's \
         reads are (reads from the page cache in both). foyer 0.22 runs its hybrid cache with \
         1 MiB of memory over its file-system device (buffered I/O, no fsync, admissions \
         dropped when its buffer is full). Durable rows: `Durability::Data` ({WRITERS} \
         concurrent writers: `finish` returns once its record is synced, concurrent finishes \
         share one fdatasync).\n"
    );
    let _ = writeln!(
        out,
        "| workload | tier-disk | peer | ratio |\n|---|---:|---:|---:|"
    );
    for size in [4usize << 10, 16 << 10] {
        let label = format!("{} KiB", size >> 10);
        let w = workload(size, small_keys);
        let durable = insert(rt, dir, &w, Durability::Data, WRITERS)?;
        let raw_dir = tempfile::tempdir_in(dir)?;
        let raw = disk_raw::measure(raw_dir.path(), &w, (small_keys / 4).max(500))?;
        let raw_fsync = raw[1].files_per_sec();
        let _ = writeln!(
            out,
            "| {label}, Data, {WRITERS} writers: durable inserts/s ({:.0} fdatasyncs/s) | {:.0} | raw file + fsync each: {:.0} | {:.2}× |",
            durable.syncs_per_sec,
            durable.m.ops_per_sec(),
            raw_fsync,
            durable.m.ops_per_sec() / raw_fsync.max(1e-9)
        );
        let fast = insert(rt, dir, &w, Durability::None, WRITERS)?;
        #[cfg(feature = "peers")]
        {
            let foyer_dir = tempfile::tempdir_in(dir)?;
            match rt.block_on(crate::foyer_peer::disk_figures(foyer_dir.path(), &w)) {
                Ok(f) => {
                    let admitted = small_keys - f.dropped;
                    let admitted_rate = f.inserts_per_sec * admitted as f64 / small_keys as f64;
                    let _ = writeln!(
                        out,
                        "| {label}, None, {WRITERS} writers: inserts/s, all admitted | {:.0} | foyer: {small_keys} offered, {admitted} admitted, {admitted_rate:.0} admitted/s | {:.2}× |",
                        fast.m.ops_per_sec(),
                        fast.m.ops_per_sec() / admitted_rate.max(1e-9)
                    );
                    if size == 4 << 10 {
                        let trace = Arc::new((0..small_keys).collect::<Vec<_>>());
                        let read =
                            run_trace(rt, fast.disk as DynStorage, &w, trace, tasks, Op::Read);
                        let _ = writeln!(
                            out,
                            "| {label}: disk hits/s ({tasks} tasks, p99 {:.0} µs) | {:.0} | foyer {:.0} | {:.2}× |",
                            read.latency_us(0.99),
                            read.ops_per_sec(),
                            f.hits_per_sec,
                            read.ops_per_sec() / f.hits_per_sec.max(1e-9)
                        );
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "| {label}: foyer not measured: {e} | | | |");
                }
            }
        }
        if size == 4 << 10 {
            let trace = Arc::new((0..small_keys).collect::<Vec<_>>());
            let stats_before = fast.disk.disk_stats();
            let read = run_trace(rt, fast.disk as DynStorage, &w, trace, tasks, Op::Read);
            if read.corrupt > 0 || read.misses > 0 || read.errors > 0 {
                return Err(std::io::Error::other(format!(
                    "disk bench saw {} corrupt, {} misses, {} read errors",
                    read.corrupt, read.misses, read.errors
                )));
            }
            let stats = fast.disk.disk_stats();
            let nowait = stats.reads_nowait - stats_before.reads_nowait;
            let pool = stats.reads_pool - stats_before.reads_pool;
            let raw_read = disk_raw::pread_records(dir, &w, small_keys, tasks)?;
            let _ = writeln!(
                out,
                "| {label}: disk hits/s ({:.0}% of reads answered on the worker thread, no hop) | {:.0} | raw pread of the record, checked: {:.0} | {:.2}× |",
                100.0 * nowait as f64 / (nowait + pool).max(1) as f64,
                read.ops_per_sec(),
                raw_read.files_per_sec(),
                read.ops_per_sec() / raw_read.files_per_sec().max(1e-9)
            );
            let (stored, pingora) = meta_decode_ns();
            let _ = writeln!(
                out,
                "| the meta decode a hit pays (the raw read does not): the tier's form, pingora's serialized form | {stored:.0} ns | {pingora:.0} ns | {:.2}× |",
                stored / pingora.max(1e-9)
            );
            for (what, meta) in [
                ("the bench's one header", crate::runner::bench_meta()),
                (
                    "a typical origin's nine headers",
                    tier_core::testing::meta_fresh_for(
                        std::time::Duration::from_secs(86_400),
                        &tier_core::testing::ORIGIN_HEADERS,
                    ),
                ),
            ] {
                let (internal, header) = meta.serialize().unwrap_or_default();
                let stored = tier_core::meta::StoredMeta::new(&meta).map_or(0, |s| s.charge());
                let pingora = internal.len() + header.len();
                let _ = writeln!(
                    out,
                    "| meta bytes in a record, {what}: the tier's form, pingora's serialized form | {stored} | {pingora} | {:.2}× |",
                    stored as f64 / pingora.max(1) as f64
                );
            }
        }
        for (name, m) in [("None", &fast), ("Data", &durable)] {
            if let Some(a) = m.amplification {
                let _ = writeln!(
                    out,
                    "| {label}, {name}, {WRITERS} writers: bytes written to storage per body byte admitted | {a:.3} | 1.000 | |"
                );
            }
        }
        if size == 4 << 10 {
            let single = insert(
                rt,
                dir,
                &workload(size, small_keys / 4),
                Durability::Data,
                1,
            )?;
            if let Some(a) = single.amplification {
                let _ = writeln!(
                    out,
                    "| {label}, Data, 1 writer: bytes written per body byte admitted ({:.0} inserts/s, one fdatasync each) | {a:.3} | 1.000 | |",
                    single.m.ops_per_sec()
                );
            }
        }
    }
    #[cfg(not(feature = "peers"))]
    out.push_str("\nfoyer is not in this run (built without the `peers` feature).\n");
    out.push('\n');

    // Reopen time: populate, close (the last segment sealed), then time a
    // fresh open of the same directory.
    let _ = writeln!(
        out,
        "| entries on disk | open time | index heap bytes per entry |\n|---:|---:|---:|"
    );
    let sizes: Vec<u64> = if quick {
        vec![10_000, 100_000]
    } else {
        vec![100_000, 1_000_000, 10_000_000]
    };
    for n in sizes {
        let cache_dir = tempfile::tempdir_in(dir)?;
        // Filling is not what is measured: no syncs.
        let disk = open_with(rt, cache_dir.path(), 64 << 30, Durability::None)?;
        let w = Workload {
            n_keys: n,
            alpha: 1.0,
            size: SizeClass::Fixed(64),
            seed: 22,
        };
        populate(rt, disk as DynStorage, &w, WRITERS);
        rt.block_on(disk.close())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let started = Instant::now();
        let reopened = open_with(rt, cache_dir.path(), 64 << 30, Durability::Data)?;
        let took = started.elapsed();
        let entries = tier_core::Tier::stats(reopened).entries;
        let index = reopened.disk_stats().index_bytes as f64 / entries.max(1) as f64;
        let _ = writeln!(
            out,
            "| {entries} | {:.0} ms | {index:.1} |",
            took.as_secs_f64() * 1000.0
        );
        rt.block_on(reopened.close())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    out.push('\n');
    Ok(out)
}

/// The 1 MiB section of the report, measured under `dir`.
pub fn large_section(rt: &Runtime, dir: &Path, quick: bool, tasks: usize) -> String {
    match large(rt, dir, quick, tasks) {
        Ok(text) => text,
        Err(e) => format!("1 MiB bodies not measured: {e}\n\n"),
    }
}

/// 1 MiB bodies: the tier (fragments ahead of the entry record) against
/// raw files, in rounds that alternate the two so that a moment when the
/// machine is slow weighs on both; each figure is the median of the rounds,
/// the ratio the median of the rounds' ratios.
fn large(rt: &Runtime, dir: &Path, quick: bool, tasks: usize) -> std::io::Result<String> {
    let rounds = if quick { 2 } else { 5 };
    let big = workload(1 << 20, if quick { 100 } else { 300 });
    let (mut ins, mut raw_ins, mut hits, mut raw_hits, mut p99) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut amplification = None;
    for _ in 0..rounds {
        let durable = insert(rt, dir, &big, Durability::Data, tasks)?;
        let raw_dir = tempfile::tempdir_in(dir)?;
        let raw = disk_raw::measure(raw_dir.path(), &big, big.n_keys)?;
        let trace = Arc::new((0..big.n_keys).collect::<Vec<_>>());
        let read = run_trace(rt, durable.disk as DynStorage, &big, trace, tasks, Op::Read);
        if read.corrupt > 0 || read.misses > 0 || read.errors > 0 {
            return Err(std::io::Error::other(format!(
                "1 MiB reads saw {} corrupt, {} misses, {} errors",
                read.corrupt, read.misses, read.errors
            )));
        }
        ins.push(durable.m.mib_per_sec());
        raw_ins.push(raw[1].mib_per_sec());
        hits.push(read.mib_per_sec());
        raw_hits.push(raw[2].mib_per_sec());
        p99.push(read.latency_us(0.99));
        amplification = amplification.or(durable.amplification);
        rt.block_on(durable.disk.close())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    let ratios = |a: &[f64], b: &[f64]| -> (f64, f64, f64) {
        let r: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b.max(1e-9)).collect();
        let (lo, hi) = range(r.iter().copied());
        (median(r), lo, hi)
    };
    let (ri, ri_lo, ri_hi) = ratios(&ins, &raw_ins);
    let (rh, rh_lo, rh_hi) = ratios(&hits, &raw_hits);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Disk tier, 1 MiB bodies, against raw files\n\n\
         {} keys of 1 MiB, {rounds} rounds; each round writes them into a fresh tier \
         (`Durability::Data`, {tasks} writers) and as raw files (one file per body, an fsync \
         each, one thread), then reads them back from both (the tier: {tasks} tasks, every \
         block's checksum checked by the tier and every byte by the bench; raw: one thread, \
         every byte checked; page cache warm in both). Medians of the rounds; the ratio is \
         the median of the rounds' ratios, their range in brackets.\n",
        big.n_keys
    );
    let _ = writeln!(
        out,
        "| workload | tier-disk | raw files | ratio (range) |\n|---|---:|---:|---:|"
    );
    let _ = writeln!(
        out,
        "| 1 MiB, Data, {tasks} writers: insert MiB/s | {:.1} | write + fsync each: {:.1} | {ri:.2}× ({ri_lo:.2}–{ri_hi:.2}) |",
        median(ins),
        median(raw_ins)
    );
    let _ = writeln!(
        out,
        "| 1 MiB: hit MiB/s (p99 {:.0} µs) | {:.1} | read back, checked: {:.1} | {rh:.2}× ({rh_lo:.2}–{rh_hi:.2}) |",
        median(p99),
        median(hits),
        median(raw_hits)
    );
    if let Some(a) = amplification {
        let _ = writeln!(
            out,
            "| 1 MiB, Data: bytes written per body byte admitted | {a:.3} | 1.000 | |"
        );
    }
    out.push('\n');
    Ok(out)
}

/// Nanoseconds to decode the bench's meta as the tier stores it (a hit pays
/// it), and as pingora serializes it (what records of form 0 cost).
fn meta_decode_ns() -> (f64, f64) {
    let meta = crate::runner::bench_meta();
    let (internal, header) = meta.serialize().unwrap_or_default();
    let stored = tier_core::meta::StoredMeta::new(&meta).ok();
    let n = 20_000;
    let time = |decode: &dyn Fn()| {
        let started = Instant::now();
        for _ in 0..n {
            decode();
        }
        started.elapsed().as_nanos() as f64 / n as f64
    };
    let ours = time(&|| {
        let _ = std::hint::black_box(
            stored
                .as_ref()
                .map(|s| std::hint::black_box(s).to_cache_meta()),
        );
    });
    let pingora = time(&|| {
        let _ = std::hint::black_box(pingora_cache::CacheMeta::deserialize(
            std::hint::black_box(&internal),
            std::hint::black_box(&header),
        ));
    });
    (ours, pingora)
}
