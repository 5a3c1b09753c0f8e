//! Reading an entry file's header, and the file's path.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use pingora_cache::CacheMeta;

use crate::format::{decode_fixed, decode_var, FormatError, Header, FIXED_LEN};

/// Why an entry file could not be used.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The file is not there (purged, evicted or replaced meanwhile).
    Missing,
    /// An I/O error other than absence.
    Io(io::Error),
    /// The bytes are not a valid entry of this version.
    Format(FormatError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Missing => write!(f, "file not found"),
            ReadError::Io(e) => write!(f, "I/O error: {e}"),
            ReadError::Format(e) => write!(f, "{e}"),
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::NotFound {
            ReadError::Missing
        } else {
            ReadError::Io(e)
        }
    }
}

/// Read and check the header of an open entry file, and that the file is as
/// long as the header says (a truncated file is corrupt, not short).
pub(crate) fn read_header(file: &File) -> Result<Header, ReadError> {
    let mut fixed_bytes = [0u8; FIXED_LEN];
    let mut reader = file;
    if let Err(e) = reader.read_exact(&mut fixed_bytes) {
        return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Format(FormatError::Corrupt("file shorter than a header"))
        } else {
            e.into()
        });
    }
    let fixed = decode_fixed(&fixed_bytes).map_err(ReadError::Format)?;
    let mut var = vec![0u8; fixed.var_len()];
    if let Err(e) = file.read_exact_at(&mut var, FIXED_LEN as u64) {
        return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Format(FormatError::Corrupt("file shorter than its header"))
        } else {
            e.into()
        });
    }
    let header = decode_var(&fixed_bytes, &fixed, &var).map_err(ReadError::Format)?;
    let len = file.metadata()?.len();
    if len != fixed.file_len() {
        return Err(ReadError::Format(FormatError::Corrupt(
            "file length differs from its header",
        )));
    }
    Ok(header)
}

/// The meta stored in a header.
pub(crate) fn header_meta(header: &Header) -> Result<CacheMeta, ReadError> {
    CacheMeta::deserialize(&header.internal, &header.header)
        .map_err(|_| ReadError::Format(FormatError::Corrupt("meta does not decode")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{decode_fixed, Fixed};
    use proptest::prelude::*;

    fn header_with(internal: Vec<u8>, header: Vec<u8>) -> Header {
        let mut fixed_bytes = [0u8; FIXED_LEN];
        fixed_bytes[0..8].copy_from_slice(&crate::format::MAGIC);
        fixed_bytes[8..12].copy_from_slice(&crate::format::VERSION.to_le_bytes());
        fixed_bytes[12..16].copy_from_slice(&4096u32.to_le_bytes());
        fixed_bytes[32..36].copy_from_slice(&17u32.to_le_bytes());
        let fixed: Fixed = decode_fixed(&fixed_bytes).expect("a valid fixed part");
        Header {
            fixed,
            key: pingora_cache::key::CompactCacheKey::default(),
            internal,
            header,
        }
    }

    proptest! {
        /// pingora's meta decoder, fed arbitrary bytes through ours, never
        /// panics: it decodes or it is an error.
        #[test]
        fn arbitrary_meta_bytes_never_panic(
            internal in proptest::collection::vec(any::<u8>(), 0..256),
            header in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let _ = header_meta(&header_with(internal, header));
        }
    }
}
