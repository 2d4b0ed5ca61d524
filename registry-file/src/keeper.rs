//! The task behind each [`Registration`]: renews its entry's lease and
//! follows fyerrpc's [registration contract](fyerrpc::Registry#the-life-of-a-registration).
//!
//! ```text
//!                     every TTL/3: entry ours -> move its expiry to now + TTL
//!                    +----+
//!                    v    |
//!   register --> Keeping ---- entry missing (deleted, expired, file removed) --> write it back
//!                  |  ^                                                          (counted, logged)
//!                  |  +----------------------------------------------------------------+
//!                  |
//!                  +-- edit failed (malformed file, I/O) --> retry after 100 ms .. TTL/3 (backoff)
//!                  +-- entry has another owner (or no lease) --> Superseded: task ends, entry left alone
//!                  +-- stop(Deregister) --> remove the entry if still ours --> end
//!                  +-- stop(Abandon) -----> leave it to expire by its lease -> end
//! ```
//!
//! A renewal is never cut short by a stop: the stop is looked at between
//! rounds, so once the task has ended no write of it is still under way.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fyerrpc::registry::{Registration, RetryBackoff, StopMode};
use fyerrpc::{Instance, RegistryError};

use crate::file::{self, Lease, BACKEND};

/// What one keep-alive round found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    Renewed,
    Restored,
    Superseded,
}

/// One registration: what it writes, and as whom.
#[derive(Debug, Clone)]
pub(crate) struct Keeper {
    pub path: Arc<PathBuf>,
    pub instance: Instance,
    pub ttl: Duration,
    pub owner: String,
}

impl Keeper {
    fn lease(&self) -> Lease {
        Lease {
            owner: self.owner.clone(),
            expires_unix_ms: file::unix_ms(SystemTime::now() + self.ttl),
        }
    }

    /// Writes the entry, replacing any entry of the same instance.
    pub async fn put(&self) -> Result<(), RegistryError> {
        let this = self.clone();
        blocking(move || {
            file::edit(&this.path, |entries| {
                entries.retain(|e| !file::is_entry_of(e, &this.instance));
                entries.push(file::entry(&this.instance, this.lease()));
            })
        })
        .await
    }

    async fn renew(&self) -> Result<Renewal, RegistryError> {
        let this = self.clone();
        blocking(move || {
            file::edit(&this.path, |entries| {
                let ours = entries
                    .iter_mut()
                    .find(|e| file::is_entry_of(e, &this.instance));
                match ours {
                    Some(e) if file::lease_of(e).is_some_and(|l| l.owner == this.owner) => {
                        *e = file::entry(&this.instance, this.lease());
                        Renewal::Renewed
                    }
                    Some(_) => Renewal::Superseded,
                    None => {
                        entries.push(file::entry(&this.instance, this.lease()));
                        Renewal::Restored
                    }
                }
            })
        })
        .await
    }

    async fn remove(&self) -> Result<(), RegistryError> {
        let this = self.clone();
        blocking(move || {
            file::edit(&this.path, |entries| {
                entries.retain(|e| {
                    !(file::is_entry_of(e, &this.instance)
                        && file::lease_of(e).is_some_and(|l| l.owner == this.owner))
                });
            })
        })
        .await
    }

    /// Starts the keeper task of an entry already written by [`put`](Self::put).
    pub fn spawn(self, period: Duration) -> Registration {
        Registration::spawn(self.instance.clone(), move |mut stop| async move {
            let mut backoff = RetryBackoff::new(Duration::from_millis(100), period);
            let mut delay = period;
            loop {
                tokio::select! {
                    biased;
                    mode = stop.stopped() => return match mode {
                        StopMode::Deregister => self.remove().await,
                        StopMode::Abandon => Ok(()),
                    },
                    () = tokio::time::sleep(delay) => {}
                }
                delay = period;
                match self.renew().await {
                    Ok(Renewal::Renewed) => backoff.reset(),
                    Ok(Renewal::Restored) => {
                        backoff.reset();
                        metrics::counter!(fyerrpc::metrics::REGISTRY_REREGISTRATIONS, "backend" => BACKEND)
                            .increment(1);
                        tracing::info!(instance = %self.instance, "registration was gone from the file; wrote it back");
                    }
                    Ok(Renewal::Superseded) => {
                        tracing::info!(instance = %self.instance,
                            "registration replaced by a newer one; no longer keeping it");
                        return Ok(());
                    }
                    Err(error) => {
                        delay = backoff.next_delay().min(period);
                        tracing::warn!(instance = %self.instance, %error, retry_in = ?delay,
                            "cannot renew the registration");
                    }
                }
            }
        })
    }
}

/// Runs a blocking file edit off the async threads.
pub(crate) async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, file::FileError> + Send + 'static,
) -> Result<R, RegistryError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(RegistryError::from),
        Err(e) => Err(RegistryError::Other(format!("file task failed: {e}"))),
    }
}
