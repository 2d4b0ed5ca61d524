//! The registry file: its format, reading it, and editing it safely.
//!
//! An edit runs under two locks, then replaces the file by a rename:
//!
//! ```text
//!   edit(f) --> in-process mutex of the path   (tasks of this process)
//!           --> exclusive lock on PATH.lock    (other processes)
//!           --> read PATH (missing: empty list; malformed: error, nothing written)
//!           --> drop expired leases, apply f
//!           --> unchanged? done : write .PATH.tmp-*, fsync, rename over PATH
//! ```
//!
//! Readers take no lock: the rename swaps the whole file at once, so a
//! reader sees the old list or the new one, never half of one.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fyerrpc::instance::DEFAULT_VERSION;
use fyerrpc::registry::canonicalize;
use fyerrpc::{Instance, RegistryError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The label value of this backend in fyerrpc's registry metrics.
pub(crate) const BACKEND: &str = "file";

/// Why the registry file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file does not exist (yet).
    #[error("registry file {0} does not exist")]
    Missing(PathBuf),
    /// The file is not a JSON array of objects.
    #[error("registry file {path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        reason: String,
    },
    /// Reading, writing, locking or watching failed.
    #[error("registry file {path}: cannot {action}: {source}")]
    Io {
        /// The file (or its directory, lock or temporary file).
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
}

impl From<FileError> for RegistryError {
    fn from(e: FileError) -> Self {
        match e {
            FileError::Malformed { .. } => RegistryError::Other(e.to_string()),
            FileError::Missing(_) | FileError::Io { .. } => {
                RegistryError::Unavailable(e.to_string())
            }
        }
    }
}

/// Who keeps an entry alive, and until when. Entries without one are
/// permanent (written by hand).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    /// The registration's token: `{pid}-{random}`.
    pub owner: String,
    /// Milliseconds since the Unix epoch after which the entry is ignored.
    pub expires_unix_ms: u64,
}

/// Milliseconds since the Unix epoch of `t` (0 before the epoch).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// One entry of the file, kept as written so that fields this crate does not
/// know (and entries it cannot decode) survive an edit.
pub(crate) type Entry = Map<String, Value>;

/// The (service, version, id) an entry is filed under, if it names them.
pub(crate) fn key_of(e: &Entry) -> Option<(&str, &str, &str)> {
    let service = e.get("service")?.as_str()?;
    let version = match e.get("version") {
        None | Some(Value::Null) => DEFAULT_VERSION,
        Some(v) => v.as_str()?,
    };
    let id = e.get("id")?.as_str()?;
    Some((service, version, id))
}

/// Whether `e` is the entry of `inst`.
pub(crate) fn is_entry_of(e: &Entry, inst: &Instance) -> bool {
    key_of(e) == Some((inst.service(), inst.version(), inst.id()))
}

/// The entry's lease; `None` for a permanent entry (a malformed lease counts
/// as none, so a hand-edited file never loses an entry to a typo).
pub(crate) fn lease_of(e: &Entry) -> Option<Lease> {
    serde_json::from_value(e.get("lease")?.clone()).ok()
}

fn expired(e: &Entry, now_ms: u64) -> bool {
    lease_of(e).is_some_and(|l| l.expires_unix_ms <= now_ms)
}

/// The entry of `inst` held by `lease`.
pub(crate) fn entry(inst: &Instance, lease: Lease) -> Entry {
    let mut e: Entry = serde_json::from_str(&inst.to_json()).unwrap_or_default();
    if let Ok(lease) = serde_json::to_value(lease) {
        e.insert("lease".to_owned(), lease);
    }
    e
}

/// Reads and parses the file.
pub(crate) fn read(path: &Path) -> Result<Vec<Entry>, FileError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(FileError::Missing(path.to_owned()))
        }
        Err(source) => {
            return Err(FileError::Io {
                path: path.to_owned(),
                action: "read it",
                source,
            })
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| FileError::Malformed {
        path: path.to_owned(),
        reason: format!("expected a JSON array of instance objects: {e}"),
    })
}

/// The live instances of `service` (of `version`, if given) in `entries`,
/// in canonical order, and when the next of their leases runs out. Entries
/// that do not decode are skipped with a warning and counted.
pub(crate) fn instances(
    entries: &[Entry],
    service: &str,
    version: Option<&str>,
    path: &Path,
) -> (Vec<Instance>, Option<SystemTime>) {
    let now = unix_ms(SystemTime::now());
    let mut next: Option<u64> = None;
    let mut set = Vec::new();
    for (index, e) in entries.iter().enumerate() {
        if e.get("service").and_then(Value::as_str) != Some(service) {
            continue;
        }
        let inst = match serde_json::to_vec(e).map(|b| Instance::from_json(&b)) {
            Ok(Ok(inst)) => inst,
            Ok(Err(error)) => {
                tracing::warn!(file = %path.display(), index, %error, "skipping an invalid registry entry");
                metrics::counter!(fyerrpc::metrics::REGISTRY_INVALID_ENTRIES, "backend" => BACKEND)
                    .increment(1);
                continue;
            }
            Err(_) => continue,
        };
        if version.is_some_and(|v| v != inst.version()) {
            continue;
        }
        if let Some(lease) = lease_of(e) {
            if lease.expires_unix_ms <= now {
                continue;
            }
            next = Some(next.map_or(lease.expires_unix_ms, |n| n.min(lease.expires_unix_ms)));
        }
        set.push(inst);
    }
    let next = next.map(|ms| UNIX_EPOCH + Duration::from_millis(ms));
    (canonicalize(set), next)
}

/// The in-process lock of each registry file, by absolute path.
fn process_lock(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    Arc::clone(locks.entry(path.to_owned()).or_default())
}

/// The lock file beside `path`: `PATH.lock`.
pub(crate) fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    path.with_file_name(name)
}

/// Runs `f` on the entries of the file under both locks and writes the
/// result back atomically if `f` changed anything. Leased entries that have
/// expired are dropped first. A missing file is an empty list (and is only
/// created if `f` adds something); a malformed one is an error and is left
/// as it is, for whoever is editing it to fix.
///
/// Blocking: call it from `spawn_blocking`.
pub(crate) fn edit<R>(path: &Path, f: impl FnOnce(&mut Vec<Entry>) -> R) -> Result<R, FileError> {
    edit_or_create(path, false, f)
}

/// Writes an empty list at `path` if there is no file (under the locks).
pub(crate) fn create_if_missing(path: &Path) -> Result<(), FileError> {
    edit_or_create(path, true, |_| ())
}

fn edit_or_create<R>(
    path: &Path,
    create: bool,
    f: impl FnOnce(&mut Vec<Entry>) -> R,
) -> Result<R, FileError> {
    let in_process = process_lock(path);
    let _in_process = in_process.lock().unwrap_or_else(|e| e.into_inner());
    let lock_path = lock_path(path);
    let io = |action, source| FileError::Io {
        path: lock_path.clone(),
        action,
        source,
    };
    let lock_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| io("open the lock file", e))?;
    let mut lock = fd_lock::RwLock::new(lock_file);
    let _across_processes = lock.write().map_err(|e| io("lock the lock file", e))?;

    let (mut entries, existed) = match read(path) {
        Ok(entries) => (entries, true),
        Err(FileError::Missing(_)) => (Vec::new(), false),
        Err(e) => return Err(e),
    };
    let before = entries.clone();
    let now = unix_ms(SystemTime::now());
    entries.retain(|e| !expired(e, now));
    let result = f(&mut entries);
    if entries != before || (!existed && (create || !entries.is_empty())) {
        write_atomically(path, &entries)?;
    }
    Ok(result)
}

/// Writes `entries` to a temporary file in the same directory, syncs it and
/// renames it over `path`.
pub(crate) fn write_atomically(path: &Path, entries: &[Entry]) -> Result<(), FileError> {
    let mut text = String::from("[\n");
    for (i, e) in entries.iter().enumerate() {
        text.push_str("  ");
        text.push_str(&Value::Object(e.clone()).to_string());
        text.push_str(if i + 1 < entries.len() { ",\n" } else { "\n" });
    }
    text.push_str("]\n");

    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(
        ".tmp-{}-{:08x}",
        std::process::id(),
        fastrand::u32(..)
    ));
    let tmp = path.with_file_name(tmp_name);
    let io = |action, source| FileError::Io {
        path: tmp.clone(),
        action,
        source,
    };
    let written = (|| {
        let mut file = File::create(&tmp).map_err(|e| io("create the temporary file", e))?;
        file.write_all(text.as_bytes())
            .map_err(|e| io("write the temporary file", e))?;
        file.sync_all()
            .map_err(|e| io("sync the temporary file", e))?;
        fs::rename(&tmp, path)
            .map_err(|e| io("rename the temporary file over the registry file", e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(id: &str) -> Instance {
        Instance::new(id, "S", "127.0.0.1:1").unwrap()
    }

    #[test]
    fn keys_default_the_version() {
        let e: Entry = serde_json::from_str(r#"{"service":"S","id":"a"}"#).unwrap();
        assert_eq!(key_of(&e), Some(("S", "v1", "a")));
        let e: Entry = serde_json::from_str(r#"{"service":"S","id":7}"#).unwrap();
        assert_eq!(key_of(&e), None);
    }

    #[test]
    fn expired_and_invalid_entries_are_not_listed() {
        let now = unix_ms(SystemTime::now());
        let live = entry(
            &inst("live"),
            Lease {
                owner: "o".into(),
                expires_unix_ms: now + 60_000,
            },
        );
        let dead = entry(
            &inst("dead"),
            Lease {
                owner: "o".into(),
                expires_unix_ms: now - 1,
            },
        );
        let permanent: Entry =
            serde_json::from_str(r#"{"service":"S","id":"permanent","address":"h:1"}"#).unwrap();
        let bad: Entry =
            serde_json::from_str(r#"{"service":"S","id":"bad","address":"nowhere"}"#).unwrap();
        let (set, next) = instances(&[live, dead, permanent, bad], "S", None, Path::new("f"));
        let ids: Vec<&str> = set.iter().map(Instance::id).collect();
        assert_eq!(ids, ["live", "permanent"]);
        assert_eq!(next.map(unix_ms), Some(now + 60_000));
    }

    #[test]
    fn edits_create_replace_and_keep_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        // Nothing to write: the file is not created.
        edit(&path, |_| ()).unwrap();
        assert!(matches!(read(&path), Err(FileError::Missing(_))));
        fs::write(
            &path,
            r#"[{"service":"S","id":"a","address":"h:1","note":"kept"}]"#,
        )
        .unwrap();
        edit(&path, |es| {
            es.push(entry(
                &inst("b"),
                Lease {
                    owner: "o".into(),
                    expires_unix_ms: u64::MAX,
                },
            ))
        })
        .unwrap();
        let entries = read(&path).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0]["note"], "kept");
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}"); // r.json and r.json.lock
    }

    #[test]
    fn a_malformed_file_is_reported_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        fs::write(&path, "[{").unwrap();
        let err = edit(&path, |es| es.clear()).unwrap_err();
        assert!(matches!(err, FileError::Malformed { .. }), "{err}");
        assert!(err.to_string().contains("line 1"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "[{");
    }
}
