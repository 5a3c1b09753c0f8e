//! The on-disk format of one entry file (version 1).
//!
//! ```text
//! offset  size  field
//! 0       8     magic "TIERSDSK"
//! 8       4     format version (1), little-endian like every integer here
//! 12      4     block size B
//! 16      8     entry id (generation)
//! 24      8     body length L
//! 32      4     key length K
//! 36      4     internal meta length I
//! 40      4     response header length H
//! 44      4     checksum: low 32 bits of XXH3-64 over bytes 0..44 and 48..64,
//!               then the key, internal meta and header bytes
//! 48      16    reserved, zero
//! 64      K     key: primary hash (16), variance flag (1) [+ variance hash (16)],
//!               user tag (rest)
//! 64+K    I     pingora's serialized internal meta
//! ..      H     pingora's serialized response header
//! D=64+K+I+H    body blocks: each is up to B bytes of body followed by the
//!               low 32 bits of XXH3-64 of the block bytes, seeded with the
//!               entry id and the block index
//! ```
//!
//! A file is `D + L + 4 * ceil(L / B)` bytes long. The header checksum covers
//! the key and meta, because pingora decodes many corrupted metas as another
//! valid meta; the block checksums let a streaming reader check each block
//! before it hands the bytes out, and their seed binds a block to its entry
//! and position so blocks of two files can never be mixed.

use pingora_cache::key::CompactCacheKey;

pub(crate) const MAGIC: [u8; 8] = *b"TIERSDSK";
pub(crate) const VERSION: u32 = 1;
pub(crate) const FIXED_LEN: usize = 64;
pub(crate) const CRC_LEN: usize = 4;

/// Limits a decoder enforces before trusting any length it reads.
const MAX_KEY_LEN: usize = 33 + 4096;
const MAX_INTERNAL_LEN: usize = 64 << 10;
const MAX_HEADER_LEN: usize = 1 << 20;
pub(crate) const MIN_BLOCK: usize = 4 << 10;
pub(crate) const MAX_BLOCK: usize = 16 << 20;
const MAX_BODY_LEN: u64 = 1 << 42;

/// Why bytes are not a usable entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FormatError {
    /// Not a file of ours (wrong magic).
    NotOurs,
    /// Ours, but another format version: skipped, never trusted.
    OtherVersion(u32),
    /// Ours and this version, but inconsistent: corrupt.
    Corrupt(&'static str),
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::NotOurs => write!(f, "not a tiers disk entry (bad magic)"),
            FormatError::OtherVersion(v) => {
                write!(f, "format version {v}, this build reads {VERSION}")
            }
            FormatError::Corrupt(why) => write!(f, "corrupt entry: {why}"),
        }
    }
}

/// The fixed 64 bytes, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fixed {
    pub(crate) block_size: usize,
    pub(crate) entry_id: u64,
    pub(crate) body_len: u64,
    pub(crate) key_len: usize,
    pub(crate) internal_len: usize,
    pub(crate) header_len: usize,
    pub(crate) crc: u32,
}

impl Fixed {
    /// Bytes of key and meta after the fixed part.
    pub(crate) fn var_len(&self) -> usize {
        self.key_len + self.internal_len + self.header_len
    }

    /// Offset of the first body block.
    pub(crate) fn data_start(&self) -> u64 {
        (FIXED_LEN + self.var_len()) as u64
    }

    /// The length the whole file must have.
    pub(crate) fn file_len(&self) -> u64 {
        self.data_start() + stored_body_len(self.body_len, self.block_size)
    }
}

/// Body bytes plus their block checksums.
pub(crate) fn stored_body_len(body_len: u64, block_size: usize) -> u64 {
    body_len + CRC_LEN as u64 * body_len.div_ceil(block_size as u64)
}

/// A decoded header: everything but the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) fixed: Fixed,
    pub(crate) key: CompactCacheKey,
    pub(crate) internal: Vec<u8>,
    pub(crate) header: Vec<u8>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Decode and bound-check the fixed part.
pub(crate) fn decode_fixed(b: &[u8; FIXED_LEN]) -> Result<Fixed, FormatError> {
    if b[0..8] != MAGIC {
        return Err(FormatError::NotOurs);
    }
    let version = u32_at(b, 8);
    if version != VERSION {
        return Err(FormatError::OtherVersion(version));
    }
    let fixed = Fixed {
        block_size: u32_at(b, 12) as usize,
        entry_id: u64_at(b, 16),
        body_len: u64_at(b, 24),
        key_len: u32_at(b, 32) as usize,
        internal_len: u32_at(b, 36) as usize,
        header_len: u32_at(b, 40) as usize,
        crc: u32_at(b, 44),
    };
    if !(MIN_BLOCK..=MAX_BLOCK).contains(&fixed.block_size) {
        return Err(FormatError::Corrupt("block size out of range"));
    }
    if fixed.key_len < 17 || fixed.key_len > MAX_KEY_LEN {
        return Err(FormatError::Corrupt("key length out of range"));
    }
    if fixed.internal_len > MAX_INTERNAL_LEN || fixed.header_len > MAX_HEADER_LEN {
        return Err(FormatError::Corrupt("meta length out of range"));
    }
    if fixed.body_len > MAX_BODY_LEN {
        return Err(FormatError::Corrupt("body length out of range"));
    }
    if b[48..64].iter().any(|&x| x != 0) {
        return Err(FormatError::Corrupt("reserved bytes set"));
    }
    Ok(fixed)
}

fn header_crc(fixed_bytes: &[u8], var: &[u8]) -> u32 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(&fixed_bytes[0..44]);
    h.update(&fixed_bytes[48..64]);
    h.update(var);
    h.digest() as u32
}

/// Decode the key and meta that follow `fixed`, checking the header checksum.
pub(crate) fn decode_var(
    fixed_bytes: &[u8; FIXED_LEN],
    fixed: &Fixed,
    var: &[u8],
) -> Result<Header, FormatError> {
    if var.len() != fixed.var_len() {
        return Err(FormatError::Corrupt("header shorter than its lengths say"));
    }
    if header_crc(fixed_bytes, var) != fixed.crc {
        return Err(FormatError::Corrupt("header checksum mismatch"));
    }
    let (key_bytes, rest) = var.split_at(fixed.key_len);
    let (internal, header) = rest.split_at(fixed.internal_len);
    Ok(Header {
        fixed: *fixed,
        key: decode_key(key_bytes)?,
        internal: internal.to_vec(),
        header: header.to_vec(),
    })
}

fn encode_key(key: &CompactCacheKey, out: &mut Vec<u8>) {
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

/// Encode a complete header for an entry of `body_len` bytes.
pub(crate) fn encode_header(
    key: &CompactCacheKey,
    entry_id: u64,
    block_size: usize,
    body_len: u64,
    internal: &[u8],
    header: &[u8],
) -> Vec<u8> {
    let mut var = Vec::with_capacity(64 + internal.len() + header.len());
    encode_key(key, &mut var);
    let key_len = var.len();
    var.extend_from_slice(internal);
    var.extend_from_slice(header);
    let mut fixed = [0u8; FIXED_LEN];
    fixed[0..8].copy_from_slice(&MAGIC);
    fixed[8..12].copy_from_slice(&VERSION.to_le_bytes());
    fixed[12..16].copy_from_slice(&(block_size as u32).to_le_bytes());
    fixed[16..24].copy_from_slice(&entry_id.to_le_bytes());
    fixed[24..32].copy_from_slice(&body_len.to_le_bytes());
    fixed[32..36].copy_from_slice(&(key_len as u32).to_le_bytes());
    fixed[36..40].copy_from_slice(&(internal.len() as u32).to_le_bytes());
    fixed[40..44].copy_from_slice(&(header.len() as u32).to_le_bytes());
    let crc = header_crc(&fixed, &var);
    fixed[44..48].copy_from_slice(&crc.to_le_bytes());
    let mut out = Vec::with_capacity(FIXED_LEN + var.len());
    out.extend_from_slice(&fixed);
    out.extend_from_slice(&var);
    out
}

/// The checksum stored after body block `index` of entry `entry_id`.
pub(crate) fn block_crc(entry_id: u64, index: u64, data: &[u8]) -> u32 {
    // The seed binds the block to its entry and position.
    let seed = entry_id.rotate_left(32) ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    xxhash_rust::xxh3::xxh3_64_with_seed(data, seed) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::key::hash_key;
    use pingora_cache::CacheKey;
    use proptest::prelude::*;

    fn sample() -> (CompactCacheKey, Vec<u8>) {
        let mut key = CacheKey::new("k", "tag");
        key.set_variance_key(hash_key("br"));
        let key = key.to_compact();
        let bytes = encode_header(&key, 42, 64 << 10, 1000, b"internal", b"header");
        (key, bytes)
    }

    fn decode(bytes: &[u8]) -> Result<Header, FormatError> {
        let fixed_bytes: [u8; FIXED_LEN] = bytes
            .get(..FIXED_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(FormatError::Corrupt("short"))?;
        let fixed = decode_fixed(&fixed_bytes)?;
        let var = bytes
            .get(FIXED_LEN..FIXED_LEN + fixed.var_len())
            .ok_or(FormatError::Corrupt("short"))?;
        decode_var(&fixed_bytes, &fixed, var)
    }

    #[test]
    fn header_round_trips() {
        let (key, bytes) = sample();
        let header = decode(&bytes).expect("decodes");
        assert_eq!(header.key, key);
        assert_eq!(header.fixed.entry_id, 42);
        assert_eq!(header.fixed.body_len, 1000);
        assert_eq!(header.internal, b"internal");
        assert_eq!(header.header, b"header");
        assert_eq!(header.fixed.file_len(), bytes.len() as u64 + 1000 + 4);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let (_, bytes) = sample();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&flipped).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn other_versions_are_recognised_not_trusted() {
        let (_, mut bytes) = sample();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(decode(&bytes), Err(FormatError::OtherVersion(2)));
    }

    #[test]
    fn block_checksum_binds_entry_and_position() {
        let data = b"block";
        assert_ne!(block_crc(1, 0, data), block_crc(2, 0, data));
        assert_ne!(block_crc(1, 0, data), block_crc(1, 1, data));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn arbitrary_bytes_after_a_valid_magic_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&VERSION.to_le_bytes());
            bytes.extend_from_slice(&tail);
            let _ = decode(&bytes);
        }
    }
}
