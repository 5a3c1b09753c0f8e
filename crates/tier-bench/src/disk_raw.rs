//! The machine's raw file rate: the physical limit a disk tier is compared to.
//!
//! Plain `std::fs`, one file per body, the same bodies the tiers store:
//! sequential writes without fsync, with an fsync per file, and reads back.
//! Reads come from the page cache when the files were just written; the report
//! says so rather than pretending they hit the device.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::workload::{Expected, Workload};

/// One raw-rate figure.
#[derive(Debug, Clone)]
pub struct RawRate {
    /// What was measured.
    pub label: &'static str,
    /// Files touched.
    pub files: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl RawRate {
    /// MiB per second.
    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Files per second.
    pub fn files_per_sec(&self) -> f64 {
        self.files as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Write and read back `workload`'s first `n_files` bodies under `dir`.
pub fn measure(dir: &Path, workload: &Workload, n_files: u64) -> std::io::Result<Vec<RawRate>> {
    let bodies: Vec<_> = (0..n_files).map(|i| workload.body(i)).collect();
    let total: u64 = bodies.iter().map(|b| b.len() as u64).sum();
    let mut rates = Vec::new();
    for (label, sync) in [("write, no fsync", false), ("write + fsync per file", true)] {
        let sub = tempfile::tempdir_in(dir)?;
        let started = Instant::now();
        for (i, body) in bodies.iter().enumerate() {
            let mut file = File::create(sub.path().join(i.to_string()))?;
            file.write_all(body)?;
            if sync {
                file.sync_data()?;
            }
        }
        rates.push(RawRate {
            label,
            files: n_files,
            bytes: total,
            elapsed: started.elapsed(),
        });
        if sync {
            let started = Instant::now();
            let mut buf = vec![0u8; 64 << 10];
            let mut read = 0u64;
            let mut wrong = 0u64;
            for (i, body) in bodies.iter().enumerate() {
                let mut file = File::open(sub.path().join(i.to_string()))?;
                // Every byte checked against the key's pattern, as the
                // benchmark checks every byte a tier serves.
                let expected = Expected::new(i as u64, body.len().min(64 << 10));
                let mut offset = 0usize;
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    wrong += u64::from(!expected.check(offset, &buf[..n]));
                    offset += n;
                    read += n as u64;
                }
            }
            if wrong > 0 {
                return Err(std::io::Error::other(format!("{wrong} raw reads differ")));
            }
            rates.push(RawRate {
                label: "read back (page cache warm, bytes checked)",
                files: n_files,
                bytes: read,
                elapsed: started.elapsed(),
            });
        }
        fs::remove_dir_all(sub.path()).ok();
    }
    Ok(rates)
}

/// Head bytes ahead of a record's blocks, as the disk tier's records have.
const HEAD: usize = 200;
/// Checksum block size, the disk tier's default.
const BLOCK: usize = 64 << 10;

/// Records written into one file: where each is, how long, its body's length.
pub struct Records {
    /// The file.
    pub path: std::path::PathBuf,
    /// `(offset, record length, body length)` of record `i` (key `i`).
    pub offsets: Vec<(u64, usize, usize)>,
}

/// Write `workload`'s first `n` bodies as records laid out as the disk tier
/// lays them out (a head of 200 bytes, then each 64 KiB block and its XXH3
/// checksum) into one file under `dir`, synced.
pub fn write_records(dir: &Path, workload: &Workload, n: u64) -> std::io::Result<Records> {
    let path = dir.join("records");
    let mut file = File::create(&path)?;
    let mut offsets = Vec::with_capacity(n as usize);
    let mut at = 0u64;
    for i in 0..n {
        let body = workload.body(i);
        let mut rec = vec![0u8; HEAD];
        for block in body.chunks(BLOCK) {
            rec.extend_from_slice(block);
            rec.extend_from_slice(&(xxhash_rust::xxh3::xxh3_64(block) as u32).to_le_bytes());
        }
        file.write_all(&rec)?;
        offsets.push((at, rec.len(), body.len()));
        at += rec.len() as u64;
    }
    file.sync_data()?;
    Ok(Records { path, offsets })
}

/// Check record `i` as read: every block's checksum, and its first block
/// against key `i`'s pattern.
pub fn check_record(buf: &[u8], body_len: usize, i: u64) -> std::io::Result<()> {
    let mut pos = HEAD;
    let mut left = body_len;
    let expected = Expected::new(i, body_len.min(BLOCK));
    while left > 0 {
        let take = left.min(BLOCK);
        let (Some(block), Some(crc)) = (
            buf.get(pos..pos + take),
            buf.get(pos + take..pos + take + 4),
        ) else {
            return Err(std::io::Error::other("raw record cut short"));
        };
        if u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]])
            != xxhash_rust::xxh3::xxh3_64(block) as u32
        {
            return Err(std::io::Error::other("raw record checksum"));
        }
        if pos == HEAD && !expected.check(0, block) {
            return Err(std::io::Error::other("raw record bytes"));
        }
        pos += take + 4;
        left -= take;
    }
    Ok(())
}

/// Read `n` records of `workload`'s bodies (see [`write_records`]) from one
/// already open file with `pread`, from `threads` threads, each checked with
/// [`check_record`]: the floor a disk hit is compared to.
pub fn pread_records(
    dir: &Path,
    workload: &Workload,
    n: u64,
    threads: usize,
) -> std::io::Result<RawRate> {
    use std::os::unix::fs::FileExt;
    let sub = tempfile::tempdir_in(dir)?;
    let records = write_records(sub.path(), workload, n)?;
    let file = std::sync::Arc::new(File::open(&records.path)?);
    let offsets = std::sync::Arc::new(records.offsets);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads.max(1))
        .map(|t| {
            let (file, offsets) = (file.clone(), offsets.clone());
            std::thread::spawn(move || -> std::io::Result<u64> {
                let mut bytes = 0u64;
                for (i, &(at, len, body_len)) in
                    offsets.iter().enumerate().skip(t).step_by(threads.max(1))
                {
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, at)?;
                    check_record(&buf, body_len, i as u64)?;
                    bytes += body_len as u64;
                }
                Ok(bytes)
            })
        })
        .collect();
    let mut bytes = 0;
    for h in handles {
        bytes += h
            .join()
            .map_err(|_| std::io::Error::other("raw reader panicked"))??;
    }
    Ok(RawRate {
        label: "pread of records from an open file, checked",
        files: n,
        bytes,
        elapsed: started.elapsed(),
    })
}

/// The raw rates as a markdown table, labelled with the workload's sizes.
pub fn raw_markdown_wrapper(rates: &[RawRate], workload: &Workload) -> String {
    crate::report::raw_markdown(rates, &workload.size.label())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::SizeClass;

    #[test]
    fn measures_all_three_rates_over_the_same_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = Workload {
            n_keys: 20,
            alpha: 1.0,
            size: SizeClass::Fixed(4096),
            seed: 1,
        };
        let rates = measure(dir.path(), &w, 20).expect("measure");
        assert_eq!(rates.len(), 3);
        assert!(rates.iter().all(|r| r.bytes == 20 * 4096 && r.files == 20));
        assert!(rates.iter().all(|r| r.mib_per_sec() > 0.0));
    }
}
