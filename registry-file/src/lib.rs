//! # fyerrpc-registry-file
//!
//! A [`Registry`] kept in one JSON file: servers on one machine (or on a
//! shared directory) register by writing to it, clients read it and follow
//! its changes. No registry server to run, so it suits local development,
//! tests and small fixed deployments, and it is short enough to read as an
//! example of a backend (see [fyerrpc's guide](fyerrpc::registry::guide)).
//!
//! ```
//! use futures_util::StreamExt;
//! use fyerrpc::registry::RegisterOptions;
//! use fyerrpc::{Instance, Registry};
//! use fyerrpc_registry_file::FileRegistry;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("instances.json");
//! let registry = FileRegistry::create(&path)?.into_dyn(); // writes `[]` if missing
//!
//! let mut changes = registry.watch("GreetService", None).await?;
//! assert!(changes.next().await.unwrap()?.is_empty());
//!
//! let me = Instance::new("server-A", "GreetService", "127.0.0.1:8001")?;
//! let registration = registry.register(me, RegisterOptions::default()).await?;
//! assert_eq!(changes.next().await.unwrap()?.len(), 1);
//!
//! registration.shutdown().await?; // removes the entry from the file
//! assert!(changes.next().await.unwrap()?.is_empty());
//! # Ok(())
//! # }
//! ```
//!
//! ## The file
//!
//! A JSON array of instances, each in fyerrpc's instance JSON form
//! ([`fyerrpc::instance`]), much like Prometheus' `file_sd` target lists or
//! Envoy's filesystem EDS. Write it by hand, generate it, or let servers
//! register into it:
//!
//! ```json
//! [
//!   {"id":"server-A","service":"GreetService","address":"127.0.0.1:8001"},
//!   {"id":"server-B","service":"GreetService","version":"v1","address":"127.0.0.1:8002",
//!    "weight":50,"metadata":{"zone":"b"},"status":"enabled",
//!    "lease":{"owner":"4711-9c1e07d2a5b3f0e8","expires_unix_ms":1764260000000}}
//! ]
//! ```
//!
//! * `version` (default `v1`), `weight` (100), `metadata` and `status`
//!   (`enabled`) may be left out; unknown fields are ignored and kept.
//! * An entry **without** `lease` is permanent: it stays until someone edits
//!   it out. An entry **with** one belongs to a live [`Registration`]
//!   (`owner` is its token, `{pid}-{random}`) and is ignored once the wall
//!   clock passes `expires_unix_ms`; its keeper moves that forward every
//!   TTL/3. Writers drop expired entries.
//! * An entry that is not a valid instance is skipped with a warning (and
//!   counted in `fyerrpc_registry_invalid_entries_total{backend="file"}`);
//!   the others are still served.
//!
//! ## Reading and watching
//!
//! [`Registry::discover`] reads the file. [`Registry::watch`] watches the
//! file's **directory** with the `notify` crate (inotify, FSEvents, kqueue,
//! ReadDirectoryChanges): writers replace the file by renaming a new one over
//! it, which a watch on the file itself would miss. Events naming the file
//! are debounced ([`FileRegistry::with_debounce`], default 50 ms), then the
//! file is read again and the set is yielded if it changed. A lease running
//! out also triggers a read, so an abandoned registration disappears on time
//! without any write.
//!
//! A missing or malformed file (say, half-saved by an editor that does not
//! write atomically) makes `discover` fail and the watch yield one `Err`
//! naming the file and the problem; the watch keeps its last good set and
//! yields the next good one as soon as the file is fixed. Nothing panics.
//! [`FileRegistry::create`] writes an empty list when the file is missing,
//! so clients may start before any server.
//!
//! ## Writing
//!
//! Registering, renewing and deregistering edit the file: under an
//! in-process lock and an exclusive lock on `PATH.lock` (an advisory
//! `flock`/`LockFileEx` lock; the lock file is left in place), the file is
//! read, changed, written to a temporary file in the same directory, synced
//! and renamed over `PATH`. Readers never see a half-written file, and two
//! processes registering at once both end up in it. A malformed file is not
//! overwritten: registering fails with the parse error, and running keepers
//! retry until the file is fixed.
//!
//! ## Staying registered
//!
//! As with the other backends ([the contract](fyerrpc::Registry#the-life-of-a-registration)):
//! every keep-alive period (TTL/3) the registration's task moves its lease
//! forward; an entry deleted from outside (an edit, [`Registry::deregister`],
//! the file removed) is written back within that period and counted in
//! `fyerrpc_registry_reregistrations_total{backend="file"}`; an entry
//! replaced by another registration of the same instance is left alone and
//! the task ends; [`Registration::shutdown`] removes the entry if it is still
//! its own; a process that dies leaves an entry that readers ignore after the
//! TTL.
//!
//! Clocks: expiry compares the writer's and the reader's wall clocks, so all
//! processes sharing a file should share a clock (one machine, or NTP).

#![warn(missing_docs)]

mod file;
mod keeper;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fyerrpc::registry::{RegisterOptions, Registration, WatchStream};
use fyerrpc::{Instance, Registry, RegistryError};

pub use file::FileError;
use keeper::{blocking, Keeper};

/// Default wait after a file event before reading the file.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(50);

/// A registry kept in one JSON file. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct FileRegistry {
    path: Arc<PathBuf>,
    debounce: Duration,
}

impl FileRegistry {
    /// A registry in the file at `path`, which need not exist yet (it is
    /// created by the first registration); its directory must.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, FileError> {
        let given = path.as_ref();
        let io = |action, source| FileError::Io {
            path: given.to_owned(),
            action,
            source,
        };
        let path = std::path::absolute(given).map_err(|e| io("resolve the path", e))?;
        let (Some(dir), Some(_)) = (path.parent(), path.file_name()) else {
            return Err(io(
                "use it",
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
            ));
        };
        if !dir.is_dir() {
            return Err(FileError::Io {
                path: dir.to_owned(),
                action: "use its directory",
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        Ok(Self {
            path: Arc::new(path),
            debounce: DEFAULT_DEBOUNCE,
        })
    }

    /// Like [`open`](Self::open), and writes an empty list if the file does
    /// not exist, so that readers find a file from the start. Blocks briefly
    /// (it takes the write lock); an existing file is left as it is, even a
    /// malformed one (logged; readers report it until it is fixed).
    pub fn create(path: impl AsRef<Path>) -> Result<Self, FileError> {
        let registry = Self::open(path)?;
        match file::create_if_missing(&registry.path) {
            // Someone is editing it: readers report it until it is fixed.
            Err(error @ FileError::Malformed { .. }) => {
                tracing::warn!(%error, "the registry file exists but is malformed");
            }
            other => other?,
        }
        Ok(registry)
    }

    /// Sets how long a watch waits after a file event before reading, so
    /// that a burst of writes is read once.
    pub fn with_debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    /// The file, as an absolute path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This registry as a shared trait object.
    pub fn into_dyn(self) -> Arc<dyn Registry> {
        Arc::new(self)
    }
}

#[async_trait]
impl Registry for FileRegistry {
    async fn register(
        &self,
        instance: Instance,
        options: RegisterOptions,
    ) -> Result<Registration, RegistryError> {
        let ttl = options.checked_ttl()?;
        let keeper = Keeper {
            path: Arc::clone(&self.path),
            instance,
            ttl,
            owner: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
        };
        keeper.put().await?;
        tracing::debug!(instance = %keeper.instance, file = %self.path.display(), "registered");
        Ok(keeper.spawn(options.keepalive_period()))
    }

    async fn deregister(&self, instance: &Instance) -> Result<(), RegistryError> {
        let (path, instance) = (Arc::clone(&self.path), instance.clone());
        blocking(move || {
            file::edit(&path, |entries| {
                entries.retain(|e| !file::is_entry_of(e, &instance))
            })
        })
        .await
    }

    async fn discover(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<Vec<Instance>, RegistryError> {
        let path = Arc::clone(&self.path);
        let entries = blocking(move || file::read(&path)).await?;
        Ok(file::instances(&entries, service, version, &self.path).0)
    }

    async fn watch(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<WatchStream, RegistryError> {
        watch::watch(
            Arc::clone(&self.path),
            service.to_owned(),
            version.map(str::to_owned),
            self.debounce,
        )
    }
}
