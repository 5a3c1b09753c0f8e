//! Segment files and the cache directory.
//!
//! Every path is opened relative to the cache directory's own descriptor,
//! with `O_NOFOLLOW`: the tier never follows a symlink inside its
//! directory, and never creates a subdirectory. A segment file stays open
//! from its creation (or the tier's open) until it is evicted and its last
//! reader is done, so a hit does no `open` and no path lookup.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::{AtFlags, FallocateFlags, FileType, Mode, OFlags};
use rustix::io::ReadWriteFlags;

use crate::format::{encode_segment_header, SEG_HEADER_LEN};
use crate::fsio::{Event, Faults, FsOp};

/// The file name of segment `id`.
pub(crate) fn segment_name(id: u64) -> String {
    format!("seg-{id:016x}.v2")
}

/// The id in a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("seg-")?.strip_suffix(".v2")?;
    (hex.len() == 16)
        .then(|| u64::from_str_radix(hex, 16).ok())
        .flatten()
}

/// One open segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) id: u64,
    pub(crate) size: u64,
    pub(crate) block_size: usize,
    pub(crate) file: File,
}

impl Segment {
    /// Write `buf` at `offset`, through the fault seam. Blocking.
    pub(crate) fn write_at(&self, faults: &Faults, offset: u64, buf: &[u8]) -> io::Result<()> {
        faults.write(buf, |b| {
            self.file.write_all_at(b, offset)?;
            faults.record(|| Event::Write {
                segment: self.id,
                offset,
                bytes: b.to_vec(),
            });
            Ok(())
        })
    }

    /// Write `buf` at `offset` as cleanup: never failed by the fault plan.
    pub(crate) fn write_quietly(&self, faults: &Faults, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)?;
        faults.record(|| Event::Write {
            segment: self.id,
            offset,
            bytes: buf.to_vec(),
        });
        Ok(())
    }

    /// `fdatasync` the segment, through the fault seam. Blocking.
    pub(crate) fn sync(&self, faults: &Faults) -> io::Result<()> {
        faults.check(FsOp::Sync)?;
        self.file.sync_data()?;
        faults.record(|| Event::Sync { segment: self.id });
        Ok(())
    }

    /// Read `len` bytes at `offset` (fewer at the end of the file). Blocking.
    pub(crate) fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let len = len.min(self.size.saturating_sub(offset) as usize);
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Read `len` bytes at `offset` only if the page cache holds them all:
    /// `None` when the read would block (or the kernel cannot tell), so the
    /// caller goes to the blocking pool. Never blocks on the device.
    pub(crate) fn read_cached(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let len = len.min(self.size.saturating_sub(offset) as usize);
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let mut slices = [io::IoSliceMut::new(&mut buf[done..])];
            match rustix::io::preadv2(
                &self.file,
                &mut slices,
                offset + done as u64,
                ReadWriteFlags::NOWAIT,
            ) {
                Ok(0) => return None,
                Ok(n) => done += n,
                Err(_) => return None,
            }
        }
        Some(buf)
    }
}

/// The name of the file whose `flock` says a process has the directory.
pub(crate) const LOCK_FILE: &str = "lock";

/// The cache directory, held open.
#[derive(Debug)]
pub(crate) struct CacheDir {
    fd: OwnedFd,
}

/// What a directory entry is, without following it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Listed {
    pub(crate) name: String,
    pub(crate) is_dir: bool,
    pub(crate) is_file: bool,
}

impl CacheDir {
    /// Open (creating it and its parents, mode 0700, if missing) the
    /// directory at `path`, and tighten it to 0700.
    pub(crate) fn open(path: &Path) -> io::Result<CacheDir> {
        if path.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "the path is a file, not a directory",
            ));
        }
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(path)?;
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::fs::fchmod(&fd, Mode::RWXU)?;
        Ok(CacheDir { fd })
    }

    /// Take the directory's lock: the file `lock`, created 0600 if missing
    /// (never through a symlink), held with an exclusive `flock` for as long
    /// as the returned descriptor lives. Fails with `WouldBlock` at once when
    /// another process (or another open tier in this one) holds it.
    pub(crate) fn lock(&self) -> io::Result<OwnedFd> {
        let fd = self.open_regular(LOCK_FILE, OFlags::CREATE)?;
        rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive)?;
        Ok(fd)
    }

    /// The names in the directory (not following symlinks).
    pub(crate) fn list(&self) -> io::Result<Vec<Listed>> {
        list_fd(&self.fd)
    }

    /// Create segment `id`: a new file (never an existing one, never through
    /// a symlink), 0600, preallocated to `size`, with its header written.
    pub(crate) fn create_segment(
        &self,
        faults: &Faults,
        id: u64,
        size: u64,
        block_size: usize,
    ) -> io::Result<Segment> {
        faults.check(FsOp::Create)?;
        let name = segment_name(id);
        let fd = rustix::fs::openat(
            &self.fd,
            name.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )?;
        let file = File::from(fd);
        let made = (|| {
            match rustix::fs::fallocate(&file, FallocateFlags::empty(), 0, size) {
                Ok(()) => {}
                // A file system without fallocate: the size at least.
                Err(rustix::io::Errno::OPNOTSUPP) => file.set_len(size)?,
                Err(e) => return Err(io::Error::from(e)),
            }
            faults.record(|| Event::Create { segment: id, size });
            let header = encode_segment_header(id, size, block_size);
            file.write_all_at(&header, 0)?;
            faults.record(|| Event::Write {
                segment: id,
                offset: 0,
                bytes: header.to_vec(),
            });
            Ok(())
        })();
        if let Err(e) = made {
            let _ = self.remove(&name);
            faults.record(|| Event::Remove { segment: id });
            return Err(e);
        }
        Ok(Segment {
            id,
            size,
            block_size,
            file,
        })
    }

    /// Open an existing file for reading and writing: never through a
    /// symlink, and only if it is a regular file (a FIFO does not hang it).
    pub(crate) fn open_file(&self, name: &str) -> io::Result<File> {
        self.open_regular(name, OFlags::empty()).map(File::from)
    }

    /// Open `name` for reading and writing, with `extra` flags (`CREATE`
    /// makes it 0600 if missing): never through a symlink, non-blocking (a
    /// FIFO does not hang it), and only if it is a regular file.
    fn open_regular(&self, name: &str, extra: OFlags) -> io::Result<OwnedFd> {
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            extra | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )?;
        let stat = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{name} is not a regular file"),
            ));
        }
        Ok(fd)
    }

    /// Remove segment `id`'s file, through the fault seam.
    pub(crate) fn remove_segment(&self, faults: &Faults, id: u64) -> io::Result<()> {
        faults.check(FsOp::Remove)?;
        self.remove(&segment_name(id))?;
        faults.record(|| Event::Remove { segment: id });
        Ok(())
    }

    /// Remove the file `name` (never what a symlink points to).
    pub(crate) fn remove(&self, name: &str) -> io::Result<()> {
        rustix::fs::unlinkat(&self.fd, name, AtFlags::empty()).map_err(io::Error::from)
    }

    /// Remove the subdirectory `name` and everything in it, without
    /// following any symlink (a symlink is removed, not its target).
    pub(crate) fn remove_tree(&self, name: &str) -> io::Result<()> {
        remove_tree_at(&self.fd, name)
    }

    /// fsync the directory, so creations and removals survive a power cut.
    pub(crate) fn sync(&self, faults: &Faults) -> io::Result<()> {
        rustix::fs::fsync(&self.fd).map_err(io::Error::from)?;
        faults.record(|| Event::DirSync);
        Ok(())
    }
}

fn list_fd(fd: &impl AsFd) -> io::Result<Vec<Listed>> {
    let mut dir = rustix::fs::Dir::read_from(fd)?;
    let mut out = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str() else {
            out.push(Listed {
                name: String::from_utf8_lossy(entry.file_name().to_bytes()).into_owned(),
                is_dir: false,
                is_file: false,
            });
            continue;
        };
        if name == "." || name == ".." {
            continue;
        }
        let stat = rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW)?;
        let kind = FileType::from_raw_mode(stat.st_mode);
        out.push(Listed {
            name: name.to_string(),
            is_dir: kind == FileType::Directory,
            is_file: kind == FileType::RegularFile,
        });
    }
    Ok(out)
}

fn remove_tree_at(parent: &OwnedFd, name: &str) -> io::Result<()> {
    let stat = rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(io::Error::from);
    }
    let dir = rustix::fs::openat(
        parent,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for entry in list_fd(&dir)? {
        remove_tree_at(&dir, &entry.name)?;
    }
    rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR).map_err(io::Error::from)
}

/// Bytes a segment's records may use: all but its header and footer.
pub(crate) fn record_space(size: u64) -> u64 {
    size - SEG_HEADER_LEN - crate::format::FOOTER_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_nothing_else_parses() {
        assert_eq!(parse_segment_name(&segment_name(0xabc)), Some(0xabc));
        for bad in [
            "seg-abc.v2",
            "seg-000000000000000g.v2",
            "seg-0000000000000001.v1",
            "x",
        ] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn segments_are_created_0600_preallocated_and_never_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let dir = CacheDir::open(&root.path().join("c")).expect("opens");
        let faults = Faults::default();
        let seg = dir
            .create_segment(&faults, 1, 1 << 20, 4096)
            .expect("creates");
        let meta = std::fs::metadata(root.path().join("c").join(segment_name(1))).expect("exists");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 1 << 20);
        assert_eq!(seg.read(0, 8).expect("reads"), b"TIERSSEG");
        let outside = root.path().join("outside");
        std::fs::write(&outside, b"keep").expect("write");
        std::os::unix::fs::symlink(&outside, root.path().join("c").join(segment_name(2)))
            .expect("symlink");
        assert!(dir.create_segment(&faults, 2, 1 << 20, 4096).is_err());
        assert!(dir.open_file(&segment_name(2)).is_err());
        assert_eq!(std::fs::read(&outside).expect("read"), b"keep");
    }

    #[test]
    fn a_fifo_is_refused_without_hanging() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = CacheDir::open(root.path()).expect("opens");
        let status = std::process::Command::new("mkfifo")
            .arg(root.path().join(segment_name(3)))
            .status();
        if status.is_ok_and(|s| s.success()) {
            assert!(dir.open_file(&segment_name(3)).is_err());
        }
    }
}
