//! Rebuilding the index on open, and the saved eviction order.
//!
//! Open walks the two fan-out levels with a few threads, reads each file's
//! header (not its body), and keeps entries whose header checks out and whose
//! file name matches their key. Symlinks and other non-files are skipped,
//! never followed.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::SystemTime;

use tier_core::key::{entry_file_name, entry_hash64};

use crate::config::Durability;
use crate::entry_file::{read_header, ReadError};
use crate::format::FormatError;
use crate::fsio;
use crate::index::IndexEntry;

const ORDER_FILE: &str = "order.v1";
const ORDER_MAGIC: &[u8; 8] = b"TIERSORD";

/// What a scan found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub(crate) entries: Vec<(u64, IndexEntry)>,
    pub(crate) max_id: u64,
    pub(crate) corrupt: u64,
    pub(crate) skipped: u64,
}

struct Candidate {
    slot: u64,
    entry: IndexEntry,
    mtime: SystemTime,
}

fn is_fanout_name(name: &str) -> bool {
    name.len() == 2
        && name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Scan one first-level directory.
fn scan_top(top: &Path, out: &mut Vec<Candidate>, corrupt: &mut u64, skipped: &mut u64) {
    let Ok(seconds) = fs::read_dir(top) else {
        return;
    };
    for second in seconds.flatten() {
        let Ok(kind) = second.file_type() else {
            continue;
        };
        if !kind.is_dir() || !second.file_name().to_str().is_some_and(is_fanout_name) {
            continue;
        }
        let Ok(files) = fs::read_dir(second.path()) else {
            continue;
        };
        for file in files.flatten() {
            // file_type() does not follow symlinks: a link is skipped here.
            let Ok(kind) = file.file_type() else { continue };
            if !kind.is_file() {
                *skipped += 1;
                continue;
            }
            let path = file.path();
            let opened = fsio::open_read(&path).map_err(ReadError::from);
            let header = opened.and_then(|f| {
                let header = read_header(&f)?;
                let mtime = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                Ok((header, mtime))
            });
            match header {
                Ok((header, mtime)) => {
                    if file.file_name().to_str() != Some(entry_file_name(&header.key).as_str()) {
                        // A valid entry under another key's name: not to be trusted.
                        let _ = fs::remove_file(&path);
                        *corrupt += 1;
                        continue;
                    }
                    out.push(Candidate {
                        slot: entry_hash64(&header.key),
                        entry: IndexEntry {
                            key: header.key,
                            id: header.fixed.entry_id,
                            file_len: header.fixed.file_len(),
                            seq: 0,
                        },
                        mtime,
                    });
                }
                Err(ReadError::Format(FormatError::Corrupt(_))) => {
                    let _ = fs::remove_file(&path);
                    *corrupt += 1;
                }
                Err(ReadError::Format(_)) => *skipped += 1,
                Err(_) => *skipped += 1,
            }
        }
    }
}

/// Rebuild the index of `dir`. Entries are ordered for eviction by the saved
/// order where it still matches the files, the rest (older) by file time.
pub(crate) fn scan(dir: &Path) -> Found {
    let tops: Vec<_> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .filter(|e| e.file_name().to_str().is_some_and(is_fanout_name))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8);
    let per = tops.len().div_ceil(threads).max(1);
    let mut candidates = Vec::new();
    let mut corrupt = 0;
    let mut skipped = 0;
    std::thread::scope(|s| {
        let handles: Vec<_> = tops
            .chunks(per)
            .map(|chunk| {
                s.spawn(move || {
                    let (mut out, mut c, mut k) = (Vec::new(), 0, 0);
                    for top in chunk {
                        scan_top(top, &mut out, &mut c, &mut k);
                    }
                    (out, c, k)
                })
            })
            .collect();
        for handle in handles {
            if let Ok((out, c, k)) = handle.join() {
                candidates.extend(out);
                corrupt += c;
                skipped += k;
            }
        }
    });

    let saved = load_order(dir).unwrap_or_default();
    // Unknown to the saved order: coldest, oldest first. Then the saved order.
    candidates.sort_by_key(|c| match saved.get(&(c.slot, c.entry.id)) {
        Some(rank) => (1, *rank, SystemTime::UNIX_EPOCH),
        None => (0, 0, c.mtime),
    });
    let mut found = Found {
        corrupt,
        skipped,
        ..Found::default()
    };
    for (seq, mut c) in candidates.into_iter().enumerate() {
        c.entry.seq = seq as u64 + 1;
        found.max_id = found.max_id.max(c.entry.id);
        found.entries.push((c.slot, c.entry));
    }
    found
}

/// Write the eviction order (slot and id of each entry, coldest first).
pub(crate) fn save_order(
    dir: &Path,
    tmp_dir: &Path,
    order: &[(u64, u64, u64)],
    durability: Durability,
) -> io::Result<()> {
    let mut body = Vec::with_capacity(16 + order.len() * 16 + 4);
    body.extend_from_slice(ORDER_MAGIC);
    body.extend_from_slice(&(order.len() as u64).to_le_bytes());
    for (_, slot, id) in order {
        body.extend_from_slice(&slot.to_le_bytes());
        body.extend_from_slice(&id.to_le_bytes());
    }
    let crc = xxhash_rust::xxh3::xxh3_64(&body) as u32;
    body.extend_from_slice(&crc.to_le_bytes());
    let tmp = tmp_dir.join(format!("{ORDER_FILE}.{}.tmp", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = fsio::create_new(&tmp)?;
    file.write_all(&body)?;
    if durability != Durability::None {
        file.sync_data()?;
    }
    fs::rename(&tmp, dir.join(ORDER_FILE))?;
    if durability == Durability::Full {
        fsio::sync_dir(dir)?;
    }
    Ok(())
}

/// The saved order as (slot, id) -> rank, if the file is there and intact.
fn load_order(dir: &Path) -> Option<HashMap<(u64, u64), u64>> {
    let mut file = File::open(dir.join(ORDER_FILE)).ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).ok()?;
    if bytes.len() < 20 || &bytes[..8] != ORDER_MAGIC {
        return None;
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if (xxhash_rust::xxh3::xxh3_64(body) as u32).to_le_bytes() != crc {
        return None;
    }
    let count = u64::from_le_bytes(body[8..16].try_into().ok()?) as usize;
    if body.len() != 16 + count.checked_mul(16)? {
        return None;
    }
    let mut ranks = HashMap::with_capacity(count);
    for (rank, pair) in body[16..].chunks_exact(16).enumerate() {
        let slot = u64::from_le_bytes(pair[..8].try_into().ok()?);
        let id = u64::from_le_bytes(pair[8..].try_into().ok()?);
        ranks.insert((slot, id), rank as u64);
    }
    Some(ranks)
}
