//! Helpers of the file registry's tests: outside writers of the file.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

/// Logs of the code under test, when `RUST_LOG` asks for them.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The lock file writers take: `PATH.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().expect("file name").to_owned();
    name.push(".lock");
    path.with_file_name(name)
}

/// Replaces the file by renaming a new one over it, as `mv` or a
/// configuration tool would (no lock taken).
pub fn replace_by_rename(path: &Path, text: &str) {
    let tmp = path.with_file_name("outside-writer.tmp");
    std::fs::write(&tmp, text).expect("write the new file");
    std::fs::rename(&tmp, path).expect("rename it over the registry file");
}

/// Appends one raw JSON entry to the file under the writers' lock.
pub fn append_locked(path: &Path, entry: &str) {
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock_path(path))
        .expect("open the lock file");
    let mut lock = fd_lock::RwLock::new(lock_file);
    let _guard = lock.write().expect("lock");
    let text = std::fs::read_to_string(path).unwrap_or_else(|_| "[]".into());
    let mut entries: Vec<serde_json::Value> = serde_json::from_str(&text).expect("valid file");
    entries.push(serde_json::from_str(entry).expect("valid JSON entry"));
    replace_by_rename(
        path,
        &serde_json::to_string_pretty(&entries).expect("encode"),
    );
}
