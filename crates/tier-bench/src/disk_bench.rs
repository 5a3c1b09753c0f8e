//! The disk tier against the machine's raw file rate, same bytes, same
//! durability, same run: inserts and hits of 1 MiB and 4 KiB bodies, bytes
//! written per byte admitted, and the time to reopen a populated cache.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tier_disk::{DiskConfig, DiskStorage, Durability};
use tokio::runtime::Runtime;

use crate::disk_raw;
use crate::runner::{populate, run_trace, DynStorage, Op};
use crate::workload::{SizeClass, Workload};

/// Bytes this process has caused to be written to storage (`/proc/self/io`).
pub fn written_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .and_then(|v| v.trim().parse().ok())
}

fn open(rt: &Runtime, dir: &Path, capacity: u64) -> std::io::Result<&'static DiskStorage> {
    open_with(rt, dir, capacity, Durability::Data)
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

fn run(rt: &Runtime, dir: &Path, quick: bool, tasks: usize) -> std::io::Result<String> {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Disk tier against raw std::fs, Durability::Data (fsync of each file before publish)\n\n\
         The raw rate writes the same bodies as plain files with an fsync each, and reads them \
         back, checking every byte as the tier's reads are checked; reads are from the page cache \
         in both (buffered I/O, files just written), and foyer's file-system device runs with its \
         default, buffered I/O (direct I/O off).\n"
    );
    let _ = writeln!(
        out,
        "| workload | tier-disk | raw std::fs | ratio |\n|---|---:|---:|---:|"
    );
    for (label, size, n_keys) in [
        (
            "1 MiB bodies",
            SizeClass::Fixed(1 << 20),
            if quick { 100 } else { 400 },
        ),
        (
            "4 KiB bodies",
            SizeClass::Fixed(4 << 10),
            if quick { 2_000 } else { 20_000 },
        ),
    ] {
        let workload = Workload {
            n_keys,
            alpha: 1.0,
            size,
            seed: 21,
        };
        let cache_dir = tempfile::tempdir_in(dir)?;
        let disk = open(rt, cache_dir.path(), 64 << 30)?;
        let written_before = written_bytes();
        let insert = populate(rt, disk as DynStorage, &workload, tasks);
        let written_after = written_bytes();
        let trace = Arc::new((0..n_keys).collect::<Vec<_>>());
        let read = run_trace(rt, disk as DynStorage, &workload, trace, tasks, Op::Read);
        if read.corrupt > 0 || read.misses > 0 || read.errors > 0 || insert.errors > 0 {
            return Err(std::io::Error::other(format!(
                "disk bench saw {} corrupt, {} misses, {} read errors, {} write errors",
                read.corrupt, read.misses, read.errors, insert.errors
            )));
        }
        let raw_dir = tempfile::tempdir_in(dir)?;
        let raw = disk_raw::measure(raw_dir.path(), &workload, n_keys)?;
        let raw_write = &raw[1]; // write + fsync per file
        let raw_read = &raw[2];
        let (ins, rd) = (insert.mib_per_sec(), read.mib_per_sec());
        let _ = writeln!(
            out,
            "| {label}: insert MiB/s ({} inserts/s) | {ins:.1} | {:.1} | {:.2}× |",
            insert.ops_per_sec() as u64,
            raw_write.mib_per_sec(),
            ins / raw_write.mib_per_sec().max(1e-9)
        );
        let _ = writeln!(
            out,
            "| {label}: hit MiB/s ({} hits/s, p99 {:.0} µs) | {rd:.1} | {:.1} | {:.2}× |",
            read.ops_per_sec() as u64,
            read.latency_us(0.99),
            raw_read.mib_per_sec(),
            rd / raw_read.mib_per_sec().max(1e-9)
        );
        #[cfg(feature = "peers")]
        if size == SizeClass::Fixed(4 << 10) {
            let foyer_dir = tempfile::tempdir_in(dir)?;
            match rt.block_on(crate::foyer_peer::disk_figures(foyer_dir.path(), &workload)) {
                Ok(f) => {
                    let _ = writeln!(
                        out,
                        "| {label}: inserts/s, vs foyer (1 MiB memory, write on insertion, until flushed; foyer packs entries into 16 MiB blocks with no fsync per entry, tier-disk fsyncs each file) | {:.0} | foyer {:.0} | {:.2}× |",
                        insert.ops_per_sec(),
                        f.inserts_per_sec,
                        insert.ops_per_sec() / f.inserts_per_sec.max(1e-9)
                    );
                    let _ = writeln!(
                        out,
                        "| {label}: disk hits/s, vs foyer ({} of {n_keys} foyer inserts dropped) | {:.0} | foyer {:.0} | {:.2}× |",
                        f.dropped,
                        read.ops_per_sec(),
                        f.hits_per_sec,
                        read.ops_per_sec() / f.hits_per_sec.max(1e-9)
                    );
                }
                Err(e) => {
                    let _ = writeln!(out, "| {label}: foyer not measured: {e} | | | |");
                }
            }
        }
        if let (Some(before), Some(after)) = (written_before, written_after) {
            let admitted = insert.bytes.max(1) as f64;
            let _ = writeln!(
                out,
                "| {label}: bytes written to storage per body byte admitted | {:.3} | 1.000 | |",
                (after - before) as f64 / admitted
            );
        }
    }
    #[cfg(not(feature = "peers"))]
    out.push_str(
        "\nfoyer's hybrid cache is not in this run (built without the `peers` feature).\n\n",
    );
    #[cfg(feature = "peers")]
    out.push('\n');

    // Reopen time: populate, then time a fresh open of the same directory.
    let _ = writeln!(out, "| entries on disk | open time |\n|---:|---:|");
    for n in if quick {
        vec![10_000u64]
    } else {
        vec![10_000, 100_000, 1_000_000]
    } {
        let cache_dir = tempfile::tempdir_in(dir)?;
        // Filling is not what is measured: skip the fsyncs.
        let disk = open_with(rt, cache_dir.path(), 64 << 30, Durability::None)?;
        let workload = Workload {
            n_keys: n,
            alpha: 1.0,
            size: SizeClass::Fixed(512),
            seed: 22,
        };
        populate(rt, disk as DynStorage, &workload, tasks);
        let started = Instant::now();
        let reopened = open(rt, cache_dir.path(), 64 << 30)?;
        let took = started.elapsed();
        let entries = tier_core::Tier::stats(reopened).entries;
        let _ = writeln!(out, "| {entries} | {:.0} ms |", took.as_secs_f64() * 1000.0);
    }
    out.push('\n');
    Ok(out)
}
