//! Summaries and recovery: sealing a segment, reading a segment's records
//! back (from its summary, or by a checked scan), and opening a directory.
//!
//! Open reads the summary of every sealed segment (one read each) and scans
//! only segments that were not sealed: the one being written when the
//! process stopped, checking every record's header and blocks and stopping
//! at the first that fails (a torn tail). It then replays the records in
//! log order: entries point the index at themselves, meta updates move the
//! index only if it still points at the record they replace, purges remove.

use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use pingora_error::{Error, ErrorType, Result};
use tier_core::StatsCounters;

use crate::config::{DiskConfig, DIR_IN_USE};
use crate::format::{
    self, decode_footer, decode_frags, decode_head, decode_meta_ref, decode_segment_header,
    decode_summary, encode_footer, encode_summary, loc_parts, summary_crc, u64_at, Footer, Kind,
    SummaryLine, FIXED_LEN, FOOTER_LEN, SEG_HEADER_LEN,
};
use crate::fsio::{Blocking, Faults};
use crate::index::{Index, Slot};
use crate::segment::{parse_segment_name, CacheDir, Listed, Segment, LOCK_FILE};
use crate::store::{DiskCounters, Segments, Store};

/// Write `lines` as the summary of `seg` at `end`, then its footer (the
/// caller syncs).
pub(crate) fn seal(
    faults: &Faults,
    seg: &Segment,
    end: u64,
    lines: &[SummaryLine],
    max_seq: u64,
) -> io::Result<()> {
    let mut summary = Vec::with_capacity(lines.len() * format::SUMMARY_LINE);
    encode_summary(lines, &mut summary);
    if end + summary.len() as u64 > seg.size - FOOTER_LEN {
        return Err(io::Error::other("no room for the summary"));
    }
    let footer = encode_footer(Footer {
        summary_offset: end,
        records: lines.len() as u32,
        summary_crc: summary_crc(&summary),
        max_seq,
        summary_len: summary.len() as u32,
    });
    seg.write_at(faults, end, &summary)?;
    seg.write_at(faults, seg.size - FOOTER_LEN, &footer)
}

/// What a segment holds.
#[derive(Debug, Default)]
pub(crate) struct Scanned {
    pub(crate) lines: Vec<SummaryLine>,
    /// Where the records end.
    pub(crate) end: u64,
    pub(crate) max_seq: u64,
    /// A sealed segment (read from its summary).
    pub(crate) sealed: bool,
    /// Bytes after the last good record that were not a clean end.
    pub(crate) torn: bool,
}

/// The records of `seg`, from its summary if it has a good one.
pub(crate) fn read_segment(seg: &Segment, verify: bool) -> Scanned {
    if let Some(scanned) = read_summary(seg) {
        return scanned;
    }
    scan(seg, verify)
}

/// The summary lines of a live segment (for eviction).
pub(crate) fn lines_of(store: &Store, seg: &Segment) -> Vec<SummaryLine> {
    read_segment(seg, store.verify()).lines
}

fn read_summary(seg: &Segment) -> Option<Scanned> {
    let footer_bytes = seg.read(seg.size - FOOTER_LEN, FOOTER_LEN as usize).ok()?;
    let footer = decode_footer(&footer_bytes, seg.size)?;
    let bytes = seg
        .read(footer.summary_offset, footer.summary_len as usize)
        .ok()?;
    if summary_crc(&bytes) != footer.summary_crc {
        return None;
    }
    let lines = decode_summary(&bytes, footer.records as usize).ok()?;
    // A line that points outside the records is not trusted.
    if lines.iter().any(|l| {
        (l.offset as u64) < SEG_HEADER_LEN || l.offset as u64 + l.len as u64 > footer.summary_offset
    }) {
        return None;
    }
    Some(Scanned {
        lines,
        end: footer.summary_offset,
        max_seq: footer.max_seq,
        sealed: true,
        torn: false,
    })
}

/// Read every record of `seg` from the start, checking each, up to the
/// first that is not whole and good.
fn scan(seg: &Segment, verify: bool) -> Scanned {
    let mut out = Scanned {
        end: SEG_HEADER_LEN,
        ..Scanned::default()
    };
    let limit = seg.size - FOOTER_LEN;
    let mut at = SEG_HEADER_LEN;
    while at + FIXED_LEN as u64 <= limit {
        let Ok(fixed_bytes) = seg.read(at, FIXED_LEN) else {
            out.torn = true;
            break;
        };
        let fixed = match format::decode_fixed(&fixed_bytes) {
            Ok(f) => f,
            Err(format::FormatError::NotOurs) => {
                out.torn = fixed_bytes.iter().any(|&b| b != 0);
                break;
            }
            Err(_) => {
                out.torn = true;
                break;
            }
        };
        let len = fixed.record_len(seg.block_size);
        if at + len > limit {
            out.torn = true;
            break;
        }
        if fixed.kind == Kind::Void {
            at += len;
            continue;
        }
        let Some(line) = seg
            .read(at, len as usize)
            .ok()
            .and_then(|rec| check_record(&rec, seg.block_size, verify))
        else {
            out.torn = true;
            break;
        };
        out.max_seq = out.max_seq.max(line.1);
        out.lines.push(SummaryLine {
            offset: at as u32,
            len: len as u32,
            ..line.0
        });
        at += len;
    }
    out.end = at;
    out
}

/// Check a whole record; its summary line (offset and length unset) and
/// the highest sequence number it carries.
fn check_record(rec: &[u8], block_size: usize, verify: bool) -> Option<(SummaryLine, u64)> {
    let head = decode_head(rec).ok()?;
    let fixed = &head.fixed;
    // The record's data starts where its fragments end (an entry) or where
    // it says (a fragment); the other kinds carry none.
    let first_block = match fixed.kind {
        Kind::Fragment => fixed.body_len,
        _ => fixed.body_len.saturating_sub(fixed.data_len),
    } / block_size as u64;
    let data = rec.get(fixed.data_start() as usize..fixed.record_len(block_size) as usize)?;
    format::check_record_data(data, fixed, block_size, first_block, verify).ok()?;
    let aux = match fixed.kind {
        Kind::Entry => decode_frags(head.extra())
            .ok()?
            .iter()
            .map(|f| f.segment)
            .min()
            .unwrap_or(u64::MAX),
        Kind::Meta => decode_meta_ref(head.extra()).ok()?.replaces,
        Kind::Purge if head.extra().len() == 8 => u64_at(head.extra(), 0),
        Kind::Purge | Kind::Void => return None,
        Kind::Fragment => 0,
    };
    Some((
        SummaryLine {
            hash: crate::format::key_hash(&head.key),
            aux,
            offset: 0,
            len: 0,
            kind: fixed.kind,
        },
        fixed.seq.max(fixed.entry_id),
    ))
}

/// What open found, for its log line and the tier's accessors.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Report {
    pub(crate) segments: usize,
    pub(crate) scanned: usize,
    pub(crate) torn: usize,
    pub(crate) corrupt: u64,
    pub(crate) skipped: u64,
    pub(crate) evicted_segments: usize,
    pub(crate) v1_cleared: bool,
}

/// How long `open` waits for a directory's lock before failing with
/// `DIR_IN_USE`.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether a directory entry is part of a version-1 cache.
fn is_v1(l: &Listed) -> bool {
    (l.is_dir
        && (l.name == "tmp"
            || (l.name.len() == 2 && l.name.bytes().all(|b| b.is_ascii_hexdigit()))))
        || (l.is_file && l.name == "order.v1")
}

/// Open the directory of `config` and rebuild the index from its segments.
/// Blocking. Returns the store and the id of the next segment to create.
pub(crate) fn open(config: DiskConfig) -> Result<(Arc<Store>, u64, Report)> {
    let started = Instant::now();
    let name: Arc<str> = Arc::from(config.name.as_str());
    let path = config.dir.clone();
    let open_error = |what: &str, e: io::Error| {
        Error::because(
            ErrorType::FileOpenError,
            format!("{name}: cannot {what} cache directory {}", path.display()),
            e,
        )
    };
    let dir = CacheDir::open(&path).map_err(|e| open_error("open", e))?;
    // Before anything is read or changed: a second writer would seal and
    // evict segments the first is still appending to.
    // A tier of this process being dropped lets go of the lock when its
    // writer thread ends: give that a moment before calling it in use.
    let mut lock = dir.lock();
    let waited = Instant::now();
    while matches!(&lock, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
        && waited.elapsed() < LOCK_WAIT
    {
        std::thread::sleep(LOCK_WAIT / 50);
        lock = dir.lock();
    }
    let lock = lock.map_err(|e| {
        if e.kind() == io::ErrorKind::WouldBlock {
            Error::because(
                DIR_IN_USE,
                format!(
                    "{name}: cache directory {} is in use by another open disk tier (its `lock` file is held); one process, and one tier, per directory",
                    path.display()
                ),
                e,
            )
        } else {
            open_error("lock", e)
        }
    })?;
    let listed = dir.list().map_err(|e| open_error("read", e))?;
    let mut report = Report::default();
    let faults = Faults::new(config.fault_plan.clone());
    let verify = !faults.controls().skip_checksums;

    if listed.iter().any(is_v1) {
        tracing::warn!(tier = %name, path = %path.display(), "found a version 1 cache here: its entries are removed (version 2 stores segments)");
        for l in listed.iter().filter(|l| is_v1(l)) {
            let removed = if l.is_dir {
                dir.remove_tree(&l.name)
            } else {
                dir.remove(&l.name)
            };
            if let Err(e) = removed {
                return Err(open_error("clear the version 1 entries of", e));
            }
        }
        report.v1_cleared = true;
    }

    let mut found: Vec<(u64, String)> = Vec::new();
    for l in &listed {
        match parse_segment_name(&l.name) {
            Some(id) if l.is_file => found.push((id, l.name.clone())),
            _ if is_v1(l) => {}
            _ if l.is_file && l.name == LOCK_FILE => {}
            _ => report.skipped += 1,
        }
    }
    found.sort();
    let mut segments: Vec<Arc<Segment>> = Vec::new();
    for (id, file_name) in found {
        let opened = dir.open_file(&file_name).and_then(|file| {
            let mut head = [0u8; 64];
            file.read_exact_at(&mut head, 0)?;
            let len = file.metadata()?.len();
            Ok((file, head, len))
        });
        let usable = match opened {
            Ok((file, head, len)) => match decode_segment_header(&head) {
                Ok(h) if h.id == id && len >= h.size => Some(Segment {
                    id,
                    size: h.size,
                    block_size: h.block_size,
                    file,
                }),
                _ => None,
            },
            Err(_) => None,
        };
        match usable {
            Some(seg) => segments.push(Arc::new(seg)),
            None => {
                report.corrupt += 1;
                tracing::warn!(tier = %name, file = %file_name, "unusable segment file removed");
                let _ = dir.remove(&file_name);
            }
        }
    }

    // A smaller capacity than last time: the oldest segments go first,
    // leaving room for the one the writer will create.
    let layout = config.layout();
    let bound = config.capacity_bytes.max(2 * layout.segment_bytes);
    while !segments.is_empty()
        && segments.iter().map(|s| s.size).sum::<u64>() + layout.segment_bytes > bound
    {
        let seg = segments.remove(0);
        report.evicted_segments += 1;
        let _ = dir.remove_segment(&faults, seg.id);
    }

    let table = Segments::from_sorted(segments.clone());
    let index = Index::default();
    let mut max_seq = 0;
    for seg in &segments {
        let scanned = read_segment(seg, verify);
        if !scanned.sealed {
            report.scanned += 1;
            report.torn += scanned.torn as usize;
            // Seal it with what it holds, so it is never appended to again
            // and the next open reads its summary.
            // Its records first (they may be in the page cache only): a
            // footer on disk never lists a record that is not.
            let sealed = seg
                .sync(&faults)
                .and_then(|_| seal(&faults, seg, scanned.end, &scanned.lines, scanned.max_seq))
                .and_then(|_| seg.sync(&faults));
            if let Err(e) = sealed {
                tracing::warn!(tier = %name, segment = seg.id, error = %e, "recovered segment not sealed");
            }
        }
        max_seq = max_seq.max(scanned.max_seq);
        replay(&index, &table, seg, &scanned.lines);
    }
    report.segments = segments.len();
    let next_segment = segments.last().map_or(1, |s| s.id + 1);
    let store = Store {
        name: name.clone(),
        layout,
        dir,
        index,
        segments: RwLock::new(table),
        writing: Default::default(),
        next_seq: AtomicU64::new(max_seq + 1),
        io: Blocking::new(config.io_concurrency),
        faults,
        counters: StatsCounters::new(),
        disk: DiskCounters {
            corrupt: AtomicU64::new(report.corrupt),
            ..DiskCounters::default()
        },
        listener: RwLock::new(None),
        open_writes: std::sync::atomic::AtomicUsize::new(0),
        lock: parking_lot::Mutex::new(Some(lock)),
        config,
    };
    tracing::info!(
        tier = %name,
        path = %store.config.dir.display(),
        entries = store.index.len(),
        segments = report.segments,
        scanned = report.scanned,
        torn = report.torn,
        corrupt_removed = report.corrupt,
        skipped = report.skipped,
        evicted_segments = report.evicted_segments,
        took_ms = started.elapsed().as_millis() as u64,
        "disk tier opened"
    );
    Ok((Arc::new(store), next_segment, report))
}

/// Apply one segment's records to the index, in log order.
fn replay(index: &Index, table: &Segments, seg: &Segment, lines: &[SummaryLine]) {
    let points_at = |slot: Option<Slot>, at: u64| {
        let (s, o) = loc_parts(at);
        slot.is_some_and(|slot| slot.same_record(Slot::new(s, o, 0)))
    };
    for line in lines {
        let here = Slot::new(seg.id, line.offset as u64, line.len as u64);
        match line.kind {
            Kind::Entry => {
                // An entry whose fragments are gone is not usable: the one it
                // replaced (if still there) stays.
                if line.aux == u64::MAX || table.all_live(line.aux, seg.id) {
                    index.insert(line.hash, here);
                }
            }
            Kind::Meta => {
                if points_at(index.get(line.hash), line.aux) {
                    index.insert(line.hash, here);
                }
            }
            Kind::Purge => {
                if line.aux == 0 || points_at(index.get(line.hash), line.aux) {
                    index.remove(line.hash);
                }
            }
            Kind::Fragment | Kind::Void => {}
        }
    }
}
