//! `tier-bench`: the benchmark report behind `cargo xtask bench`.
//!
//! Every scenario runs each storage on the same seeded workload in the same
//! process, and reports ops/s, MiB/s and p50/p99 latency, with each figure
//! divided by the baseline's (pingora's `MemCache`) from the same run: absolute
//! figures vary between machines, ratios much less.
//!
//! ```text
//! cargo xtask bench            # full run
//! cargo xtask bench --quick    # under two minutes
//! cargo xtask bench --out DIR  # where report.md goes (default target/bench)
//! ```

mod disk_bench;
mod disk_raw;
#[cfg(feature = "peers")]
mod foyer_peer;
mod hit_ratio;
mod hybrid_bench;
mod latency;
mod micro;
mod plots;
mod policy_study;
mod progress;
mod proxy_bench;
mod read_paths;
mod redis_bench;
mod report;
mod runner;
mod ttfb;
mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use pingora_cache::MemCache;
use tier_memory::{MemoryConfig, MemoryStorage};

use report::{Row, Table};
use runner::{leak, populate, run_trace, runtime, DynStorage, Op};
use workload::{SizeClass, Workload};

/// How big a run is.
#[derive(Debug, Clone, Copy)]
struct Scale {
    n_keys: u64,
    n_ops: usize,
    raw_files: u64,
}

const FULL: Scale = Scale {
    n_keys: 100_000,
    n_ops: 2_000_000,
    raw_files: 20_000,
};
const QUICK: Scale = Scale {
    n_keys: 20_000,
    n_ops: 200_000,
    raw_files: 2_000,
};

/// Tasks per runtime worker: the issue's workloads use 2 workers and 1–2 tasks each.
const TASKS: usize = 4;

struct Args {
    quick: bool,
    /// Run only this section: `hit`, `insert`, `ratio`, `study`, `disk`, `large`, `reads`, `hybrid`, `proxy` or `raw`.
    only: Option<String>,
    /// Run only storages whose name contains this (with `--micro`: is this).
    storage: Option<String>,
    /// Print per-step costs of a hit and exit.
    micro: bool,
    /// Rounds over the keys for `--micro` (instruction counts under
    /// callgrind are the difference of two round counts).
    rounds: u64,
    /// `--micro` with a typical origin response's nine headers per entry.
    origin_headers: bool,
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        only: None,
        storage: None,
        micro: false,
        rounds: 20,
        origin_headers: false,
        out: PathBuf::from("target/bench"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--only" => args.only = Some(it.next().ok_or("--only needs a section")?),
            "--micro" => args.micro = true,
            "--origin-headers" => args.origin_headers = true,
            "--rounds" => {
                args.rounds = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .ok_or("--rounds needs a number")?
            }
            "--storage" => args.storage = Some(it.next().ok_or("--storage needs a name")?),
            "--out" => args.out = it.next().ok_or("--out needs a directory")?.into(),
            "-h" | "--help" => {
                println!("usage: tier-bench [--quick] [--only hit|latency|insert|ratio|study|ttfb|disk|large|reads|hybrid|proxy|redis|raw] [--micro [--rounds N] [--origin-headers]] [--storage NAME] [--out DIR]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok(args)
}

/// The storages compared in memory scenarios, baseline first. Each call makes
/// fresh, empty storages; the memory tier gets room for every key of the
/// scale (with its per-entry charge), so the hit-path runs are all hits.
fn memory_storages(scale: Scale, only: Option<&str>) -> Vec<(String, DynStorage)> {
    let capacity = (scale.n_keys as usize * (4096 + 2048)).max(64 << 20) * 2;
    vec![
        (
            "pingora MemCache".to_string(),
            leak(MemCache::new()) as DynStorage,
        ),
        (
            "tier-memory".to_string(),
            leak(MemoryStorage::new(
                MemoryConfig::new(capacity).max_object_bytes(16 << 20),
            )) as DynStorage,
        ),
    ]
    .into_iter()
    .filter(|(name, _)| only.is_none_or(|only| name.contains(only)))
    .collect()
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(why) => {
            eprintln!("tier-bench: {why}");
            std::process::exit(2);
        }
    };
    let scale = if args.quick { QUICK } else { FULL };
    if args.micro {
        let mut storages = memory_storages(scale, None);
        // The memory tier with no parsed headers kept: every hit builds its
        // header from the entry's buffer (what a hit on a cold entry costs).
        storages.push((
            "tier-memory, headers built on every hit".to_string(),
            leak(MemoryStorage::new(
                MemoryConfig::new(1 << 30).hot_header_percent(0),
            )) as DynStorage,
        ));
        let only = args.storage.as_deref();
        for (name, storage) in storages
            .into_iter()
            .filter(|(name, _)| only.is_none_or(|only| name == only))
        {
            micro::run(&name, storage, 10_000, args.rounds, args.origin_headers);
        }
        return;
    }
    let started = Instant::now();
    let rt = runtime();
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        eprintln!("tier-bench: cannot create {}: {e}", args.out.display());
        std::process::exit(1);
    }
    let plots = plots::Plots::new(&args.out);
    let mut report = format!(
        "# tiers benchmark ({})\n\n{} keys, {} operations per scenario, 2 runtime workers, {TASKS} client tasks unless a table says otherwise. \
         Ratios divide by the first row of each table, measured in the same run.\n\n",
        if args.quick { "quick" } else { "full" },
        scale.n_keys,
        scale.n_ops
    );

    let hot = Workload {
        n_keys: scale.n_keys,
        alpha: 1.0,
        size: SizeClass::Fixed(4096),
        seed: 1,
    };
    let run = |section: &str| args.only.as_deref().is_none_or(|only| only == section);
    // Each section says on stderr when it starts and about how long it takes.
    let mut progress = progress::Progress::new(&args.out, args.quick);
    if run("hit") {
        progress.start("hit");
    }
    let trace = Arc::new(hot.trace(scale.n_ops));
    let scenarios = [
        (
            "Hit path: lookup + full body read, Zipf 1.0, 4 KiB bodies, all cached",
            Op::Read,
        ),
        (
            "Hit path with 10% writes (replacing keys), Zipf 1.0, 4 KiB bodies",
            Op::ReadWithWrites { every: 10 },
        ),
    ];
    // 1 and 2 client tasks per runtime worker.
    let runs = scenarios
        .into_iter()
        .flat_map(|(title, op)| [(title, op, TASKS / 2), (title, op, TASKS)]);
    for (title, op, tasks) in runs.filter(|_| run("hit")) {
        let mut rows = Vec::new();
        for (name, storage) in memory_storages(scale, args.storage.as_deref()) {
            populate(&rt, storage, &hot, tasks);
            let m = run_trace(&rt, storage, &hot, trace.clone(), tasks, op);
            rows.push(Row { storage: name, m });
        }
        let title = format!("{title}, {tasks} client tasks");
        let table = Table { title, rows };
        report.push_str(&table.markdown());
        report.push('\n');
        let name = format!(
            "hit-path-{}-{tasks}-tasks.svg",
            matches!(op, Op::Read) as u8
        );
        report.push_str(&plots.bars(&name, &table.title, "ops/s", &table.ops_bars()));
    }

    if run("latency") {
        progress.start("latency");
        report.push_str(&in_scratch_dir(&args.out, "latency", |dir| {
            latency::section(&rt, dir, args.quick)
        }));
    }

    // Inserts of each size class; key counts shrink as bodies grow so every
    // class writes a similar number of bytes.
    let insert_workloads = [
        Workload {
            n_keys: scale.n_keys / 2,
            alpha: 1.0,
            size: SizeClass::Small,
            seed: 2,
        },
        Workload {
            n_keys: scale.n_keys / 100,
            alpha: 1.0,
            size: SizeClass::Medium,
            seed: 3,
        },
        Workload {
            n_keys: scale.n_keys / 2000,
            alpha: 1.0,
            size: SizeClass::Large,
            seed: 4,
        },
        Workload {
            n_keys: scale.n_keys / 500,
            alpha: 1.0,
            size: SizeClass::Mix,
            seed: 5,
        },
    ];
    if run("insert") {
        progress.start("insert");
    }
    for workload in insert_workloads.iter().filter(|_| run("insert")) {
        let mut rows = Vec::new();
        for (name, storage) in memory_storages(scale, args.storage.as_deref()) {
            let m = populate(&rt, storage, workload, TASKS);
            rows.push(Row { storage: name, m });
        }
        let title = format!(
            "Insert: {} keys, {}",
            workload.n_keys,
            workload.size.label()
        );
        report.push_str(&Table { title, rows }.markdown());
        report.push('\n');
    }
    let small = &insert_workloads[0];

    if run("ratio") {
        progress.start("ratio");
        report.push_str(&hit_ratio_section(&rt, scale, &plots));
        report.push_str(&mixed_size_section(&rt, args.quick, &plots));
    }

    if run("study") {
        progress.start("study");
        report.push_str(&policy_study_section(&rt, scale, args.quick));
    }

    if run("ttfb") {
        progress.start("ttfb");
        report.push_str(&in_scratch_dir(&args.out, "ttfb", |dir| {
            ttfb::section(&rt, dir, args.quick)
        }));
    }

    if run("disk") {
        progress.start("disk");
        report.push_str(&in_scratch_dir(&args.out, "disk-tier", |dir| {
            disk_bench::section(&rt, dir, args.quick, TASKS)
        }));
    }

    if run("large") {
        progress.start("large");
        report.push_str(&in_scratch_dir(&args.out, "disk-large", |dir| {
            disk_bench::large_section(&rt, dir, args.quick, TASKS)
        }));
    }

    if run("reads") {
        progress.start("reads");
        report.push_str(&in_scratch_dir(&args.out, "read-paths", |dir| {
            read_paths::section(&rt, dir, args.quick)
        }));
    }

    if run("hybrid") {
        progress.start("hybrid");
        report.push_str(&in_scratch_dir(&args.out, "hybrid", |dir| {
            hybrid_bench::section(&rt, dir, args.quick)
        }));
    }

    if run("proxy") {
        progress.start("proxy");
        report.push_str(&in_scratch_dir(&args.out, "proxy", |dir| {
            proxy_bench::section(&rt, dir, args.quick)
        }));
    }

    if run("redis") {
        progress.start("redis");
        report.push_str(&in_scratch_dir(&args.out, "redis", |dir| {
            redis_bench::section(&rt, dir, args.quick, TASKS, &plots)
        }));
    }

    if run("raw") {
        progress.start("raw");
        let raw_dir = args.out.join("raw-disk");
        let raw = std::fs::create_dir_all(&raw_dir)
            .and_then(|_| disk_raw::measure(&raw_dir, small, scale.raw_files));
        match raw {
            Ok(rates) => report.push_str(&disk_raw::raw_markdown_wrapper(&rates, small)),
            Err(e) => report.push_str(&format!("Raw disk rate not measured: {e}\n")),
        }
        std::fs::remove_dir_all(&raw_dir).ok();
    }

    progress.end();
    report.push_str(&format!(
        "\nTotal time: {:.1}s\n",
        started.elapsed().as_secs_f64()
    ));
    if let Err(e) = report::publish(&args.out, &report) {
        eprintln!("tier-bench: could not write the report: {e}");
        std::process::exit(1);
    }
}

/// Run a section in its own directory under `out`, removed afterwards: the
/// section's text, or none if the directory cannot be made.
fn in_scratch_dir(out: &Path, name: &str, section: impl FnOnce(&Path) -> String) -> String {
    let dir = out.join(name);
    let text = if std::fs::create_dir_all(&dir).is_ok() {
        section(&dir)
    } else {
        String::new()
    };
    std::fs::remove_dir_all(&dir).ok();
    text
}

/// Hit ratio of the memory tier against LRU and TinyUFO at 1% and 10% of the
/// data on Zipf 0.8/1.2 and a 30% one-time-key mix, and from 0.5% to 25% on
/// Zipf 1.0. The bodies are all 4 KiB, so byte hit ratio equals hit ratio.
fn hit_ratio_section(rt: &tokio::runtime::Runtime, scale: Scale, plots: &plots::Plots) -> String {
    use std::fmt::Write as _;
    let body_len = 4096;
    let n_keys = scale.n_keys;
    let n_ops = scale.n_ops / 2;
    let traces = hit_ratio_traces(n_keys, n_ops);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Hit ratio, {n_keys} keys of 4 KiB, {n_ops} requests\n\n\
         Every policy gets the same byte budget and weighs each entry with the memory tier's \
         own charge for it (body + meta + bookkeeping), so all hold the same number of entries. \
         Points are percentage points of hit ratio.\n"
    );
    let _ = writeln!(
        out,
        "| trace | capacity | tier-memory | LRU | TinyUFO | tier-memory − LRU | tier-memory − TinyUFO |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    // One entry's charge, so capacities count what the tier really holds.
    let charge = body_len + memory_tier_overhead(rt);
    // The Zipf 1.0 sweep, for the curve: tier-memory, LRU, TinyUFO.
    let mut curves: [plots::Series; 3] = [
        ("tier-memory".into(), Vec::new()),
        ("LRU".into(), Vec::new()),
        ("TinyUFO".into(), Vec::new()),
    ];
    for (t, trace) in traces.iter().enumerate() {
        // Zipf 1.0 is swept from 0.5% to 25% of the data; the others at
        // 1% and 10%. Sizes in per-mille.
        let sizes: &[usize] = if t == 1 {
            &[5, 10, 20, 50, 100, 250]
        } else {
            &[10, 100]
        };
        for &per_mille in sizes {
            let capacity = n_keys as usize * charge * per_mille / 1000;
            let (ours, _) = hit_ratio::memory_tier(rt, trace, capacity, &|_| body_len);
            let ours = ours.hit;
            let (lru, ufo) = reference_ratios(trace, capacity, &|_| charge, &|_| body_len);
            let (lru, ufo) = (lru.map(|r| r.hit), ufo.map(|r| r.hit));
            if t == 1 {
                let x = per_mille as f64 / 10.0;
                for (curve, ratio) in curves.iter_mut().zip([Some(ours), lru, ufo]) {
                    if let Some(ratio) = ratio {
                        curve.1.push((x, ratio * 100.0));
                    }
                }
            }
            let fmt = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{:.2}%", r * 100.0));
            let diff = |r: Option<f64>| {
                r.map_or("-".to_string(), |r| format!("{:+.2}", (ours - r) * 100.0))
            };
            let _ = writeln!(
                out,
                "| {} | {}% | {:.2}% | {} | {} | {} | {} |",
                trace.label,
                per_mille as f64 / 10.0,
                ours * 100.0,
                fmt(lru),
                fmt(ufo),
                diff(lru),
                diff(ufo)
            );
        }
    }
    out.push('\n');
    let curves: Vec<plots::Series> = curves.into_iter().filter(|c| !c.1.is_empty()).collect();
    out.push_str(&plots.lines(
        "hit-ratio-zipf-1.0.svg",
        "Hit ratio against cache size, Zipf 1.0, 4 KiB",
        "cache size (% of the data, log scale)",
        "hit ratio (%)",
        &curves,
    ));
    out
}

#[cfg(feature = "peers")]
fn reference_ratios(
    trace: &hit_ratio::Trace,
    capacity: usize,
    weight: hit_ratio::LenOf<'_>,
    len: hit_ratio::LenOf<'_>,
) -> (Option<hit_ratio::Ratios>, Option<hit_ratio::Ratios>) {
    (
        Some(hit_ratio::reference::lru(trace, capacity, weight, len)),
        Some(hit_ratio::reference::tinyufo(trace, capacity, weight, len)),
    )
}

#[cfg(not(feature = "peers"))]
fn reference_ratios(
    _: &hit_ratio::Trace,
    _: usize,
    _: hit_ratio::LenOf<'_>,
    _: hit_ratio::LenOf<'_>,
) -> (Option<hit_ratio::Ratios>, Option<hit_ratio::Ratios>) {
    (None, None)
}

/// What the memory tier charges an entry beyond its body, measured on one
/// 4 KiB entry with the bench's meta.
fn memory_tier_overhead(rt: &tokio::runtime::Runtime) -> usize {
    let one = hit_ratio::Trace {
        label: String::new(),
        keys: Arc::new(vec![0]),
    };
    let (_, charge) = hit_ratio::memory_tier(rt, &one, 64 << 20, &|_| 4096);
    charge.saturating_sub(4096)
}

/// The 4 KiB traces of the hit-ratio table: Zipf 0.8, 1.0 and 1.2, Zipf 1.0
/// with 30% one-time keys, and Zipf 1.0 whose popularity shifts halfway.
fn hit_ratio_traces(n_keys: u64, n_ops: usize) -> [hit_ratio::Trace; 5] {
    [
        hit_ratio::zipf_trace(n_keys, 0.8, n_ops, 11),
        hit_ratio::zipf_trace(n_keys, 1.0, n_ops, 12),
        hit_ratio::zipf_trace(n_keys, 1.2, n_ops, 13),
        hit_ratio::scan_mix_trace(n_keys, 0.3, n_ops, 14),
        hit_ratio::shift_trace(n_keys, n_ops, 15),
    ]
}

/// The 80/15/5 size mix over Zipf 1.0, and how many requests its trace has.
fn mix_workload(quick: bool) -> (Workload, usize) {
    let workload = Workload {
        n_keys: if quick { 500 } else { 2_000 },
        alpha: 1.0,
        size: SizeClass::Mix,
        seed: 17,
    };
    (workload, if quick { 10_000 } else { 60_000 })
}

/// Hit ratio and byte hit ratio on the 80/15/5 size mix, against cache size.
fn mixed_size_section(rt: &tokio::runtime::Runtime, quick: bool, plots: &plots::Plots) -> String {
    use std::fmt::Write as _;
    let (workload, n_ops) = mix_workload(quick);
    let n_keys = workload.n_keys;
    let trace = hit_ratio::Trace {
        label: "Zipf 1.0, 80/15/5 mix".into(),
        keys: Arc::new(workload.trace(n_ops)),
    };
    let len = |k: u64| workload.body_len(k);
    let overhead = memory_tier_overhead(rt);
    let weight = |k: u64| len(k) + overhead;
    let data: usize = (0..n_keys).map(weight).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Hit ratio and byte hit ratio, {} over {n_keys} keys ({} MiB), {n_ops} requests\n\n\
         80% of keys 1-16 KiB, 15% 64 KiB-1 MiB, 5% 1-10 MiB. Every policy weighs an entry as the \
         memory tier charges it (body + {overhead} B), and admits any object that fits in the \
         budget (the memory tier's per-object limit is set above the largest body). Cells are \
         hit ratio / byte hit ratio.\n\n\
         | capacity | tier-memory | LRU | TinyUFO |\n|---:|---:|---:|---:|",
        trace.label,
        data >> 20
    );
    let names = ["tier-memory", "LRU", "TinyUFO"];
    let mut curves: [plots::Series; 3] = names.map(|n| (n.into(), Vec::new()));
    let mut object_curves: [plots::Series; 3] = names.map(|n| (n.into(), Vec::new()));
    for per_mille in [5usize, 10, 20, 50, 100, 250] {
        let capacity = data * per_mille / 1000;
        let (ours, _) = hit_ratio::memory_tier(rt, &trace, capacity, &len);
        let (lru, ufo) = reference_ratios(&trace, capacity, &weight, &len);
        let fmt = |r: Option<hit_ratio::Ratios>| {
            r.map_or("-".to_string(), |r| {
                format!("{:.2}% / {:.2}%", r.hit * 100.0, r.byte_hit * 100.0)
            })
        };
        let _ = writeln!(
            out,
            "| {}% | {} | {} | {} |",
            per_mille as f64 / 10.0,
            fmt(Some(ours)),
            fmt(lru),
            fmt(ufo)
        );
        let x = per_mille as f64 / 10.0;
        for ((curve, object), r) in
            curves
                .iter_mut()
                .zip(object_curves.iter_mut())
                .zip([Some(ours), lru, ufo])
        {
            if let Some(r) = r {
                curve.1.push((x, r.byte_hit * 100.0));
                object.1.push((x, r.hit * 100.0));
            }
        }
    }
    out.push('\n');
    let object_curves: Vec<plots::Series> = object_curves
        .into_iter()
        .filter(|c| !c.1.is_empty())
        .collect();
    out.push_str(&plots.lines(
        "hit-ratio-mix.svg",
        "Hit ratio against cache size, 80/15/5 size mix",
        "cache size (% of the data, log scale)",
        "hit ratio (%)",
        &object_curves,
    ));
    let curves: Vec<plots::Series> = curves.into_iter().filter(|c| !c.1.is_empty()).collect();
    out.push_str(&plots.lines(
        "byte-hit-ratio-mix.svg",
        "Byte hit ratio against cache size, 80/15/5 size mix",
        "cache size (% of the data, log scale)",
        "byte hit ratio (%)",
        &curves,
    ));
    out
}

/// The eviction-policy study: each variant of [`policy_study::VARIANTS`] on
/// the 80/15/5 mix (byte hit ratio and hit ratio) and on the 4 KiB traces
/// (hit ratio), beside LRU and TinyUFO with the same budgets and weights.
fn policy_study_section(rt: &tokio::runtime::Runtime, scale: Scale, quick: bool) -> String {
    use std::fmt::Write as _;
    let (mix, n_ops) = mix_workload(quick);
    let len = |k: u64| mix.body_len(k);
    let overhead = memory_tier_overhead(rt);
    let weight = |k: u64| len(k) + overhead;
    let data: usize = (0..mix.n_keys).map(weight).sum();
    let trace = hit_ratio::Trace {
        label: "mix".into(),
        keys: Arc::new(mix.trace(n_ops)),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Eviction policy study: simulated variants, 80/15/5 mix ({} keys, {} requests)\n\n\
         Single-threaded simulations of each policy alone, keys and weights only; each entry \
         weighs its body plus the memory tier's charge beyond it ({overhead} B), as in the \
         hit-ratio tables. Cells are byte hit ratio / hit ratio.\n",
        mix.n_keys, n_ops
    );
    let sizes = [5usize, 10, 20, 50, 100, 250];
    let _ = write!(out, "| policy |");
    for s in sizes {
        let _ = write!(out, " {}% |", s as f64 / 10.0);
    }
    let _ = writeln!(out, "\n|---|{}", "---:|".repeat(sizes.len()));
    let cell = |r: hit_ratio::Ratios| format!("{:.2}% / {:.2}%", r.byte_hit * 100.0, r.hit * 100.0);
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for v in policy_study::VARIANTS {
        let cells = sizes
            .iter()
            .map(|&pm| {
                cell(policy_study::run(
                    v,
                    &trace,
                    data * pm / 1000,
                    &weight,
                    &len,
                ))
            })
            .collect();
        rows.push((v.label.to_string(), cells));
    }
    let mut lru_cells = Vec::new();
    let mut ufo_cells = Vec::new();
    for &pm in &sizes {
        let (lru, ufo) = reference_ratios(&trace, data * pm / 1000, &weight, &len);
        lru_cells.push(lru.map_or("-".into(), cell));
        ufo_cells.push(ufo.map_or("-".into(), cell));
    }
    rows.push(("LRU".into(), lru_cells));
    rows.push(("TinyUFO".into(), ufo_cells));
    for (label, cells) in rows {
        let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
    }
    // The 4 KiB traces, hit ratio at 1% and 10%.
    let n_keys = scale.n_keys;
    let n_ops = scale.n_ops / 2;
    let body = 4096 + overhead;
    let traces = hit_ratio_traces(n_keys, n_ops);
    let n_keys = n_keys as usize;
    let _ = writeln!(
        out,
        "\nThe same variants on the 4 KiB traces of the hit-ratio table ({n_keys} keys, {n_ops} requests): hit ratio at 1% / 10% of the data.\n"
    );
    let _ = write!(out, "| policy |");
    for t in &traces {
        let _ = write!(out, " {} |", t.label);
    }
    let _ = writeln!(out, "\n|---|{}", "---:|".repeat(traces.len()));
    let four_k = |_: u64| body;
    for v in policy_study::VARIANTS {
        let _ = write!(out, "| {} |", v.label);
        for t in &traces {
            let at = |pm: usize| {
                policy_study::run(v, t, n_keys * body * pm / 1000, &four_k, &four_k).hit
            };
            let _ = write!(out, " {:.2}% / {:.2}% |", at(10) * 100.0, at(100) * 100.0);
        }
        let _ = writeln!(out);
    }
    for (i, name) in ["LRU", "TinyUFO"].iter().enumerate() {
        let _ = write!(out, "| {name} |");
        for t in &traces {
            let at = |pm: usize| {
                let (lru, ufo) = reference_ratios(t, n_keys * body * pm / 1000, &four_k, &four_k);
                [lru, ufo][i].map_or(f64::NAN, |r| r.hit)
            };
            let _ = write!(out, " {:.2}% / {:.2}% |", at(10) * 100.0, at(100) * 100.0);
        }
        let _ = writeln!(out);
    }
    out.push('\n');
    out
}
