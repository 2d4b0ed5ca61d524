//! Watching the file: a `notify` watcher on its directory wakes a task that
//! reads the file again and yields the set when it changed.
//!
//! ```text
//!   watch() --> watcher on the directory (before the first read: no change is missed)
//!           --> read --> set changed?  yield Ok(set)
//!                    --> read failed?  yield Err once per distinct error, keep the last set
//!           --> wait for: an event naming the file  -> wait `debounce`, drain events, read
//!                         the next lease expiry     -> read
//!                         the stream dropped        -> end (the watcher goes with it)
//! ```
//!
//! The directory is watched rather than the file because writers replace the
//! file by a rename: a watch on the file itself would follow the old inode.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fyerrpc::registry::{channel_stream, WatchStream};
use fyerrpc::{Instance, RegistryError};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::file::{self, FileError};
use crate::keeper::blocking;

/// Starts watching `path` for the instances of `service` (and `version`).
pub(crate) fn watch(
    path: Arc<PathBuf>,
    service: String,
    version: Option<String>,
    debounce: Duration,
) -> Result<WatchStream, RegistryError> {
    let dir = path.parent().map(|d| d.to_path_buf()).unwrap_or_default();
    let name: OsString = path.file_name().unwrap_or_default().to_owned();
    let (events, mut woken) = mpsc::unbounded_channel::<Result<(), String>>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let wake = match event {
            // Reads (ours included) would wake us for nothing.
            Ok(e) if matches!(e.kind, EventKind::Access(_)) => return,
            Ok(e) => {
                if !e
                    .paths
                    .iter()
                    .any(|p| p.file_name() == Some(name.as_os_str()))
                {
                    return;
                }
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        let _ = events.send(wake);
    })
    .map_err(|e| RegistryError::Unavailable(format!("cannot watch files: {e}")))?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| {
            RegistryError::Unavailable(format!("cannot watch the directory {}: {e}", dir.display()))
        })?;

    Ok(channel_stream(move |tx| async move {
        let _watcher = watcher; // dropped with the task: stops watching
        let mut last_set: Option<Vec<Instance>> = None;
        let mut last_error: Option<String> = None;
        let mut next_expiry: Option<SystemTime>;
        loop {
            let read = {
                let (path, service, version) =
                    (Arc::clone(&path), service.clone(), version.clone());
                blocking(move || {
                    let entries = file::read(&path)?;
                    Ok::<_, FileError>(file::instances(
                        &entries,
                        &service,
                        version.as_deref(),
                        &path,
                    ))
                })
                .await
            };
            match read {
                Ok((set, next)) => {
                    last_error = None;
                    next_expiry = next;
                    if last_set.as_ref() != Some(&set) {
                        last_set = Some(set.clone());
                        if tx.send(Ok(set)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(error) => {
                    // Keep the last good set (its expiries included: nothing
                    // to wake for until the file changes); say what is wrong
                    // once.
                    next_expiry = None;
                    let message = error.to_string();
                    if last_error.as_ref() != Some(&message) {
                        tracing::warn!(file = %path.display(), %error, "cannot read the registry file; keeping the last instance set");
                        last_error = Some(message);
                        if tx.send(Err(error)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let expiry = async {
                match next_expiry {
                    Some(t) => {
                        let wait = t.duration_since(SystemTime::now()).unwrap_or_default();
                        tokio::time::sleep(wait + Duration::from_millis(1)).await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = woken.recv() => match event {
                    None => return,
                    Some(Err(error)) => {
                        let error = RegistryError::Unavailable(format!("file watch of {}: {error}", path.display()));
                        if tx.send(Err(error)).await.is_err() {
                            return;
                        }
                    }
                    Some(Ok(())) => {
                        // Let a burst of writes (an editor saving, several
                        // registrations at once) settle into one read.
                        tokio::time::sleep(debounce).await;
                        while woken.try_recv().is_ok() {}
                    }
                },
                () = expiry => {}
                () = tx.closed() => return,
            }
        }
    }))
}
