//! Crash-safe replacement of a small file: written whole to `<path>.tmp`,
//! fsynced, renamed over `path`, then the directory fsynced. After a crash
//! the file is the old version or the new one, never a mix.
//! Blocking I/O: call it off the async workers (`spawn_blocking`).

use std::io::Write;
use std::path::{Path, PathBuf};

/// Replaces `path` with `bytes` durably (tmp + fsync + rename + dir fsync).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `<path>.tmp`, in the same directory (so the rename is atomic).
fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        write_atomically(&p, b"one").unwrap();
        write_atomically(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!dir.path().join("f.json.tmp").exists());
    }
}
