//! The on-disk format, version 2: segment files of packed records.
//!
//! A segment is a preallocated file of fixed size, named
//! `seg-<id as 16 hex digits>.v2`:
//!
//! ```text
//! segment header (64 B, at 0)
//! 0   8  magic "TIERSSEG"
//! 8   4  format version (2), little-endian like every integer here
//! 12  4  block size B of the records in this segment
//! 16  8  segment id (increasing, never reused)
//! 24  8  segment size S
//! 32  28 reserved, zero
//! 60  4  checksum: low 32 bits of XXH3-64 over bytes 0..60
//!
//! records, from offset 64, packed back to back (no padding)
//!
//! summary (sealed segments): one line per record, after the last one
//! 0   8  key hash     8  4  record offset     12  3  record length
//! 15  1  kind, with bit 7 set when an aux follows
//! 16  8  aux (only if bit 7: an entry with fragments, a meta update, a purge)
//!
//! footer (sealed segments, at S - 64)
//! 0   8  magic "TIERSEND"
//! 8   8  summary offset    16  4  records    20  4  summary checksum
//! 24  8  the highest sequence number or entry id in the segment
//! 32  4  summary length in bytes
//! 36  24 reserved, zero    60  4  checksum over bytes 0..60
//! ```
//!
//! A record:
//!
//! ```text
//! 0   4  magic "TSR2"
//! 4   1  kind: 1 entry, 2 fragment, 3 meta update, 4 purge, 5 void (a
//!        record whose group commit failed: skipped)
//! 5   1  meta form: 1 the tier's meta (tier_core's `StoredMeta` buffer,
//!        in the H bytes; I is 0), 0 pingora's serialized meta (I and H;
//!        records written before form 1, still read) or none
//! 6   2  key length K
//! 8   8  sequence number (increasing over the whole log)
//! 16  8  entry id (the sequence number of the write that made the entry)
//! 24  6  body length (fragment: the body offset of its first byte)
//! 30  2  internal meta length I     32  4  response header length H
//! 36  4  extra length X             40  4  data length D
//! 44  4  an entry whose data is one block: that block's checksum; else 0
//! 48  4  checksum: low 32 bits of XXH3-64 over bytes 0..48 and the
//!        key, meta and extra bytes
//! 52  K  key: primary hash (16), variance flag (1) [+ variance hash (16)],
//!        user tag (rest)
//! ..  I  form 0: pingora's serialized internal meta
//! ..  H  form 1: the meta (`StoredMeta`); form 0: pingora's serialized
//!        (zstd-compressed) response header
//! ..  X  extra: entry, its fragments (16 B each: segment id, offset,
//!        length); meta update, the entry record's location (8), its
//!        length (4), zero (4), and the record it replaces (8); purge, the
//!        record it removes (8, 0 for whatever is there)
//! ..  D  data: body bytes in blocks of up to B bytes, each followed by the
//!        low 32 bits of XXH3-64 of the block, seeded with the entry id and
//!        the block's index in the whole body (an entry whose data is one
//!        block keeps that checksum at byte 44 instead)
//! ```
//!
//! Locations are `segment id << 32 | offset`. The header checksum covers the
//! key and meta, because pingora decodes many corrupted metas as another
//! valid meta; the block checksums let a streaming reader check each block
//! before it hands the bytes out, and their seed binds a block to its entry
//! and position so blocks of two writes can never be mixed.

use bytes::Bytes;
use pingora_cache::key::CompactCacheKey;
use pingora_cache::CacheMeta;
use tier_core::meta::StoredMeta;

pub(crate) const SEG_MAGIC: [u8; 8] = *b"TIERSSEG";
pub(crate) const FOOTER_MAGIC: [u8; 8] = *b"TIERSEND";
pub(crate) const REC_MAGIC: [u8; 4] = *b"TSR2";
pub(crate) const VERSION: u32 = 2;
pub(crate) const SEG_HEADER_LEN: u64 = 64;
pub(crate) const FOOTER_LEN: u64 = 64;
pub(crate) const FIXED_LEN: usize = 52;
pub(crate) const CRC_LEN: usize = 4;
/// A summary line's length, and the aux some lines add.
pub(crate) const SUMMARY_LINE: usize = 16;
pub(crate) const SUMMARY_AUX: usize = 8;
pub(crate) const FRAG_REF_LEN: usize = 16;

/// Limits a decoder enforces before trusting any length it reads; the
/// writer refuses, with a clear error, anything it could not read back.
pub(crate) const MAX_KEY_LEN: usize = 33 + 4096;
pub(crate) const MAX_INTERNAL_LEN: usize = u16::MAX as usize;
pub(crate) const MAX_HEADER_LEN: usize = 1 << 20;
pub(crate) const MAX_EXTRA_LEN: usize = 4 << 20;
pub(crate) const MIN_BLOCK: usize = 4 << 10;
pub(crate) const MAX_BLOCK: usize = 16 << 20;
pub(crate) const MAX_BODY_LEN: u64 = 1 << 42;
/// The longest record (its length fits a summary line's 24 bits).
pub(crate) const MAX_RECORD_LEN: u64 = (1 << 24) - 1;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An entry: key, meta, the list of its fragments, the rest of its body.
    Entry = 1,
    /// Part of a large body written ahead of its entry record.
    Fragment = 2,
    /// New meta for an entry whose body stays where it is.
    Meta = 3,
    /// The key's entry is gone.
    Purge = 4,
    /// A record whose group commit failed: skipped, never replayed.
    Void = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            1 => Some(Kind::Entry),
            2 => Some(Kind::Fragment),
            3 => Some(Kind::Meta),
            4 => Some(Kind::Purge),
            5 => Some(Kind::Void),
            _ => None,
        }
    }
}

/// Why bytes are not a usable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FormatError {
    /// Not ours (wrong magic): past the end of the records, or overwritten.
    NotOurs,
    /// Ours, but another format version: never trusted.
    OtherVersion(u32),
    /// Ours and this version, but inconsistent: corrupt.
    Corrupt(&'static str),
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::NotOurs => write!(f, "not a tiers record (bad magic)"),
            FormatError::OtherVersion(v) => {
                write!(f, "format version {v}, this build reads {VERSION}")
            }
            FormatError::Corrupt(why) => write!(f, "corrupt record: {why}"),
        }
    }
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(p);
    }
    h.digest() as u32
}

/// A location in the log: segment id and byte offset.
pub(crate) fn loc(segment: u64, offset: u64) -> u64 {
    segment << 32 | offset
}

pub(crate) fn loc_parts(loc: u64) -> (u64, u64) {
    (loc >> 32, loc & 0xffff_ffff)
}

// ---- segment header and footer ---------------------------------------------

/// The 64-byte header of segment `id`.
pub(crate) fn encode_segment_header(id: u64, size: u64, block_size: usize) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0..8].copy_from_slice(&SEG_MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(block_size as u32).to_le_bytes());
    b[16..24].copy_from_slice(&id.to_le_bytes());
    b[24..32].copy_from_slice(&size.to_le_bytes());
    let crc = crc32(&[&b[0..60]]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) id: u64,
    pub(crate) size: u64,
    pub(crate) block_size: usize,
}

pub(crate) fn decode_segment_header(b: &[u8]) -> Result<SegmentHeader, FormatError> {
    if b.len() < 64 || b[0..8] != SEG_MAGIC {
        return Err(FormatError::NotOurs);
    }
    let version = u32_at(b, 8);
    if version != VERSION {
        return Err(FormatError::OtherVersion(version));
    }
    if crc32(&[&b[0..60]]) != u32_at(b, 60) {
        return Err(FormatError::Corrupt("segment header checksum mismatch"));
    }
    let header = SegmentHeader {
        block_size: u32_at(b, 12) as usize,
        id: u64_at(b, 16),
        size: u64_at(b, 24),
    };
    if !(MIN_BLOCK..=MAX_BLOCK).contains(&header.block_size) {
        return Err(FormatError::Corrupt("block size out of range"));
    }
    if header.size < SEG_HEADER_LEN + FOOTER_LEN || header.size > u32::MAX as u64 {
        return Err(FormatError::Corrupt("segment size out of range"));
    }
    Ok(header)
}

/// One line of a segment's summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SummaryLine {
    pub(crate) hash: u64,
    /// Entry: the oldest segment holding one of its fragments (`u64::MAX`
    /// if none). Meta update and purge: the location of the record they
    /// replace or remove (0: whatever is there).
    pub(crate) aux: u64,
    pub(crate) offset: u32,
    pub(crate) len: u32,
    pub(crate) kind: Kind,
}

impl SummaryLine {
    /// The aux a line of `kind` has when it stores none.
    fn aux_when_absent(kind: Kind) -> Option<u64> {
        match kind {
            Kind::Entry => Some(u64::MAX),
            Kind::Fragment | Kind::Void => Some(0),
            Kind::Meta | Kind::Purge => None,
        }
    }

    /// The aux this line implies without storing it, if it does.
    fn implied_aux(&self) -> Option<u64> {
        Self::aux_when_absent(self.kind).filter(|&aux| aux == self.aux)
    }

    /// Bytes this line takes in a summary.
    pub(crate) fn encoded_len(&self) -> usize {
        SUMMARY_LINE
            + if self.implied_aux().is_some() {
                0
            } else {
                SUMMARY_AUX
            }
    }
}

pub(crate) fn encode_summary(lines: &[SummaryLine], out: &mut Vec<u8>) {
    for l in lines {
        out.extend_from_slice(&l.hash.to_le_bytes());
        out.extend_from_slice(&l.offset.to_le_bytes());
        let with_aux = l.implied_aux().is_none();
        let len_kind =
            (l.len & 0x00ff_ffff) | (l.kind as u32 | if with_aux { 0x80 } else { 0 }) << 24;
        out.extend_from_slice(&len_kind.to_le_bytes());
        if with_aux {
            out.extend_from_slice(&l.aux.to_le_bytes());
        }
    }
}

/// Decode `count` lines from `b`, which must hold exactly them.
pub(crate) fn decode_summary(b: &[u8], count: usize) -> Result<Vec<SummaryLine>, FormatError> {
    let mut lines = Vec::with_capacity(count.min(b.len() / SUMMARY_LINE));
    let mut at = 0;
    for _ in 0..count {
        let c = b
            .get(at..at + SUMMARY_LINE)
            .ok_or(FormatError::Corrupt("summary cut short"))?;
        let len_kind = u32_at(c, 12);
        let kind = Kind::from_u8((len_kind >> 24) as u8 & 0x7f)
            .ok_or(FormatError::Corrupt("summary kind"))?;
        let mut line = SummaryLine {
            hash: u64_at(c, 0),
            aux: 0,
            offset: u32_at(c, 8),
            len: len_kind & 0x00ff_ffff,
            kind,
        };
        at += SUMMARY_LINE;
        if len_kind >> 31 == 1 {
            let aux = b
                .get(at..at + SUMMARY_AUX)
                .ok_or(FormatError::Corrupt("summary cut short"))?;
            line.aux = u64_at(aux, 0);
            at += SUMMARY_AUX;
            if line.implied_aux().is_some() && kind != Kind::Entry {
                return Err(FormatError::Corrupt("summary aux where none belongs"));
            }
        } else {
            line.aux = SummaryLine::aux_when_absent(kind)
                .ok_or(FormatError::Corrupt("summary line without its aux"))?;
        }
        lines.push(line);
    }
    if at != b.len() {
        return Err(FormatError::Corrupt("summary length"));
    }
    Ok(lines)
}

/// A decoded footer: where the summary is and how to check it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Footer {
    pub(crate) summary_offset: u64,
    pub(crate) records: u32,
    pub(crate) summary_crc: u32,
    pub(crate) max_seq: u64,
    pub(crate) summary_len: u32,
}

pub(crate) fn summary_crc(summary: &[u8]) -> u32 {
    crc32(&[summary])
}

pub(crate) fn encode_footer(footer: Footer) -> [u8; 64] {
    let mut b = [0u8; 64];
    b[0..8].copy_from_slice(&FOOTER_MAGIC);
    b[8..16].copy_from_slice(&footer.summary_offset.to_le_bytes());
    b[16..20].copy_from_slice(&footer.records.to_le_bytes());
    b[20..24].copy_from_slice(&footer.summary_crc.to_le_bytes());
    b[24..32].copy_from_slice(&footer.max_seq.to_le_bytes());
    b[32..36].copy_from_slice(&footer.summary_len.to_le_bytes());
    let crc = crc32(&[&b[0..60]]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// `None` when there is no valid footer (the segment was not sealed).
pub(crate) fn decode_footer(b: &[u8], segment_size: u64) -> Option<Footer> {
    if b.len() < 64 || b[0..8] != FOOTER_MAGIC || crc32(&[&b[0..60]]) != u32_at(b, 60) {
        return None;
    }
    let footer = Footer {
        summary_offset: u64_at(b, 8),
        records: u32_at(b, 16),
        summary_crc: u32_at(b, 20),
        max_seq: u64_at(b, 24),
        summary_len: u32_at(b, 32),
    };
    let end = footer
        .summary_offset
        .checked_add(footer.summary_len as u64)?;
    (footer.summary_offset >= SEG_HEADER_LEN && end <= segment_size - FOOTER_LEN).then_some(footer)
}

// ---- records ----------------------------------------------------------------

/// The fixed part of a record, decoded and bound-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fixed {
    pub(crate) kind: Kind,
    pub(crate) seq: u64,
    pub(crate) entry_id: u64,
    pub(crate) body_len: u64,
    pub(crate) key_len: usize,
    /// `META_STORED` or `META_PINGORA` (byte 5).
    pub(crate) meta_form: u8,
    pub(crate) internal_len: usize,
    pub(crate) header_len: usize,
    pub(crate) extra_len: usize,
    pub(crate) data_len: u64,
    /// Bytes 44..48: the one block's checksum of an entry whose data is one
    /// block (which it is depends on the block size), else zero.
    header_block_crc: u32,
    crc: u32,
}

impl Fixed {
    /// Bytes of key, meta and extra after the fixed part.
    pub(crate) fn var_len(&self) -> usize {
        self.key_len + self.internal_len + self.header_len + self.extra_len
    }

    /// Offset of the first data block from the record's start.
    pub(crate) fn data_start(&self) -> u64 {
        (FIXED_LEN + self.var_len()) as u64
    }

    /// The record's length on disk (records are packed, no padding).
    pub(crate) fn record_len(&self, block_size: usize) -> u64 {
        let data = if inline(self.kind, self.data_len, block_size) {
            self.data_len
        } else {
            stored_len(self.data_len, block_size)
        };
        self.data_start() + data
    }
}

/// Whether a record keeps its one block's checksum in its header.
fn inline(kind: Kind, data_len: u64, block_size: usize) -> bool {
    kind == Kind::Entry && data_len > 0 && data_len <= block_size as u64
}

/// Data bytes plus their block checksums.
pub(crate) fn stored_len(data_len: u64, block_size: usize) -> u64 {
    data_len + CRC_LEN as u64 * data_len.div_ceil(block_size as u64)
}

/// Decode and bound-check the fixed part of a record.
pub(crate) fn decode_fixed(b: &[u8]) -> Result<Fixed, FormatError> {
    if b.len() < FIXED_LEN || b[0..3] != REC_MAGIC[0..3] {
        return Err(FormatError::NotOurs);
    }
    if b[3] != REC_MAGIC[3] {
        return Err(FormatError::OtherVersion(u32::from(
            b[3].wrapping_sub(b'0'),
        )));
    }
    let kind = Kind::from_u8(b[4]).ok_or(FormatError::Corrupt("unknown record kind"))?;
    let mut body = [0u8; 8];
    body[..6].copy_from_slice(&b[24..30]);
    let fixed = Fixed {
        kind,
        meta_form: b[5],
        key_len: u16::from_le_bytes([b[6], b[7]]) as usize,
        seq: u64_at(b, 8),
        entry_id: u64_at(b, 16),
        body_len: u64::from_le_bytes(body),
        internal_len: u16::from_le_bytes([b[30], b[31]]) as usize,
        header_len: u32_at(b, 32) as usize,
        extra_len: u32_at(b, 36) as usize,
        data_len: u32_at(b, 40) as u64,
        header_block_crc: u32_at(b, 44),
        crc: u32_at(b, 48),
    };
    match fixed.meta_form {
        META_PINGORA => {}
        META_STORED if fixed.internal_len == 0 => {}
        META_STORED => return Err(FormatError::Corrupt("a stored meta with pingora's fields")),
        _ => return Err(FormatError::Corrupt("unknown meta form")),
    }
    if fixed.key_len < 17 || fixed.key_len > MAX_KEY_LEN {
        return Err(FormatError::Corrupt("key length out of range"));
    }
    if fixed.internal_len > MAX_INTERNAL_LEN
        || fixed.header_len > MAX_HEADER_LEN
        || fixed.extra_len > MAX_EXTRA_LEN
    {
        return Err(FormatError::Corrupt("meta length out of range"));
    }
    if fixed.body_len > MAX_BODY_LEN {
        return Err(FormatError::Corrupt("body length out of range"));
    }
    Ok(fixed)
}

/// Byte 5 of a record: its meta is the tier's (`StoredMeta`).
pub(crate) const META_STORED: u8 = 1;
/// Byte 5 of a record: its meta is pingora's serialized form, or it has none.
pub(crate) const META_PINGORA: u8 = 0;

/// A record's key, meta and extra, checked against the header checksum.
/// The meta and extra bytes are a slice of the record as read (no copy on
/// a lookup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) fixed: Fixed,
    pub(crate) key: CompactCacheKey,
    rest: Bytes,
}

impl Head {
    /// The record's meta (an entry's or a meta update's), decoded by its
    /// form; a meta that does not decode is corrupt.
    pub(crate) fn meta(&self) -> Result<CacheMeta, FormatError> {
        let i = self.fixed.internal_len;
        let h = i + self.fixed.header_len;
        let decoded = if self.fixed.meta_form == META_STORED {
            StoredMeta::from_bytes(self.rest.slice(i..h)).to_cache_meta()
        } else {
            CacheMeta::deserialize(&self.rest[..i], &self.rest[i..h])
        };
        decoded.map_err(|_| FormatError::Corrupt("its meta does not decode"))
    }

    /// The kind's extra bytes.
    pub(crate) fn extra(&self) -> &[u8] {
        &self.rest[self.fixed.internal_len + self.fixed.header_len..]
    }
}

/// Decode the head of the record at the start of `b` (which holds at least
/// its fixed part and variable part), checking the header checksum. The
/// head copies its meta and extra out of `b`.
pub(crate) fn decode_head(b: &[u8]) -> Result<Head, FormatError> {
    let (fixed, key, rest) = decode_head_parts(b)?;
    Ok(Head {
        fixed,
        key,
        rest: Bytes::copy_from_slice(&b[rest]),
    })
}

/// As [`decode_head`], the head's meta and extra a slice of `b`.
pub(crate) fn decode_head_in(b: &Bytes) -> Result<Head, FormatError> {
    let (fixed, key, rest) = decode_head_parts(b)?;
    Ok(Head {
        fixed,
        key,
        rest: b.slice(rest),
    })
}

fn decode_head_parts(
    b: &[u8],
) -> Result<(Fixed, CompactCacheKey, std::ops::Range<usize>), FormatError> {
    let fixed = decode_fixed(b)?;
    let end = FIXED_LEN + fixed.var_len();
    let var = b
        .get(FIXED_LEN..end)
        .ok_or(FormatError::Corrupt("record shorter than its lengths say"))?;
    if crc32(&[&b[0..48], var]) != fixed.crc {
        return Err(FormatError::Corrupt("record header checksum mismatch"));
    }
    let key = decode_key(&var[..fixed.key_len])?;
    Ok((fixed, key, FIXED_LEN + fixed.key_len..end))
}

pub(crate) fn encode_key(key: &CompactCacheKey, out: &mut Vec<u8>) {
    out.extend_from_slice(&key.primary);
    match &key.variance {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(v.as_ref());
        }
        None => out.push(0),
    }
    out.extend_from_slice(key.user_tag.as_bytes());
}

/// The 64-bit hash the index and the summaries keep for `key`, without
/// hashing it again: tier-core's `entry_hash64`, a fold of pingora's primary
/// hash with the variance hash and the user tag, whose value that crate
/// keeps stable (a test pins it). A lookup computes it once.
pub(crate) fn key_hash(key: &CompactCacheKey) -> u64 {
    tier_core::key::entry_hash64(key)
}

/// Bytes `key` takes in a record.
pub(crate) fn key_len(key: &CompactCacheKey) -> usize {
    17 + key.variance.as_ref().map_or(0, |_| 16) + key.user_tag.len()
}

fn decode_key(b: &[u8]) -> Result<CompactCacheKey, FormatError> {
    let mut primary = [0u8; 16];
    primary.copy_from_slice(&b[..16]);
    let (variance, tag) = match b[16] {
        0 => (None, &b[17..]),
        1 if b.len() >= 33 => {
            let mut v = [0u8; 16];
            v.copy_from_slice(&b[17..33]);
            (Some(Box::new(v)), &b[33..])
        }
        _ => return Err(FormatError::Corrupt("bad variance flag")),
    };
    let user_tag =
        std::str::from_utf8(tag).map_err(|_| FormatError::Corrupt("user tag is not UTF-8"))?;
    Ok(CompactCacheKey {
        primary,
        variance,
        user_tag: user_tag.into(),
    })
}

/// What goes into one record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordSpec<'a> {
    pub(crate) kind: Kind,
    pub(crate) seq: u64,
    pub(crate) entry_id: u64,
    pub(crate) body_len: u64,
    pub(crate) key: &'a CompactCacheKey,
    pub(crate) meta: RecordMeta<'a>,
    pub(crate) extra: &'a [u8],
    /// Body bytes stored in this record, and the index in the whole body of
    /// their first block.
    pub(crate) data: &'a [u8],
    pub(crate) first_block: u64,
    pub(crate) block_size: usize,
}

/// The meta a record carries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RecordMeta<'a> {
    /// None: a fragment, a purge.
    None,
    /// A `StoredMeta` buffer (form 1, what this build writes).
    Stored(&'a [u8]),
    /// pingora's serialized internal meta and header (form 0): what records
    /// written before form 1 carry, written here only to test reading them.
    #[cfg(test)]
    Pingora(&'a [u8], &'a [u8]),
}

impl<'a> RecordMeta<'a> {
    fn form(&self) -> u8 {
        match self {
            RecordMeta::Stored(_) => META_STORED,
            _ => META_PINGORA,
        }
    }

    /// The I bytes and the H bytes.
    fn parts(&self) -> (&'a [u8], &'a [u8]) {
        match *self {
            RecordMeta::None => (&[], &[]),
            RecordMeta::Stored(meta) => (&[], meta),
            #[cfg(test)]
            RecordMeta::Pingora(internal, header) => (internal, header),
        }
    }
}

/// The length `spec` will have on disk.
pub(crate) fn record_len(spec: &RecordSpec<'_>) -> u64 {
    let data = spec.data.len() as u64;
    let stored = if inline(spec.kind, data, spec.block_size) {
        data
    } else {
        stored_len(data, spec.block_size)
    };
    let (internal, header) = spec.meta.parts();
    (FIXED_LEN + key_len(spec.key) + internal.len() + header.len() + spec.extra.len()) as u64
        + stored
}

/// Why a record cannot be written: it could never be read back.
pub(crate) fn check_spec(spec: &RecordSpec<'_>) -> Result<(), &'static str> {
    if key_len(spec.key) > MAX_KEY_LEN {
        return Err("the key's user tag is longer than the 4,096 bytes a record holds");
    }
    let (internal, header) = spec.meta.parts();
    if internal.len() > MAX_INTERNAL_LEN || header.len() > MAX_HEADER_LEN {
        return Err("the meta is larger than a record holds");
    }
    if spec.extra.len() > MAX_EXTRA_LEN {
        return Err("the body has more fragments than a record can list");
    }
    if spec.data.len() > u32::MAX as usize || spec.body_len > MAX_BODY_LEN {
        return Err("the body is longer than a record holds");
    }
    if record_len(spec) > MAX_RECORD_LEN {
        return Err("the meta and fragment list are larger than a record holds");
    }
    Ok(())
}

/// Encode a record onto `out`.
pub(crate) fn encode_record(spec: &RecordSpec<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    let one_block = inline(spec.kind, spec.data.len() as u64, spec.block_size);
    let mut fixed = [0u8; FIXED_LEN];
    fixed[0..4].copy_from_slice(&REC_MAGIC);
    fixed[4] = spec.kind as u8;
    fixed[5] = spec.meta.form();
    let (internal, header) = spec.meta.parts();
    fixed[6..8].copy_from_slice(&(key_len(spec.key) as u16).to_le_bytes());
    fixed[8..16].copy_from_slice(&spec.seq.to_le_bytes());
    fixed[16..24].copy_from_slice(&spec.entry_id.to_le_bytes());
    fixed[24..30].copy_from_slice(&spec.body_len.to_le_bytes()[..6]);
    fixed[30..32].copy_from_slice(&(internal.len() as u16).to_le_bytes());
    fixed[32..36].copy_from_slice(&(header.len() as u32).to_le_bytes());
    fixed[36..40].copy_from_slice(&(spec.extra.len() as u32).to_le_bytes());
    fixed[40..44].copy_from_slice(&(spec.data.len() as u32).to_le_bytes());
    if one_block {
        let c = block_crc(spec.entry_id, spec.first_block, spec.data);
        fixed[44..48].copy_from_slice(&c.to_le_bytes());
    }
    out.extend_from_slice(&fixed);
    encode_key(spec.key, out);
    out.extend_from_slice(internal);
    out.extend_from_slice(header);
    out.extend_from_slice(spec.extra);
    let crc = crc32(&[&out[start..start + 48], &out[start + FIXED_LEN..]]);
    out[start + 48..start + 52].copy_from_slice(&crc.to_le_bytes());
    if one_block {
        out.extend_from_slice(spec.data);
    } else {
        for (i, block) in spec.data.chunks(spec.block_size).enumerate() {
            out.extend_from_slice(block);
            let c = block_crc(spec.entry_id, spec.first_block + i as u64, block);
            out.extend_from_slice(&c.to_le_bytes());
        }
    }
}

/// Give the encoded record at the start of `rec` its sequence number (the
/// log writer numbers records in the order it appends them), updating the
/// header checksum.
pub(crate) fn stamp(rec: &mut [u8], seq: u64) -> Result<(), FormatError> {
    let fixed = decode_fixed(rec)?;
    rec[8..16].copy_from_slice(&seq.to_le_bytes());
    let var_end = FIXED_LEN + fixed.var_len();
    let crc = crc32(&[&rec[0..48], &rec[FIXED_LEN..var_end]]);
    rec[48..52].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Turn the encoded record at the start of `rec` into a void one.
pub(crate) fn void(rec: &mut [u8]) -> Result<(), FormatError> {
    let fixed = decode_fixed(rec)?;
    rec[4] = Kind::Void as u8;
    let var_end = FIXED_LEN + fixed.var_len();
    let crc = crc32(&[&rec[0..48], &rec[FIXED_LEN..var_end]]);
    rec[48..52].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// The checksum stored after body block `index` of entry `entry_id`.
pub(crate) fn block_crc(entry_id: u64, index: u64, data: &[u8]) -> u32 {
    // The seed binds the block to its entry and position.
    let seed = entry_id.rotate_left(32) ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    xxhash_rust::xxh3::xxh3_64_with_seed(data, seed) as u32
}

/// Check the blocks of `raw` (data with checksums, as stored) and return
/// where each block's bytes are in it; `first_block` is the index of the
/// first block in the whole body.
pub(crate) fn check_blocks(
    raw: &[u8],
    data_len: u64,
    block_size: usize,
    entry_id: u64,
    first_block: u64,
    verify: bool,
) -> Result<Vec<std::ops::Range<usize>>, String> {
    check_data(
        raw,
        data_len,
        block_size,
        entry_id,
        first_block,
        verify,
        None,
    )
}

/// As [`check_blocks`], for the data of a record whose head is `fixed`:
/// an entry of one block keeps that block's checksum in its header.
pub(crate) fn check_record_data(
    raw: &[u8],
    fixed: &Fixed,
    block_size: usize,
    first_block: u64,
    verify: bool,
) -> Result<Vec<std::ops::Range<usize>>, String> {
    let inline_crc =
        inline(fixed.kind, fixed.data_len, block_size).then_some(fixed.header_block_crc);
    check_data(
        raw,
        fixed.data_len,
        block_size,
        fixed.entry_id,
        first_block,
        verify,
        inline_crc,
    )
}

fn check_data(
    raw: &[u8],
    data_len: u64,
    block_size: usize,
    entry_id: u64,
    first_block: u64,
    verify: bool,
    inline_crc: Option<u32>,
) -> Result<Vec<std::ops::Range<usize>>, String> {
    if let Some(stored) = inline_crc {
        let len = data_len as usize;
        let Some(block) = raw.get(..len) else {
            return Err(format!("body block {first_block} is cut short"));
        };
        if verify && stored != block_crc(entry_id, first_block, block) {
            return Err(format!("body block {first_block} failed its checksum"));
        }
        return Ok(std::iter::once(0..len).collect());
    }
    let mut ranges = Vec::with_capacity(data_len.div_ceil(block_size as u64) as usize);
    let mut at = 0usize;
    let mut left = data_len as usize;
    let mut index = first_block;
    while left > 0 {
        let len = left.min(block_size);
        let Some(stored) = raw.get(at + len..at + len + CRC_LEN) else {
            return Err(format!("body block {index} is cut short"));
        };
        if verify && u32_at(stored, 0) != block_crc(entry_id, index, &raw[at..at + len]) {
            return Err(format!("body block {index} failed its checksum"));
        }
        ranges.push(at..at + len);
        at += len + CRC_LEN;
        left -= len;
        index += 1;
    }
    Ok(ranges)
}

/// A fragment reference in an entry record's extra bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FragRef {
    pub(crate) segment: u64,
    pub(crate) offset: u32,
    pub(crate) len: u32,
}

pub(crate) fn encode_frags(frags: &[FragRef]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frags.len() * FRAG_REF_LEN);
    for f in frags {
        out.extend_from_slice(&f.segment.to_le_bytes());
        out.extend_from_slice(&f.offset.to_le_bytes());
        out.extend_from_slice(&f.len.to_le_bytes());
    }
    out
}

pub(crate) fn decode_frags(extra: &[u8]) -> Result<Vec<FragRef>, FormatError> {
    if extra.len() % FRAG_REF_LEN != 0 {
        return Err(FormatError::Corrupt("fragment list length"));
    }
    Ok(extra
        .chunks_exact(FRAG_REF_LEN)
        .map(|c| FragRef {
            segment: u64_at(c, 0),
            offset: u32_at(c, 8),
            len: u32_at(c, 12),
        })
        .collect())
}

/// A meta update's extra bytes: the entry record it keeps the body of, and
/// the record it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MetaRef {
    pub(crate) body_at: u64,
    pub(crate) body_record_len: u32,
    pub(crate) replaces: u64,
}

pub(crate) fn encode_meta_ref(r: MetaRef) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&r.body_at.to_le_bytes());
    out.extend_from_slice(&r.body_record_len.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&r.replaces.to_le_bytes());
    out
}

pub(crate) fn decode_meta_ref(extra: &[u8]) -> Result<MetaRef, FormatError> {
    if extra.len() != 24 {
        return Err(FormatError::Corrupt("meta update reference length"));
    }
    Ok(MetaRef {
        body_at: u64_at(extra, 0),
        body_record_len: u32_at(extra, 8),
        replaces: u64_at(extra, 16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::key::hash_key;
    use pingora_cache::CacheKey;
    use proptest::prelude::*;

    fn key() -> CompactCacheKey {
        let mut key = CacheKey::new("k", "tag");
        key.set_variance_key(hash_key("br"));
        key.to_compact()
    }

    fn sample(data: &[u8]) -> Vec<u8> {
        let meta =
            StoredMeta::new(&tier_core::testing::meta_with_header("x-a", "1")).expect("meta");
        sample_with(data, RecordMeta::Stored(meta.as_bytes()))
    }

    fn sample_with(data: &[u8], meta: RecordMeta<'_>) -> Vec<u8> {
        let key = key();
        let mut out = Vec::new();
        encode_record(
            &RecordSpec {
                kind: Kind::Entry,
                seq: 7,
                entry_id: 42,
                body_len: data.len() as u64,
                key: &key,
                meta,
                extra: &[],
                data,
                first_block: 0,
                block_size: MIN_BLOCK,
            },
            &mut out,
        );
        out
    }

    #[test]
    fn a_record_round_trips() {
        let data = vec![9u8; 10_000];
        let bytes = sample(&data);
        let head = decode_head(&bytes).expect("decodes");
        assert_eq!(head.key, key());
        assert_eq!(head.fixed.entry_id, 42);
        assert_eq!(head.fixed.seq, 7);
        assert_eq!(head.fixed.body_len, 10_000);
        assert_eq!(head.fixed.meta_form, META_STORED);
        let meta = head.meta().expect("meta");
        assert_eq!(meta.headers().get("x-a").expect("x-a"), "1");
        assert!(head.extra().is_empty());
        // Decoded in place, the head is the same and its meta a slice of the
        // record.
        let shared = Bytes::from(bytes.clone());
        let in_place = decode_head_in(&shared).expect("decodes");
        assert_eq!(in_place, head);
        assert!(shared.as_ptr_range().contains(&in_place.rest.as_ptr()));
        assert_eq!(head.fixed.record_len(MIN_BLOCK), bytes.len() as u64);
        let start = head.fixed.data_start() as usize;
        let ranges = check_blocks(&bytes[start..], 10_000, MIN_BLOCK, 42, 0, true).expect("checks");
        let body: Vec<u8> = ranges
            .iter()
            .flat_map(|r| bytes[start..][r.clone()].to_vec())
            .collect();
        assert_eq!(body, data);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let data = vec![3u8; 100];
        let bytes = sample(&data);
        let head = decode_head(&bytes).expect("decodes");
        // Everything but the alignment padding is covered by a checksum.
        assert_eq!(head.fixed.record_len(MIN_BLOCK), bytes.len() as u64);
        let covered = bytes.len();
        for bit in 0..covered * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let ok = decode_head(&flipped).and_then(|head| {
                let start = head.fixed.data_start() as usize;
                check_record_data(&flipped[start..], &head.fixed, MIN_BLOCK, 0, true)
                    .map_err(|_| FormatError::Corrupt("block"))
                    .map(|_| ())
            });
            assert!(ok.is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    /// Records written before the tier kept its own meta form carry
    /// pingora's serialized meta (form 0): still read, to the same meta.
    #[test]
    fn a_record_with_pingoras_meta_form_still_reads() {
        let meta = tier_core::testing::meta_with_header("x-old", "yes");
        let (internal, header) = meta.serialize().expect("serialize");
        let bytes = sample_with(b"body", RecordMeta::Pingora(&internal, &header));
        let head = decode_head(&bytes).expect("decodes");
        assert_eq!(head.fixed.meta_form, META_PINGORA);
        let back = head.meta().expect("meta");
        assert_eq!(
            back.serialize().expect("ser"),
            meta.serialize().expect("ser")
        );
        // Garbage in pingora's fields is corrupt, not a panic.
        let bytes = sample_with(b"body", RecordMeta::Pingora(b"internal", b"header"));
        let head = decode_head(&bytes).expect("decodes");
        assert_eq!(
            head.meta().map(|_| ()),
            Err(FormatError::Corrupt("its meta does not decode"))
        );
    }

    #[test]
    fn an_unknown_meta_form_is_corrupt() {
        let mut bytes = sample(b"x");
        bytes[5] = 2;
        assert_eq!(
            decode_head(&bytes),
            Err(FormatError::Corrupt("unknown meta form"))
        );
        // Form 1 keeps nothing in pingora's internal field.
        let mut bytes = sample(b"x");
        bytes[30] = 1;
        assert_eq!(
            decode_head(&bytes),
            Err(FormatError::Corrupt("a stored meta with pingora's fields"))
        );
    }

    #[test]
    fn a_stamped_record_still_checks() {
        let mut bytes = sample(b"abc");
        stamp(&mut bytes, 99).expect("stamps");
        assert_eq!(decode_head(&bytes).expect("decodes").fixed.seq, 99);
    }

    #[test]
    fn other_versions_are_recognised_not_trusted() {
        let mut bytes = sample(b"x");
        bytes[3] = b'3';
        assert_eq!(decode_head(&bytes), Err(FormatError::OtherVersion(3)));
    }

    #[test]
    fn key_hashes_tell_variance_and_tag_apart() {
        let plain = CacheKey::new("k", "").to_compact();
        let tagged = CacheKey::new("k", "t").to_compact();
        let mut varied = CacheKey::new("k", "");
        varied.set_variance_key(hash_key("gzip"));
        let hashes = [
            key_hash(&plain),
            key_hash(&tagged),
            key_hash(&varied.to_compact()),
            key_hash(&key()),
        ];
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            key_hash(&plain),
            key_hash(&CacheKey::new("k", "").to_compact())
        );
    }

    #[test]
    fn block_checksum_binds_entry_and_position() {
        let data = b"block";
        assert_ne!(block_crc(1, 0, data), block_crc(2, 0, data));
        assert_ne!(block_crc(1, 0, data), block_crc(1, 1, data));
    }

    #[test]
    fn footers_and_summaries_round_trip_and_reject_damage() {
        let line = |kind, aux| SummaryLine {
            hash: 5,
            aux,
            offset: 64,
            len: 128,
            kind,
        };
        let lines = vec![
            line(Kind::Meta, 6),
            line(Kind::Entry, u64::MAX),
            line(Kind::Entry, 3),
            line(Kind::Fragment, 0),
            line(Kind::Purge, 0),
        ];
        let mut summary = Vec::new();
        encode_summary(&lines, &mut summary);
        // Lines with nothing to add take 16 bytes, the others 24.
        assert_eq!(summary.len(), 16 * 2 + 24 * 3);
        assert_eq!(
            decode_summary(&summary, lines.len()).expect("decodes"),
            lines
        );
        assert!(decode_summary(&summary, lines.len() + 1).is_err());
        assert!(decode_summary(&summary[..summary.len() - 1], lines.len()).is_err());
        let footer = Footer {
            summary_offset: 192,
            records: 5,
            summary_crc: summary_crc(&summary),
            max_seq: 9,
            summary_len: summary.len() as u32,
        };
        let mut bytes = encode_footer(footer);
        assert_eq!(decode_footer(&bytes, 1 << 20), Some(footer));
        assert_eq!(
            decode_footer(&bytes, 200),
            None,
            "a summary past the footer"
        );
        bytes[9] ^= 1;
        assert_eq!(decode_footer(&bytes, 1 << 20), None);
        let header = encode_segment_header(3, 1 << 20, MIN_BLOCK);
        assert_eq!(
            decode_segment_header(&header),
            Ok(SegmentHeader {
                id: 3,
                size: 1 << 20,
                block_size: MIN_BLOCK
            })
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_head(&bytes);
            let _ = decode_summary(&bytes, bytes.len() / 16);
            let _ = decode_footer(&bytes, 1 << 20);
            let _ = decode_segment_header(&bytes);
            let _ = decode_frags(&bytes);
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_magic_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = REC_MAGIC.to_vec();
            bytes.extend_from_slice(&tail);
            let _ = decode_head(&bytes);
        }
    }
}
