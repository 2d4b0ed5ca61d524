//! The discovery loop behind [`Registry::watch`](fyerrpc::Registry::watch).
//!
//! Read the range (remembering the revision), hand out the set, watch from the
//! next revision so nothing between the two is missed, and hand out the whole
//! set again after every change. The etcd client's watch streams do not
//! recover from a broken connection, so the loop supervises them: when a
//! stream fails or ends it waits (backoff), reads the range again and watches
//! on from that read's revision. Re-reading, rather than resuming at the last
//! revision seen, is what keeps the set right when the history is gone:
//! a compacted revision, or an etcd restarted on an empty data dir whose
//! revisions start over (a resumed watch would wait for revisions that come
//! much later, if ever).

use std::time::Duration;

use etcd_client::{Client, WatchOptions};
use fyerrpc::{Instance, RegistryError};
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::{call, registry_error};
use crate::metrics;
use crate::snapshot::Snapshot;

type Tx = Sender<Result<Vec<Instance>, RegistryError>>;

/// Why one watch (read, then watch) ended.
enum End {
    /// The stream's receiver is gone: stop.
    Closed,
    /// The watched revision was compacted away: re-read at once.
    Compacted(i64),
    /// etcd failed or went away: report, back off, re-read.
    Failed(RegistryError),
}

/// Watches one key range.
pub(crate) struct Watcher {
    pub(crate) client: Client,
    /// The registry's prefix.
    pub(crate) prefix: String,
    /// The watched key prefix (one service, or one version of it).
    pub(crate) range: String,
    pub(crate) timeout: Duration,
}

impl Watcher {
    /// Reads the range now.
    pub(crate) async fn read(&self) -> Result<Snapshot, RegistryError> {
        Snapshot::read(&self.client, &self.prefix, &self.range, self.timeout).await
    }

    /// Feeds `tx` until its receiver is dropped, starting from `first`.
    pub(crate) async fn run(self, first: Snapshot, tx: Tx) {
        let mut backoff = Backoff::default();
        let mut out = Output {
            tx,
            last: None,
            failing: false,
        };
        let mut snapshot = Some(first);
        loop {
            let started = Instant::now();
            match self.watch_once(snapshot.take(), &mut out).await {
                End::Closed => return,
                End::Compacted(revision) => {
                    metrics::watch_restarted();
                    tracing::info!(range = %self.range, compacted = revision,
                        "watched revision was compacted; reading the range again");
                }
                End::Failed(error) => {
                    backoff.run_ended(started.elapsed());
                    if out.failing {
                        tracing::debug!(range = %self.range, %error, "etcd watch still failing");
                    } else {
                        metrics::watch_restarted();
                        tracing::warn!(range = %self.range, %error,
                            "etcd watch interrupted; reading the range again");
                    }
                    if out.fail(error).await.is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = out.tx.closed() => return,
                    }
                }
            }
        }
    }

    /// One read (unless given) and one watch, until the watch ends.
    async fn watch_once(&self, snapshot: Option<Snapshot>, out: &mut Output) -> End {
        let mut snapshot = match snapshot {
            Some(s) => s,
            None => match self.read().await {
                Ok(s) => s,
                Err(e) => return End::Failed(e),
            },
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(snapshot.revision() + 1);
        let started = call(self.timeout, || {
            let mut watches = self.client.watch_client();
            let options = options.clone();
            async move { watches.watch(self.range.as_str(), Some(options)).await }
        });
        // The request half must live as long as the watch.
        let (_requests, mut responses) = match started.await {
            Ok(stream) => stream.split(),
            Err(e) => return End::Failed(e),
        };
        if out.failing {
            tracing::info!(range = %self.range, "etcd watch restored");
        }
        if out.send(snapshot.instances()).await.is_err() {
            return End::Closed;
        }
        loop {
            let response = tokio::select! {
                r = responses.message() => r,
                _ = out.tx.closed() => return End::Closed,
            };
            let response = match response {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return End::Failed(RegistryError::Unavailable("etcd ended the watch".into()))
                }
                Err(e) => return End::Failed(registry_error(e)),
            };
            if response.compact_revision() > 0 {
                return End::Compacted(response.compact_revision());
            }
            if response.canceled() {
                return End::Failed(RegistryError::Unavailable(format!(
                    "etcd canceled the watch: {}",
                    response.cancel_reason()
                )));
            }
            snapshot.apply(response.events());
            if out.send(snapshot.instances()).await.is_err() {
                return End::Closed;
            }
        }
    }
}

/// The receiving end of a watch, and what it was last told.
struct Output {
    tx: Tx,
    /// The set sent last, if no error came after it.
    last: Option<Vec<Instance>>,
    /// Whether the last thing sent was an error.
    failing: bool,
}

impl Output {
    /// Sends `set` unless it is the one sent last. `Err` when the receiver is
    /// gone.
    async fn send(&mut self, set: Vec<Instance>) -> Result<(), ()> {
        self.failing = false;
        if self.last.as_ref() == Some(&set) {
            return Ok(());
        }
        self.last = Some(set.clone());
        self.tx.send(Ok(set)).await.map_err(drop)
    }

    /// Sends an error; the next set is then sent even if unchanged.
    async fn fail(&mut self, error: RegistryError) -> Result<(), ()> {
        self.failing = true;
        self.last = None;
        self.tx.send(Err(error)).await.map_err(drop)
    }
}
