//! The discovery loop behind [`Registry::watch`](fyerrpc::Registry::watch)
//! and [`Registry::watch_changes`](fyerrpc::Registry::watch_changes).
//!
//! Read the range (remembering the revision), hand out the set, watch from the
//! next revision so nothing between the two is missed, and after every change
//! hand out the whole set again ([`Sink::Sets`]) or only what the watch
//! events changed ([`Sink::Changes`]; after each read, the whole set, which
//! the shared watch in front of it diffs). The etcd client's watch streams do not
//! recover from a broken connection, so the loop supervises them: when a
//! stream fails or ends it waits (backoff), reads the range again and watches
//! on from that read's revision. Re-reading, rather than resuming at the last
//! revision seen, is what keeps the set right when the history is gone:
//! a compacted revision, or an etcd restarted on an empty data dir whose
//! revisions start over (a resumed watch would wait for revisions that come
//! much later, if ever).
//!
//! A stream on a member that hangs stays open and silent, so the loop also
//! supervises silence: after a request timeout without a message it asks
//! for a progress report, and a stream still silent a request timeout later
//! is given up, its member suspected, and the range read again elsewhere.
//!
//! ```text
//!   +---------+  read at revision R,   +----------+  every change:
//!   | Reading | ---------------------> | Watching | ----------------> hand out the set (or the delta)
//!   +---------+  watch from R + 1,     +----------+
//!     ^    |     hand out the set        |  |  |
//!     |    | failed                      |  |  | silent: ask for progress,
//!     |    v                             |  |  | still silent: failed
//!     |  +------------+  failed, ended   |  |  |
//!     +--| Backing off| <----------------+  |  |
//!     |  +------------+  (report an error)  |  |
//!     |                                     |  |
//!     +-------------------------------------+  |
//!       R + 1 compacted: read again at once     |
//!                                               v
//!                               receiver dropped: stop
//! ```

use std::time::Duration;

use etcd_client::{Client, Event, WatchOptions};
use fyerrpc::registry::WatchEvent;
use fyerrpc::{Instance, RegistryError};
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::registry_error;
use crate::hooks::{Hook, Probe};
use crate::members::{Members, Patience};
use crate::metrics;
use crate::snapshot::Snapshot;

/// Where whole sets go ([`Registry::watch`](fyerrpc::Registry::watch)).
pub(crate) type SetTx = Sender<Result<Vec<Instance>, RegistryError>>;
/// Where changes go ([`Registry::watch_changes`](fyerrpc::Registry::watch_changes)).
pub(crate) type ChangeTx = Sender<Result<WatchEvent, RegistryError>>;

/// What the watch hands out.
pub(crate) enum Sink {
    /// The whole set after every change.
    Sets(SetTx),
    /// The whole set after every read, then only what each batch of watch
    /// events changed.
    Changes(ChangeTx),
}

/// Why one watch (read, then watch) ended.
enum End {
    /// The stream's receiver is gone: stop.
    Closed,
    /// The watched revision was compacted away: re-read at once.
    Compacted(i64),
    /// etcd failed or went away: report, back off, re-read.
    Failed(RegistryError),
}

/// An `End::Failed` for a stream that broke on `member`, now suspect.
fn broke(members: &Members, member: usize, error: RegistryError) -> End {
    members.suspect(member);
    End::Failed(error)
}

/// Watches one key range.
pub(crate) struct Watcher {
    pub(crate) members: Members,
    /// The registry's prefix.
    pub(crate) prefix: String,
    /// The watched key prefix (one service, or one version of it).
    pub(crate) range: String,
    pub(crate) timeout: Duration,
    pub(crate) probe: Probe,
}

impl Watcher {
    /// Reads the range now.
    pub(crate) async fn read(&self) -> Result<Snapshot, RegistryError> {
        Snapshot::read(&self.members, &self.prefix, &self.range, self.timeout).await
    }

    /// Feeds `sink` until its receiver is dropped, starting from `first`.
    pub(crate) async fn run(self, first: Snapshot, sink: Sink) {
        let mut backoff = Backoff::default();
        let mut out = Output {
            sink,
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
                        () = out.closed() => return,
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
        self.probe
            .reached(Hook::WatchRead {
                revision: snapshot.revision(),
            })
            .await;
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(snapshot.revision() + 1);
        let range = self.range.as_str();
        let options = &options;
        let started = self.members.call(
            Patience::request(self.timeout),
            |client: Client| async move {
                let options = options.clone();
                client.watch_client().watch(range, Some(options)).await
            },
        );
        let (member, mut requests, mut responses) = match started.await {
            Ok(answer) => {
                let (requests, responses) = answer.value.split();
                (answer.member, requests, responses)
            }
            Err(e) => return End::Failed(e),
        };
        if out.failing {
            tracing::info!(range = %self.range, endpoint = self.members.endpoint(member),
                "etcd watch restored");
        }
        if out.send_read(&snapshot).await.is_err() {
            return End::Closed;
        }
        // Silence supervision: a progress request after `quiet`, given up
        // after twice that.
        let quiet = self.timeout;
        let mut heard = Instant::now();
        let mut asked = false;
        loop {
            let check_at = heard + if asked { quiet * 2 } else { quiet };
            let response = tokio::select! {
                r = responses.message() => r,
                () = out.closed() => return End::Closed,
                _ = tokio::time::sleep_until(check_at) => {
                    if asked {
                        let error = RegistryError::Unavailable(format!(
                            "etcd watch silent for {:?}", quiet * 2
                        ));
                        return broke(&self.members, member, error);
                    }
                    asked = true;
                    if let Err(e) = requests.request_progress().await {
                        return broke(&self.members, member, registry_error(e));
                    }
                    continue;
                }
            };
            heard = Instant::now();
            asked = false;
            let response = match response {
                Ok(Some(r)) => r,
                Ok(None) => {
                    let error = RegistryError::Unavailable("etcd ended the watch".into());
                    return broke(&self.members, member, error);
                }
                Err(e) => return broke(&self.members, member, registry_error(e)),
            };
            self.members.answered(member);
            if response.compact_revision() > 0 {
                return End::Compacted(response.compact_revision());
            }
            if response.canceled() {
                return broke(
                    &self.members,
                    member,
                    RegistryError::Unavailable(format!(
                        "etcd canceled the watch: {}",
                        response.cancel_reason()
                    )),
                );
            }
            if out
                .send_events(&mut snapshot, response.events())
                .await
                .is_err()
            {
                return End::Closed;
            }
        }
    }
}

/// The receiving end of a watch, and what it was last told.
struct Output {
    sink: Sink,
    /// The set sent last, if no error came after it (whole sets only).
    last: Option<Vec<Instance>>,
    /// Whether the last thing sent was an error.
    failing: bool,
}

impl Output {
    /// Resolves when the receiver is gone.
    async fn closed(&self) {
        match &self.sink {
            Sink::Sets(tx) => tx.closed().await,
            Sink::Changes(tx) => tx.closed().await,
        }
    }

    /// Hands out a freshly read snapshot: the whole set (unless it is the
    /// one sent last, for whole sets). `Err` when the receiver is gone.
    async fn send_read(&mut self, snapshot: &Snapshot) -> Result<(), ()> {
        match &self.sink {
            Sink::Sets(_) => self.send_set(snapshot.instances()).await,
            Sink::Changes(tx) => {
                self.failing = false;
                let set = snapshot.instances();
                tx.send(Ok(WatchEvent::Full(set))).await.map_err(drop)
            }
        }
    }

    /// Applies a batch of watch events to `snapshot` and hands out the
    /// change: the whole new set, or only what changed.
    async fn send_events(&mut self, snapshot: &mut Snapshot, events: &[Event]) -> Result<(), ()> {
        let changes = snapshot.apply(events);
        match &self.sink {
            Sink::Sets(_) => self.send_set(snapshot.instances()).await,
            Sink::Changes(tx) => {
                self.failing = false;
                if changes.is_empty() {
                    return Ok(());
                }
                let event = WatchEvent::Delta {
                    upserted: changes.upserted,
                    removed: changes.removed,
                };
                tx.send(Ok(event)).await.map_err(drop)
            }
        }
    }

    /// Sends `set` unless it is the one sent last.
    async fn send_set(&mut self, set: Vec<Instance>) -> Result<(), ()> {
        self.failing = false;
        if self.last.as_ref() == Some(&set) {
            return Ok(());
        }
        self.last = Some(set.clone());
        match &self.sink {
            Sink::Sets(tx) => tx.send(Ok(set)).await.map_err(drop),
            Sink::Changes(tx) => tx.send(Ok(WatchEvent::Full(set))).await.map_err(drop),
        }
    }

    /// Sends an error; the next set is then sent even if unchanged.
    async fn fail(&mut self, error: RegistryError) -> Result<(), ()> {
        self.failing = true;
        self.last = None;
        match &self.sink {
            Sink::Sets(tx) => tx.send(Err(error)).await.map_err(drop),
            Sink::Changes(tx) => tx.send(Err(error)).await.map_err(drop),
        }
    }
}
