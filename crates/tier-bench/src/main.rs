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

mod disk_raw;
mod report;
mod runner;
mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use pingora_cache::MemCache;

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
    out: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        out: PathBuf::from("target/bench"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => args.quick = true,
            "--out" => args.out = it.next().ok_or("--out needs a directory")?.into(),
            "-h" | "--help" => {
                println!("usage: tier-bench [--quick] [--out DIR]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok(args)
}

/// The storages compared in memory scenarios, baseline first. Each call makes
/// fresh, empty storages.
fn memory_storages() -> Vec<(String, DynStorage)> {
    vec![(
        "pingora MemCache".to_string(),
        leak(MemCache::new()) as DynStorage,
    )]
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
    let started = Instant::now();
    let rt = runtime();
    let mut report = format!(
        "# tiers benchmark ({})\n\n{} keys, {} operations per scenario, 2 runtime workers, {TASKS} client tasks. \
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
    for (title, op) in scenarios {
        let mut rows = Vec::new();
        for (name, storage) in memory_storages() {
            populate(&rt, storage, &hot, TASKS);
            let m = run_trace(&rt, storage, &hot, trace.clone(), TASKS, op);
            rows.push(Row { storage: name, m });
        }
        report.push_str(
            &Table {
                title: title.into(),
                rows,
            }
            .markdown(),
        );
        report.push('\n');
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
    ];
    for workload in &insert_workloads {
        let mut rows = Vec::new();
        for (name, storage) in memory_storages() {
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

    let raw_dir = args.out.join("raw-disk");
    let raw = std::fs::create_dir_all(&raw_dir)
        .and_then(|_| disk_raw::measure(&raw_dir, small, scale.raw_files));
    match raw {
        Ok(rates) => report.push_str(&disk_raw::raw_markdown_wrapper(&rates, small)),
        Err(e) => report.push_str(&format!("Raw disk rate not measured: {e}\n")),
    }
    std::fs::remove_dir_all(&raw_dir).ok();

    report.push_str(&format!(
        "\nTotal time: {:.1}s\n",
        started.elapsed().as_secs_f64()
    ));
    if let Err(e) = report::publish(&args.out, &report) {
        eprintln!("tier-bench: could not write the report: {e}");
        std::process::exit(1);
    }
}
