//! Opening the files ops (or an accident, or an attacker) point recd at: job files,
//! `recd.toml`, inputs and models. Only a regular file is read, after symlinks are
//! resolved, and only up to a size limit. A FIFO, `/dev/zero`, a directory or a socket in
//! their place gets an error naming what it is, at once: opening a FIFO for reading
//! blocks until a writer comes, and `/dev/zero` never ends (the adversarial run wedged the
//! reloader with one and grew the daemon to 4 GB with the other).
//!
//! The file is opened with `O_NONBLOCK`, so the open itself never waits, and its type and
//! size are read from the open descriptor (`fstat`), so a file swapped between a check and
//! the read cannot slip through.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Largest job file or `recd.toml` read: real ones are a few KiB.
pub const MAX_JOB_FILE_BYTES: u64 = 1 << 20;

/// Why a path was not read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FileError {
    #[error("does not exist")]
    Missing,
    #[error("is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error("is {size} bytes, more than the {limit} bytes allowed")]
    TooLarge { size: u64, limit: u64 },
    #[error("{0}")]
    Io(String),
}

/// Opens `path` (following symlinks) if it is a regular file of at most `limit` bytes.
pub fn open_regular(path: &Path, limit: u64) -> Result<(File, Metadata), FileError> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. O_NOCTTY:
    // a terminal device must not become our controlling terminal.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_error)?;
    let meta = file.metadata().map_err(io_error)?;
    check_kind(&meta)?;
    if meta.len() > limit {
        return Err(FileError::TooLarge { size: meta.len(), limit });
    }
    Ok((file, meta))
}

/// Checks that `path` is a regular file of at most `limit` bytes, without reading it.
pub fn check_regular(path: &Path, limit: u64) -> Result<(), FileError> {
    open_regular(path, limit).map(drop)
}

/// The whole of `path` as UTF-8 text, if it is a regular file of at most `limit` bytes.
pub fn read_text(path: &Path, limit: u64) -> Result<String, FileError> {
    let (file, _) = open_regular(path, limit)?;
    // The file may grow after the size check: read one byte past the limit to see it.
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io_error)?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge { size: bytes.len() as u64, limit });
    }
    String::from_utf8(bytes)
        .map_err(|e| FileError::Io(format!("is not UTF-8 text (byte {})", e.utf8_error().valid_up_to())))
}

/// Makes `dir` (created if missing) and everything in it private to recd's user: folders
/// 0700, files without any group or other bits (0600, or 0400 for read-only ones). Files
/// created under the default umask are world-readable, and the store holds every table.
/// Symlinks are left alone (their own mode means nothing); entries are not followed out
/// of `dir`. Returns how many modes were changed.
pub fn make_private_dir(dir: &Path) -> std::io::Result<usize> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let mut changed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        let meta = std::fs::symlink_metadata(&at)?;
        let mode = meta.permissions().mode() & 0o7777;
        let want = if meta.is_dir() {
            stack.extend(std::fs::read_dir(&at)?.filter_map(|e| e.ok().map(|e| e.path())));
            0o700
        } else if meta.is_symlink() {
            continue;
        } else {
            mode & 0o700
        };
        if mode != want {
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(want))?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// Refuses with a message when the filesystem holding `dir` has less than `needed` bytes
/// free for us.
pub fn check_free_space(dir: &Path, needed: u64) -> Result<(), String> {
    let stat = rustix::fs::statvfs(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if free < needed {
        return Err(format!(
            "not enough free space in {}: {} MiB free, {} MiB needed",
            dir.display(),
            free >> 20,
            needed.div_ceil(1 << 20)
        ));
    }
    Ok(())
}

/// Files and folders the process creates from now on get no group or other bits, whatever
/// umask it was started with (sockets are given their configured mode explicitly).
pub fn private_umask() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

fn check_kind(meta: &Metadata) -> Result<(), FileError> {
    if meta.is_file() { Ok(()) } else { Err(FileError::NotRegular(kind_name(&meta.file_type()))) }
}

/// What a file is, for messages: "a regular file", "a directory", "a FIFO (named pipe)"...
pub fn kind_name(t: &std::fs::FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symlink"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

fn io_error(e: std::io::Error) -> FileError {
    match e.kind() {
        std::io::ErrorKind::NotFound => FileError::Missing,
        _ => FileError::Io(e.to_string()),
    }
}

/// The file's SHA-256, lowercase hex; only a regular file is read.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let (mut file, _) =
        open_regular(path, u64::MAX).map_err(|e| std::io::Error::other(format!("{} {e}", path.display())))?;
    sha256_of(&mut file)
}

/// A model's fingerprint: the SHA-256 of its file, and `+` the SHA-256 of its external data
/// file (`<model>.data`) when it has one.
pub fn model_sha256(model: &Path) -> std::io::Result<String> {
    let mut text = sha256_file(model)?;
    let data = std::path::PathBuf::from(format!("{}.data", model.display()));
    if data.is_file() {
        text = format!("{text}+{}", sha256_file(&data)?);
    }
    Ok(text)
}

/// The SHA-256 of what is left to read of `file`, lowercase hex.
pub fn sha256_of(file: &mut File) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo").arg(path).status().expect("mkfifo runs");
        assert!(status.success(), "mkfifo {}", path.display());
    }

    #[test]
    fn only_regular_files_within_the_limit_are_read_and_nothing_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.toml");
        mkfifo(&fifo);
        let file = dir.path().join("ok.toml");
        std::fs::write(&file, "a = 1\n").unwrap();
        let big = dir.path().join("big.toml");
        std::fs::write(&big, vec![b'#'; 2048]).unwrap();
        let link_to_zero = dir.path().join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &link_to_zero).unwrap();
        let link_to_fifo = dir.path().join("via-link.toml");
        std::os::unix::fs::symlink(&fifo, &link_to_fifo).unwrap();

        let started = Instant::now();
        assert_eq!(read_text(&file, 1024).unwrap(), "a = 1\n");
        assert_eq!(read_text(&fifo, 1024), Err(FileError::NotRegular("a FIFO (named pipe)")));
        assert_eq!(read_text(&link_to_fifo, 1024), Err(FileError::NotRegular("a FIFO (named pipe)")));
        assert_eq!(read_text(&link_to_zero, 1024), Err(FileError::NotRegular("a character device")));
        assert_eq!(read_text(dir.path(), 1024), Err(FileError::NotRegular("a directory")));
        assert_eq!(read_text(&big, 1024), Err(FileError::TooLarge { size: 2048, limit: 1024 }));
        assert_eq!(read_text(&dir.path().join("none"), 1024), Err(FileError::Missing));
        assert!(started.elapsed() < Duration::from_secs(5), "a check blocked: {:?}", started.elapsed());
        assert_eq!(
            FileError::NotRegular("a FIFO (named pipe)").to_string(),
            "is a FIFO (named pipe), not a regular file"
        );
    }
}
