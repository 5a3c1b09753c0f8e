//! The report: markdown tables on stdout and under `target/bench/`.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use crate::disk_raw::RawRate;
use crate::runner::Measurement;

/// One row of a throughput table: a storage's result in one scenario.
#[derive(Debug)]
pub struct Row {
    /// The storage.
    pub storage: String,
    /// What it measured.
    pub m: Measurement,
}

/// A scenario's table: every storage on the same workload, with ratios against
/// the baseline (the first row).
#[derive(Debug)]
pub struct Table {
    /// What the scenario does.
    pub title: String,
    /// Rows; the first is the baseline the ratios divide by.
    pub rows: Vec<Row>,
}

impl Table {
    /// Each row's ops/s, for a bar chart.
    pub fn ops_bars(&self) -> Vec<(String, f64)> {
        self.rows
            .iter()
            .map(|r| (r.storage.clone(), r.m.ops_per_sec()))
            .collect()
    }

    /// Render as markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "### {}\n", self.title);
        let _ = writeln!(
            out,
            "| storage | ops/s | MiB/s | p50 µs | p99 µs | p999 µs | misses | corrupt | errors | ops/s ratio vs {} |",
            self.rows.first().map_or("-", |r| r.storage.as_str())
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let base = self.rows.first().map(|r| r.m.ops_per_sec());
        for row in &self.rows {
            let m = &row.m;
            let ratio = base.map_or(1.0, |b| m.ops_per_sec() / b.max(1e-9));
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.2}× |",
                row.storage,
                m.ops_per_sec(),
                m.mib_per_sec(),
                m.latency_us(0.50),
                m.latency_us(0.99),
                m.latency_us(0.999),
                m.misses,
                m.corrupt,
                m.errors,
                ratio
            );
        }
        out
    }
}

/// Render the raw disk rates as markdown.
pub fn raw_markdown(rates: &[RawRate], body_label: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### Raw std::fs rate of this machine ({body_label} files)\n"
    );
    let _ = writeln!(out, "| operation | files/s | MiB/s |");
    let _ = writeln!(out, "|---|---:|---:|");
    for r in rates {
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.1} |",
            r.label,
            r.files_per_sec(),
            r.mib_per_sec()
        );
    }
    out
}

/// Print `report` and write it to `dir/report.md`.
pub fn publish(dir: &Path, report: &str) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("report.md"), report)?;
    println!("{report}");
    println!("report written to {}", dir.join("report.md").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn measurement(ops: u64, secs: u64) -> Measurement {
        let mut latency_ns = hdrhistogram::Histogram::new(3).expect("histogram");
        latency_ns.record(1000).expect("record");
        Measurement {
            ops,
            bytes: ops * 1024,
            misses: 0,
            corrupt: 0,
            errors: 0,
            elapsed: Duration::from_secs(secs),
            latency_ns,
        }
    }

    #[test]
    fn ratios_divide_by_the_first_row() {
        let table = Table {
            title: "t".into(),
            rows: vec![
                Row {
                    storage: "base".into(),
                    m: measurement(100, 1),
                },
                Row {
                    storage: "fast".into(),
                    m: measurement(500, 1),
                },
            ],
        };
        let md = table.markdown();
        assert!(md.contains("| base | 100 |"), "{md}");
        assert!(md.contains("5.00×"), "{md}");
        assert!(md.contains("1.00×"), "{md}");
    }
}
