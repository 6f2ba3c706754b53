//! Reading the files a config names (the config itself, secrets, JWKS, certificates and
//! CA bundles) with a bound on size and without ever blocking: a path that names a FIFO,
//! a device such as `/dev/zero`, or a directory is refused before a byte is read, so a
//! mistaken or hostile path cannot hang the reloader or exhaust memory. Symlinks are
//! followed (a Kubernetes volume is `name -> ..data/name`, `..data -> ..<timestamp>`).

use std::fs::{FileType, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest config file: a config with hundreds of routes is a few tens of KiB.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// Largest secret file: a bearer secret is at most a few hundred bytes.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;
/// Largest certificate, key, CA bundle or JWKS file: a full public CA bundle is about
/// 220 KiB, a JWKS a few KiB.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// Why a file was not read: `{path}: {problem}`. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", path.display())]
pub struct FileError {
    /// The path as given.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: FileProblem,
}

/// What is wrong with a file.
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    /// `open(2)`, `fstat(2)` or `read(2)` failed (missing, permissions, a dangling
    /// symlink…).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The path (after following symlinks) is not a regular file.
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    /// The file is larger than its bound.
    #[error("it is larger than {}, the most this file may hold", size(*.0))]
    TooLarge(u64),
    /// A text file whose bytes are not UTF-8.
    #[error("it is not UTF-8 text")]
    NotUtf8,
}

/// The bytes of the regular file at `path`, at most `limit` of them.
pub fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    read(path, limit).map_err(|problem| FileError {
        path: path.to_path_buf(),
        problem,
    })
}

/// Like [`read_bounded`], for text: the bytes must be UTF-8.
pub fn read_text_bounded(path: &Path, limit: u64) -> Result<String, FileError> {
    let bytes = read_bounded(path, limit)?;
    String::from_utf8(bytes).map_err(|_| FileError {
        path: path.to_path_buf(),
        problem: FileProblem::NotUtf8,
    })
}

fn read(path: &Path, limit: u64) -> Result<Vec<u8>, FileProblem> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
    // O_NOCTTY: a terminal named by mistake must not become the controlling terminal.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    // fstat on the open descriptor, not stat on the path: the answer is about the very
    // file that is read, even if the path is swapped in between.
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(FileProblem::NotRegular(kind(meta.file_type())));
    }
    if meta.len() > limit {
        return Err(FileProblem::TooLarge(limit));
    }
    // Never more than `limit + 1` bytes: a file that grows between fstat and read is
    // still refused instead of filling memory.
    let capacity = usize::try_from(meta.len()).unwrap_or(0);
    let mut bytes = Vec::with_capacity(capacity);
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(FileProblem::TooLarge(limit));
    }
    Ok(bytes)
}

fn kind(t: FileType) -> &'static str {
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// `64 KiB`, `1 MiB`, or bytes.
pub fn size(bytes: u64) -> String {
    if bytes >= 1024 * 1024 && bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_and_symlinks_to_them_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "abc").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read_bounded(&file, 3).unwrap(), b"abc");
        assert_eq!(read_text_bounded(&link, 3).unwrap(), "abc");
    }

    #[test]
    fn everything_but_a_small_regular_file_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, [b'x'; 4]).unwrap();
        let fifo = dir.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) reads a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let cases: &[(&Path, &str)] = &[
            (&big, "it is larger than 3 bytes"),
            (dir.path(), "it is a directory, not a regular file"),
            (&fifo, "it is a FIFO (named pipe), not a regular file"),
            (Path::new("/dev/zero"), "it is a character device"),
            (&dir.path().join("missing"), "No such file"),
        ];
        for (path, want) in cases {
            let err = read_bounded(path, 3).unwrap_err().to_string();
            assert!(err.contains(want), "{}: {err}", path.display());
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
    }

    #[test]
    fn text_must_be_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("latin1");
        std::fs::write(&file, b"caf\xe9").unwrap();
        let err = read_text_bounded(&file, 64).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn sizes_are_written_in_their_largest_whole_unit() {
        assert_eq!(size(MAX_SECRET_BYTES), "64 KiB");
        assert_eq!(size(MAX_CONFIG_BYTES), "1 MiB");
        assert_eq!(size(3), "3 bytes");
    }
}
