//! [`StoredMeta`]: a response's meta as one buffer, rebuilt on each hit.
//!
//! A parsed `ResponseHeader` costs about 400 bytes of heap for a one-header
//! response (two `HeaderMap`s, the second keeping each name's case) on top of
//! its inline size; the same header as bytes costs its names and values. And
//! pingora's own serialized form (`CacheMeta::serialize`) compresses the
//! header with zstd, which a hit must decompress and parse again. So the memory
//! tier keeps a meta as this buffer, and the disk tier writes it into its
//! records: a hit builds the `CacheMeta` it needs from it, the header values
//! as slices of the buffer (no copy), the names parsed as pingora parses a
//! stored header; no decompression.
//!
//! Layout, little-endian, written and read only by this module. It is stored
//! on disk, so a change to it takes a new form code (the first byte); a
//! reader refuses a form it does not know.
//!
//! ```text
//! u8   form: 0 plain internal fields, 1 pingora's serialized internal fields
//! u16  status
//! u8   HTTP version (0 = 0.9, 1 = 1.0, 2 = 1.1, 3 = 2, 4 = 3)
//! u16  reason phrase length (0: the status's canonical phrase)
//! u16  number of headers
//! u32  what a parsed copy of the header is charged (`header_charge`)
//! form 0: u64 u32 fresh_until, u64 u32 created (seconds, nanoseconds since
//!         the epoch), u32 stale-while-revalidate, u32 stale-if-error,
//!         u8 flags (1: variance follows, 2: epoch override follows),
//!         [16 bytes variance], [u64 u32 epoch override]
//! form 1: u32 length, then pingora's serialized internal fields
//! the reason phrase
//! per header, in order: u16 name length, the name as sent (its case kept),
//!                       u32 value length, the value
//! ```

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Version};
use pingora_cache::key::HashBinary;
use pingora_cache::CacheMeta;
use pingora_error::{Error, ErrorType, OrErr, Result};
use pingora_http::{HeaderNameVariant, ResponseHeader};

const FORM_PLAIN: u8 = 0;
const FORM_SERIALIZED: u8 = 1;
const HAS_VARIANCE: u8 = 1;
const HAS_EPOCH: u8 = 2;
/// Where the parsed header's charge sits in the buffer.
const PARSED_CHARGE_AT: usize = 8;

/// The serialized header of an empty 200 response: the stand-in header that
/// lets a serialized internal form be decoded without a real header.
static STAND_IN_HEADER: LazyLock<Option<Vec<u8>>> = LazyLock::new(|| {
    let now = SystemTime::now();
    let header = ResponseHeader::build(200, Some(0)).ok()?;
    CacheMeta::new(now, now, 0, 0, header)
        .serialize()
        .ok()
        .map(|(_, header)| header)
});

/// A meta as the tiers keep it: one buffer (see the module docs).
///
/// ```
/// use tier_core::meta::StoredMeta;
///
/// let meta = tier_core::testing::meta_with_header("content-type", "text/plain");
/// let stored = StoredMeta::new(&meta)?;
/// // What a tier would write, and read back later.
/// let bytes = stored.as_bytes().clone();
/// let back = StoredMeta::from_bytes(bytes).to_cache_meta()?;
/// assert_eq!(back.headers().get("content-type").unwrap(), "text/plain");
/// assert_eq!(back.fresh_until(), meta.fresh_until());
/// # Ok::<(), Box<pingora_error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct StoredMeta {
    buf: Bytes,
}

/// The internal fields `CacheMeta::new` and its public setters rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plain {
    fresh_until: SystemTime,
    created: SystemTime,
    stale_while_revalidate_sec: u32,
    stale_if_error_sec: u32,
    variance: Option<HashBinary>,
    epoch_override: Option<SystemTime>,
}

impl Plain {
    fn of(meta: &CacheMeta) -> Self {
        Plain {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            stale_while_revalidate_sec: meta.stale_while_revalidate_sec(),
            stale_if_error_sec: meta.stale_if_error_sec(),
            variance: meta.variance(),
            epoch_override: meta.epoch_override(),
        }
    }

    fn rebuild(&self, header: ResponseHeader) -> CacheMeta {
        let mut meta = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.stale_while_revalidate_sec,
            self.stale_if_error_sec,
            header,
        );
        if let Some(variance) = self.variance {
            meta.set_variance(variance);
        }
        if let Some(epoch) = self.epoch_override {
            meta.set_epoch_override(epoch);
        }
        meta
    }
}

impl StoredMeta {
    /// Encode `meta`. Fails on what the buffer cannot hold (a header name
    /// or value over its length fields, a time before 1970).
    pub fn new(meta: &CacheMeta) -> Result<Self> {
        let (internal, _) = meta.serialize()?;
        let plain = Plain::of(meta);
        // Keep the plain form only when it rebuilds the very same bytes, so no
        // field pingora adds later (and no `updated` after a revalidation) can
        // be lost silently.
        let rebuilt = plain
            .rebuild(ResponseHeader::build(200, Some(0))?)
            .serialize()
            .ok();
        let plain = match rebuilt {
            Some((bytes, _)) if bytes == internal => Some(plain),
            _ => None,
        };
        let header = meta.response_header();
        let reason = header
            .get_reason_phrase()
            .filter(|r| Some(*r) != header.status.canonical_reason())
            .unwrap_or("");
        let mut out = Writer(Vec::with_capacity(64 + header.headers.len() * 40));
        out.u8(if plain.is_some() {
            FORM_PLAIN
        } else {
            FORM_SERIALIZED
        });
        out.u16(header.status.as_u16());
        out.u8(version_code(header.version));
        out.len16(reason.len())?;
        out.len16(header.headers.len())?;
        out.len32(header_charge(header))?;
        match plain {
            Some(plain) => {
                out.time(plain.fresh_until)?;
                out.time(plain.created)?;
                out.u32(plain.stale_while_revalidate_sec);
                out.u32(plain.stale_if_error_sec);
                let flags = if plain.variance.is_some() {
                    HAS_VARIANCE
                } else {
                    0
                } | if plain.epoch_override.is_some() {
                    HAS_EPOCH
                } else {
                    0
                };
                out.u8(flags);
                if let Some(variance) = plain.variance {
                    out.bytes(&variance);
                }
                if let Some(epoch) = plain.epoch_override {
                    out.time(epoch)?;
                }
            }
            None => {
                out.len32(internal.len())?;
                out.bytes(&internal);
            }
        }
        out.bytes(reason.as_bytes());
        let mut n = 0;
        header.map(|name, value| {
            let name = match name {
                HeaderNameVariant::Case(case) => case.as_slice(),
                HeaderNameVariant::Titled(titled) => titled.as_bytes(),
            };
            out.len16(name.len())?;
            out.bytes(name);
            out.len32(value.len())?;
            out.bytes(value.as_bytes());
            n += 1;
            Ok(())
        })?;
        if n != header.headers.len() {
            return Err(malformed("the header's names and values disagree"));
        }
        let mut buf = out.0;
        buf.shrink_to_fit();
        Ok(StoredMeta {
            buf: Bytes::from(buf),
        })
    }

    /// A buffer [`StoredMeta::as_bytes`] gave, read back from storage. It is
    /// checked when it is decoded: a cut or garbled buffer makes
    /// [`StoredMeta::to_cache_meta`] fail, never panic.
    pub fn from_bytes(buf: Bytes) -> Self {
        StoredMeta { buf }
    }

    /// The encoded buffer, to store.
    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    /// A `CacheMeta` equal to the stored one. The header's values are slices
    /// of the stored buffer, its names keep the case they were stored with.
    pub fn to_cache_meta(&self) -> Result<CacheMeta> {
        self.build(None)
    }

    /// The same with `header`, a parsed copy of this meta's header kept for a
    /// hot entry, instead of building one from the buffer.
    pub fn to_cache_meta_with(&self, header: ResponseHeader) -> Result<CacheMeta> {
        self.build(Some(header))
    }

    fn build(&self, parsed: Option<ResponseHeader>) -> Result<CacheMeta> {
        let mut r = Reader {
            buf: &self.buf,
            at: 0,
        };
        let form = r.u8()?;
        let status = r.u16()?;
        let version = version_of(r.u8()?)?;
        let reason_len = r.u16()? as usize;
        let n_headers = r.u16()? as usize;
        let _parsed_charge = r.u32()?;
        let internal = match form {
            FORM_PLAIN => {
                let fresh_until = r.time()?;
                let created = r.time()?;
                let stale_while_revalidate_sec = r.u32()?;
                let stale_if_error_sec = r.u32()?;
                let flags = r.u8()?;
                let variance = if flags & HAS_VARIANCE != 0 {
                    Some(r.array::<16>()?)
                } else {
                    None
                };
                let epoch_override = if flags & HAS_EPOCH != 0 {
                    Some(r.time()?)
                } else {
                    None
                };
                Ok(Plain {
                    fresh_until,
                    created,
                    stale_while_revalidate_sec,
                    stale_if_error_sec,
                    variance,
                    epoch_override,
                })
            }
            FORM_SERIALIZED => {
                let len = r.u32()? as usize;
                Err(r.take(len)?)
            }
            _ => return Err(malformed("unknown form")),
        };
        let header = match parsed {
            Some(header) => header,
            None => {
                let reason = r.take(reason_len)?;
                let mut header = ResponseHeader::build(status, Some(n_headers))?;
                header.set_version(version);
                if !reason.is_empty() {
                    let reason =
                        std::str::from_utf8(reason).or_err(ErrorType::InternalError, "reason")?;
                    header.set_reason_phrase(Some(reason))?;
                }
                for _ in 0..n_headers {
                    let name_len = r.u16()? as usize;
                    let name = r.slice(&self.buf, name_len)?;
                    let value_len = r.u32()? as usize;
                    let value = r.slice(&self.buf, value_len)?;
                    let value = HeaderValue::from_maybe_shared(value)
                        .or_err(ErrorType::InternalError, "stored header value")?;
                    header.append_header(name, value)?;
                }
                header
            }
        };
        Ok(match internal {
            Ok(plain) => plain.rebuild(header),
            Err(serialized) => {
                let stand_in = STAND_IN_HEADER.as_deref().unwrap_or_default();
                let mut meta = CacheMeta::deserialize(serialized, stand_in)?;
                *meta.response_header_mut() = header;
                meta
            }
        })
    }

    /// What a parsed copy of this meta's header is charged, read from the
    /// buffer (computed once, when the meta was stored).
    pub fn parsed_header_charge(&self) -> usize {
        self.buf
            .get(PARSED_CHARGE_AT..PARSED_CHARGE_AT + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(usize::MAX, |b| u32::from_le_bytes(b) as usize)
    }

    /// Bytes this meta holds (its buffer; the allocation's rounding is in
    /// the entry's fixed charge).
    pub fn charge(&self) -> usize {
        self.buf.len()
    }

    #[cfg(test)]
    fn is_plain(&self) -> bool {
        self.buf.first() == Some(&FORM_PLAIN)
    }
}

/// An upper bound on a parsed header's heap and inline size, what a hot
/// entry's parsed copy is charged. The bench's counting allocator measured a
/// clone at 232 + 232 bytes for one line and 232 + 2,144 for a typical
/// origin's nine; this charges 728 and 2,579 for them.
fn header_charge(header: &ResponseHeader) -> usize {
    // The ResponseHeader struct itself and its maps' tables, then each
    // header: name and value bytes plus both maps' per-entry bookkeeping
    // (a bucket in each, the spare capacity they grow by, the index slots).
    let per_header: usize = header
        .headers
        .iter()
        .map(|(name, value)| 2 * name.as_str().len() + value.len() + 192)
        .sum();
    std::mem::size_of::<ResponseHeader>() + 256 + per_header
}

fn malformed(what: &str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, format!("stored meta: {what}"))
}

fn version_code(version: Version) -> u8 {
    match version {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => 2,
    }
}

fn version_of(code: u8) -> Result<Version> {
    Ok(match code {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_11,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => return Err(malformed("unknown HTTP version")),
    })
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    fn len16(&mut self, len: usize) -> Result<()> {
        let len = u16::try_from(len).map_err(|_| malformed("a header part over 64 KiB"))?;
        self.u16(len);
        Ok(())
    }
    fn len32(&mut self, len: usize) -> Result<()> {
        let len = u32::try_from(len).map_err(|_| malformed("a part over 4 GiB"))?;
        self.u32(len);
        Ok(())
    }
    fn time(&mut self, t: SystemTime) -> Result<()> {
        let since = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| malformed("a time before 1970"))?;
        self.0.extend_from_slice(&since.as_secs().to_le_bytes());
        self.u32(since.subsec_nanos());
        Ok(())
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| malformed("cut short"))?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }
    /// The next `n` bytes as a slice of `whole` (the same buffer, shared).
    fn slice(&mut self, whole: &Bytes, n: usize) -> Result<Bytes> {
        let start = self.at;
        self.take(n)?;
        Ok(whole.slice(start..start + n))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn time(&mut self) -> Result<SystemTime> {
        let secs = u64::from_le_bytes(self.array()?);
        let nanos = self.u32()?;
        UNIX_EPOCH
            .checked_add(Duration::new(secs, nanos))
            .ok_or_else(|| malformed("a time out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::key::hash_key;

    fn wire(header: &ResponseHeader) -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        header.header_to_h1_wire(&mut buf);
        buf.to_vec()
    }

    #[test]
    fn every_field_and_the_header_on_the_wire_come_back() {
        let mut meta = crate::testing::meta_with_header("x-a", "1");
        meta.set_variance(hash_key("v"));
        let header = meta.response_header_mut();
        header.append_header("X-Mixed-Case", "two").expect("header");
        header.append_header("x-a", "again").expect("header");
        header
            .append_header("Content-Type", "text/plain")
            .expect("header");
        let stored = StoredMeta::new(&meta).expect("stored");
        assert!(stored.is_plain());
        let back = stored.to_cache_meta().expect("meta");
        assert_eq!(back.fresh_until(), meta.fresh_until());
        assert_eq!(back.created(), meta.created());
        assert_eq!(back.updated(), meta.updated());
        assert_eq!(back.variance(), meta.variance());
        assert_eq!(back.stale_if_error_sec(), meta.stale_if_error_sec());
        assert_eq!(
            back.serialize().expect("ser"),
            meta.serialize().expect("ser")
        );
        // Same names in the same case and order, same values.
        assert_eq!(wire(back.response_header()), wire(meta.response_header()));
        let values: Vec<_> = back.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "again"]);
    }

    #[test]
    fn a_revalidated_meta_keeps_its_updated_time() {
        let mut meta = crate::testing::meta_with_header("x-b", "2");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        meta.update_freshness(SystemTime::now() + std::time::Duration::from_secs(60), 1, 2);
        assert_ne!(meta.updated(), meta.created());
        let stored = StoredMeta::new(&meta).expect("stored");
        assert!(!stored.is_plain());
        let back = stored.to_cache_meta().expect("meta");
        assert_eq!(back.updated(), meta.updated());
        assert_eq!(
            back.serialize().expect("ser"),
            meta.serialize().expect("ser")
        );
    }

    #[test]
    fn a_parsed_copy_of_the_header_gives_the_same_meta() {
        let meta = crate::testing::meta_with_header("X-Hot", "yes");
        let stored = StoredMeta::new(&meta).expect("stored");
        let built = stored.to_cache_meta().expect("meta");
        let with = stored
            .to_cache_meta_with(built.response_header().clone())
            .expect("meta");
        assert_eq!(
            with.serialize().expect("ser"),
            built.serialize().expect("ser")
        );
        assert_eq!(wire(with.response_header()), wire(meta.response_header()));
        assert!(header_charge(meta.response_header()) > stored.charge());
        assert_eq!(
            stored.parsed_header_charge(),
            header_charge(meta.response_header())
        );
    }

    #[test]
    fn status_version_and_reason_phrase_come_back() {
        let mut meta = crate::testing::meta_with_header("x-c", "3");
        let header = meta.response_header_mut();
        header.set_status(404).expect("status");
        header.set_version(Version::HTTP_10);
        header
            .set_reason_phrase(Some("Gone Fishing"))
            .expect("reason");
        let back = StoredMeta::new(&meta)
            .expect("stored")
            .to_cache_meta()
            .expect("meta");
        let header = back.response_header();
        assert_eq!(header.status.as_u16(), 404);
        assert_eq!(header.version, Version::HTTP_10);
        assert_eq!(header.get_reason_phrase(), Some("Gone Fishing"));
    }

    #[test]
    fn the_buffer_is_smaller_than_the_parsed_header() {
        let meta = crate::testing::meta_fresh_for(
            Duration::from_secs(60),
            &[("content-type", "application/octet-stream")],
        );
        let stored = StoredMeta::new(&meta).expect("stored");
        // Fixed fields, then 2 + 12 + 4 + 24 bytes of the one header.
        assert!(stored.charge() < 100, "{}", stored.charge());
    }

    #[test]
    fn a_cut_or_garbled_buffer_is_an_error_not_a_panic() {
        let meta = crate::testing::meta_with_header("x-d", "4");
        let stored = StoredMeta::new(&meta).expect("stored");
        for cut in 0..stored.buf.len() {
            let short = StoredMeta {
                buf: stored.buf.slice(..cut),
            };
            assert!(short.to_cache_meta().is_err(), "cut at {cut}");
        }
        let mut bad = stored.buf.to_vec();
        bad[0] = 9;
        assert!(StoredMeta { buf: bad.into() }.to_cache_meta().is_err());
    }
}
