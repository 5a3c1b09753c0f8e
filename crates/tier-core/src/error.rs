//! Errors at the `Storage` boundary.
//!
//! Every tier reports `pingora_error::Error`, because that is what `Storage`
//! returns. These helpers give the errors a stable [`ErrorType`] a caller can
//! match on and a context that names the tier, the operation and the entry's
//! hash (never the raw key, which may hold private request data).

use std::fmt::Display;

use pingora_cache::key::CompactCacheKey;
use pingora_error::{Error, ErrorType};

use crate::key::entry_file_name;

/// A body longer than the tier's per-object limit was refused.
pub const OBJECT_TOO_LARGE: ErrorType = ErrorType::Custom("TierObjectTooLarge");
/// A reader followed a body whose writer was dropped before the end.
pub const WRITE_ABORTED: ErrorType = ErrorType::Custom("TierWriteAborted");
/// A seek asked for a range the body does not have.
pub const SEEK_OUT_OF_RANGE: ErrorType = ErrorType::Custom("TierSeekOutOfRange");
/// Stored bytes failed a check (bad magic, version, length or checksum).
pub const CORRUPT_ENTRY: ErrorType = ErrorType::Custom("TierCorruptEntry");
/// The tier is temporarily unavailable (a remote store is down, a breaker is open).
pub const UNAVAILABLE: ErrorType = ErrorType::Custom("TierUnavailable");

/// An error of `etype` naming the tier, the operation and the entry hash.
pub fn tier_error(
    etype: ErrorType,
    tier: &str,
    op: &str,
    key: Option<&CompactCacheKey>,
    detail: impl Display,
) -> Box<Error> {
    let context = match key {
        Some(key) => format!("{tier} {op} {}: {detail}", entry_file_name(key)),
        None => format!("{tier} {op}: {detail}"),
    };
    Error::explain(etype, context)
}

/// As [`tier_error`], with the underlying error kept as the cause.
pub fn tier_error_because(
    etype: ErrorType,
    tier: &str,
    op: &str,
    key: Option<&CompactCacheKey>,
    detail: impl Display,
    cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Box<Error> {
    let context = match key {
        Some(key) => format!("{tier} {op} {}: {detail}", entry_file_name(key)),
        None => format!("{tier} {op}: {detail}"),
    };
    Error::because(etype, context, cause)
}

/// The error for a body that grew past `limit` bytes.
pub fn object_too_large(tier: &str, limit: usize, attempted: usize) -> Box<Error> {
    Error::explain(
        OBJECT_TOO_LARGE,
        format!("{tier}: object of at least {attempted} bytes is over the {limit}-byte per-object limit"),
    )
}

/// The error a reader gets when the writer it follows was dropped mid-body.
pub fn write_aborted(tier: &str) -> Box<Error> {
    Error::explain(
        WRITE_ABORTED,
        format!("{tier}: the writer of this body stopped before the end"),
    )
}

/// The error for a seek outside the body.
pub fn seek_out_of_range(start: usize, end: Option<usize>, len: usize) -> Box<Error> {
    Error::explain(
        SEEK_OUT_OF_RANGE,
        format!("seek to {start}..{end:?} is outside the {len}-byte body"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_cache::CacheKey;

    #[test]
    fn context_names_tier_operation_and_hash_not_raw_key() {
        let key = CacheKey::new("secret-token=abc", "").to_compact();
        let err = tier_error(CORRUPT_ENTRY, "disk", "lookup", Some(&key), "bad checksum");
        let text = err.to_string();
        assert!(text.contains("disk lookup"), "{text}");
        assert!(text.contains(&entry_file_name(&key)), "{text}");
        assert!(!text.contains("secret-token"), "{text}");
        assert_eq!(err.etype(), &CORRUPT_ENTRY);
    }

    #[test]
    fn cause_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        let err = tier_error_because(
            ErrorType::FileWriteError,
            "disk",
            "write_body",
            None,
            "appending",
            io,
        );
        assert!(err.to_string().contains("no space left"), "{err}");
    }

    #[test]
    fn too_large_names_the_limit() {
        let err = object_too_large("memory", 1024, 2048);
        assert_eq!(err.etype(), &OBJECT_TOO_LARGE);
        assert!(err.to_string().contains("1024-byte"), "{err}");
    }
}
