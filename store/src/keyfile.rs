//! The device's secret key on disk: 32 bytes in a file only its owner can read, created
//! without a moment where another user could read it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Bytes of a key file: one ed25519 seed.
pub const KEY_FILE_BYTES: usize = 32;

/// What can go wrong with a key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// A key file is already there; it is never overwritten.
    #[error("the key file {path} already exists and will not be overwritten")]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// The operating system refused to create, read or sync the file.
    #[error("could not use the key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Other users may read the file, so the key may have leaked; it is not used.
    #[error(
        "the key file {path} can be read by other users (mode {mode:o}); it is not used. \
         Restrict it with `chmod 600` if you trust it, or make a new device key"
    )]
    Readable {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file does not hold exactly [`KEY_FILE_BYTES`] bytes.
    #[error("the key file {path} is damaged: it should hold {KEY_FILE_BYTES} bytes, not {len}")]
    WrongLength {
        /// The key file.
        path: PathBuf,
        /// How many bytes it holds (up to one more than expected).
        len: usize,
    },
}

/// Writes `seed` to a new file at `path`, owner-only from the moment it exists (unix),
/// and syncs the file and its directory. Refuses to overwrite an existing file.
pub fn create(path: &Path, seed: &[u8; KEY_FILE_BYTES]) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_path_buf(), source };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => KeyFileError::Exists { path: path.to_path_buf() },
        _ => io(e),
    })?;
    file.write_all(seed).map_err(io)?;
    file.sync_all().map_err(io)?;
    sync_dir(path).map_err(io)
}

/// Reads the seed at `path`. Fails if other users can read the file (unix) or if it does
/// not hold exactly [`KEY_FILE_BYTES`] bytes.
pub fn read(path: &Path) -> Result<[u8; KEY_FILE_BYTES], KeyFileError> {
    let io = |source| KeyFileError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    check_private(path, &file)?;
    let mut bytes = Vec::with_capacity(KEY_FILE_BYTES + 1);
    file.take(KEY_FILE_BYTES as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
    <[u8; KEY_FILE_BYTES]>::try_from(bytes.as_slice())
        .map_err(|_| KeyFileError::WrongLength { path: path.to_path_buf(), len: bytes.len() })
}

#[cfg(unix)]
fn check_private(path: &Path, file: &File) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata =
        file.metadata().map_err(|source| KeyFileError::Io { path: path.to_path_buf(), source })?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Readable { path: path.to_path_buf(), mode });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path, _file: &File) -> Result<(), KeyFileError> {
    Ok(())
}

/// Syncs the directory entry, so the new file survives a power cut (unix).
fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}
