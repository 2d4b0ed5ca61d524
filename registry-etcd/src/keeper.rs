//! The registration keeper: one lease, one key, kept alive until stopped,
//! and re-established whenever etcd loses them.
//!
//! ```text
//!  register(): grant lease L (an ID chosen here), write the key under L
//!       |
//!       v
//!  +-----------+   stream open on member M    +--------------+  keep-alive every P;
//!  | Opening L | ---------------------------> | Renewing L/M |  key checked every P,
//!  +-----------+   (hedged over the members;  +--------------+  written again if missing
//!    |   ^   |      renews L once)              |    |    |
//!    |   |   |                                  |    |    | no answer for
//!    |   |   | L not found        TTL-0 answer: |    |    | min(TTL/2, P + timeout),
//!    |   |   v                    L is gone     |    |    | stream failed or ended:
//!    |   | +--------------------+ <-------------+    |    | M becomes suspect
//!    |   +-| Regranting L -> L' |                    |    v
//!    |     +--------------------+               Opening L (another member first)
//!    |        |           |                          |
//!    |        |           | key held by another      | key held by another
//!    |        |           | registration's lease     | registration's lease
//!    |        |           v                          v
//!    |        |      +--------------------------------------+
//!    |        |      | StandingDown: revoke own leases, end |
//!    |        |      +--------------------------------------+
//!    | etcd   | etcd
//!    v failed v failed
//!  +-----------------------------------------+
//!  | Waiting (backoff), then the state again |
//!  +-----------------------------------------+
//!
//!  any state --stop(Deregister)--> revoke every lease asked for (the key goes with it)
//!  any state --stop(Abandon)-----> end; the key expires with its lease
//! ```
//!
//! P, the keep-alive period, is TTL/4 (at least 50 ms, at most 1 min),
//! within the TTL/3 the registry contract allows. A healthy stream answers
//! every P, so one silent for TTL/2 is broken: it is given up and reopened on
//! another member while the lease still has half its TTL to live, and the
//! lease survives a hung member. etcd-client's keep-alive sends one request
//! per call and its streams do not recover from a broken connection, which
//! is why the keeper drives and supervises them.
//!
//! The key is written only when it is missing (deleted from outside, or
//! lost with an expired lease) or holds one of this keeper's earlier leases,
//! by a transaction that compares before it writes; so a keep-alive hiccup
//! creates no revision and no watch event, and a key deleted from outside is
//! back within P. A key that another registration of the instance took over
//! (under a lease that is not this keeper's) is left to it: the keeper
//! stands down, as the registry contract asks.
//!
//! Every lease the keeper asks etcd for is remembered until it is known to
//! be gone, so a shutdown that interrupts a recovery revokes the new lease as
//! well and leaves nothing behind.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, Error as ClientError, GetOptions, LeaseGrantOptions,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
};
use fyerrpc::instance::instance_key;
use fyerrpc::registry::{StopMode, StopSignal};
use fyerrpc::{Instance, RegistryError};
use tokio::time::{Instant, MissedTickBehavior};

use crate::backoff::Backoff;
use crate::error::is_not_found;
use crate::hooks::{Hook, Probe};
use crate::members::{Members, Patience};
use crate::metrics;

/// Shortest keep-alive period, whatever the TTL.
const MIN_PERIOD: Duration = Duration::from_millis(50);
/// Longest keep-alive period, whatever the TTL.
const MAX_PERIOD: Duration = Duration::from_secs(60);
/// The longest lease etcd grants (`MaxLeaseTTL`), in seconds.
pub(crate) const MAX_TTL_SECS: u64 = 9_000_000_000;

/// A granted lease.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    id: i64,
    ttl: Duration,
}

impl Lease {
    /// How often the lease is renewed and the key checked: a quarter of the
    /// TTL.
    fn period(&self) -> Duration {
        (self.ttl / 4).clamp(MIN_PERIOD, MAX_PERIOD)
    }

    /// How long a keep-alive stream may stay silent before it is taken as
    /// broken: half the TTL, or a period and a request timeout if shorter.
    fn silence_limit(&self, timeout: Duration) -> Duration {
        (self.ttl / 2).min(self.period().saturating_add(timeout))
    }
}

/// The keeper's states (see the [module docs](self)).
enum State {
    /// Open a keep-alive stream for the lease.
    Opening(Lease),
    /// Renew the lease on an open stream until it breaks.
    Renewing(Lease, Box<Stream>),
    /// The lease is gone: grant the new lease `next` and write the key again.
    Regranting { old: Lease, next: i64 },
    /// etcd failed: wait (backoff), then go on.
    Waiting(Box<State>),
    /// Another registration took the key over: give it up and end.
    StandingDown(i64),
}

/// An open keep-alive stream, and the member carrying it.
struct Stream {
    sender: LeaseKeeper,
    answers: LeaseKeepAliveStream,
    member: usize,
}

/// Why renewing stopped.
enum Interrupted {
    /// The stream broke or fell silent; the lease may well live on.
    Broken(String),
    /// etcd says the lease is gone.
    LeaseLost,
    /// Another registration of the instance holds the key, under `0`.
    TakenOver(i64),
}

/// What [`Keeper::ensure_key`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyState {
    /// The key holds the lease.
    Held,
    /// The key was missing (or held an earlier lease of this keeper) and is
    /// written again.
    Written,
    /// Another registration of the instance holds the key, under this lease.
    TakenOver(i64),
}

/// Keeps one instance registered.
pub(crate) struct Keeper {
    members: Members,
    instance: Instance,
    key: String,
    value: String,
    /// Requested lease TTL, whole seconds (etcd's unit).
    ttl_secs: i64,
    timeout: Duration,
    probe: Probe,
    /// Every lease asked for and not known to be gone.
    leases: Mutex<Vec<i64>>,
}

impl Keeper {
    /// A keeper of `instance` under `prefix` with a lease of `ttl` (rounded
    /// up to whole seconds). `InvalidArgument` if etcd cannot grant such a
    /// lease.
    pub(crate) fn new(
        members: Members,
        prefix: &str,
        instance: Instance,
        ttl: Duration,
        timeout: Duration,
        probe: Probe,
    ) -> Result<Self, RegistryError> {
        let secs = ttl.as_millis().div_ceil(1000);
        let ttl_secs = match i64::try_from(secs) {
            Ok(secs) if (1..=MAX_TTL_SECS as i64).contains(&secs) => secs,
            _ => {
                return Err(RegistryError::InvalidArgument(format!(
                    "ttl {ttl:?} is out of etcd's range (1 s to {MAX_TTL_SECS} s)"
                )))
            }
        };
        Ok(Self {
            members,
            key: instance_key(prefix, &instance),
            value: instance.to_json(),
            instance,
            ttl_secs,
            timeout,
            probe,
            leases: Mutex::new(Vec::new()),
        })
    }

    fn leases(&self) -> MutexGuard<'_, Vec<i64>> {
        self.leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn patience(&self) -> Patience {
        Patience::request(self.timeout)
    }

    /// Grants a lease and writes the instance under it. A lease granted but
    /// not used is revoked.
    pub(crate) async fn register(&self) -> Result<Lease, RegistryError> {
        let id = new_lease_id();
        self.leases().push(id);
        let lease = self.grant(id).await?;
        if let Err(e) = self.put(lease).await {
            let _ = self.revoke(id).await;
            return Err(e);
        }
        tracing::debug!(instance = %self.instance, key = %self.key, lease = lease.id,
            ttl = ?lease.ttl, "registered in etcd");
        Ok(lease)
    }

    /// Keeps the registration alive until `stop` resolves, then deregisters
    /// or abandons it.
    pub(crate) async fn run(self, lease: Lease, mut stop: StopSignal) -> Result<(), RegistryError> {
        let mut backoff = Backoff::default();
        let mut state = State::Opening(lease);
        loop {
            if let State::StandingDown(by) = state {
                return self.stand_down(by).await;
            }
            state = tokio::select! {
                mode = stop.stopped() => return self.stop(mode).await,
                next = self.step(state, &mut backoff) => next,
            };
        }
    }

    /// One transition of the state machine.
    async fn step(&self, state: State, backoff: &mut Backoff) -> State {
        match state {
            State::Opening(lease) => match self.open(lease).await {
                Ok(Some(stream)) => State::Renewing(lease, Box::new(stream)),
                Ok(None) => State::Regranting {
                    old: lease,
                    next: new_lease_id(),
                },
                Err(error) => {
                    tracing::debug!(instance = %self.instance, lease = lease.id, %error,
                        "cannot open an etcd keep-alive stream; will retry");
                    State::Waiting(Box::new(State::Opening(lease)))
                }
            },
            State::Renewing(lease, stream) => {
                let member = stream.member;
                let started = Instant::now();
                let interrupted = self.renew(lease, *stream).await;
                backoff.run_ended(started.elapsed());
                match interrupted {
                    Interrupted::Broken(reason) => {
                        self.members.suspect(member);
                        tracing::warn!(instance = %self.instance, lease = lease.id,
                            endpoint = self.members.endpoint(member), %reason,
                            "etcd keep-alive stream broken; reopening it on another member");
                        if started.elapsed() < lease.period() {
                            // Streams that break as soon as they open: do
                            // not spin.
                            State::Waiting(Box::new(State::Opening(lease)))
                        } else {
                            State::Opening(lease)
                        }
                    }
                    Interrupted::LeaseLost => State::Regranting {
                        old: lease,
                        next: new_lease_id(),
                    },
                    Interrupted::TakenOver(by) => State::StandingDown(by),
                }
            }
            State::Regranting { old, next } => match self.regrant(old, next).await {
                Ok(Ok(lease)) => State::Opening(lease),
                Ok(Err(by)) => State::StandingDown(by),
                Err(error) => {
                    tracing::debug!(instance = %self.instance, %error,
                        "etcd still unavailable; will retry");
                    State::Waiting(Box::new(State::Regranting { old, next }))
                }
            },
            State::Waiting(then) => {
                tokio::time::sleep(backoff.next_delay()).await;
                *then
            }
            State::StandingDown(by) => State::StandingDown(by),
        }
    }

    /// Opens a keep-alive stream for `lease` on the first member that
    /// answers (renewing the lease once); `None` if the lease is gone.
    async fn open(&self, lease: Lease) -> Result<Option<Stream>, RegistryError> {
        // In a hurry: the lease may have only half its TTL left.
        let patience = self.patience().hedged_after(lease.ttl / 8);
        let answer = self
            .members
            .call(patience, |client: Client| async move {
                match client.lease_client().keep_alive(lease.id).await {
                    Ok(pair) => Ok(Some(pair)),
                    Err(ClientError::LeaseKeepAliveError(m)) if m.contains("not found") => Ok(None),
                    Err(e) if is_not_found(&e) => Ok(None),
                    // The stream ended before its first answer.
                    Err(ClientError::WatchError(m)) => {
                        Err(ClientError::GRpcStatus(tonic::Status::unavailable(m)))
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        let Some((sender, answers)) = answer.value else {
            return Ok(None);
        };
        let endpoint = self.members.endpoint(answer.member);
        tracing::debug!(instance = %self.instance, lease = lease.id, endpoint,
            "etcd keep-alive stream open");
        self.probe
            .reached(Hook::KeepAliveOpened {
                endpoint,
                lease: lease.id,
            })
            .await;
        Ok(Some(Stream {
            sender,
            answers,
            member: answer.member,
        }))
    }

    /// Renews `lease` every period, and checks the key, until the stream
    /// breaks or the lease is lost.
    async fn renew(&self, lease: Lease, stream: Stream) -> Interrupted {
        let Stream {
            mut sender,
            mut answers,
            member,
        } = stream;
        let period = lease.period();
        let limit = lease.silence_limit(self.timeout);
        // Opening the stream renewed the lease.
        let mut last_answer = Instant::now();
        let mut tick = tokio::time::interval_at(last_answer + period, period);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The key is checked at once (it may have gone while the stream was
        // down), then every period; a check runs beside the renewals.
        let mut check: Option<CheckFuture<'_>> = Some(Box::pin(self.ensure_key(lease)));
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(last_answer + limit) => {
                    return Interrupted::Broken(format!("no answer for {limit:?}"));
                }
                _ = tick.tick() => {
                    if let Err(e) = sender.keep_alive().await {
                        return Interrupted::Broken(e.to_string());
                    }
                    if check.is_none() {
                        check = Some(Box::pin(self.ensure_key(lease)));
                    }
                }
                answer = answers.message() => match answer {
                    Ok(Some(a)) if a.ttl() > 0 => {
                        last_answer = Instant::now();
                        self.members.answered(member);
                    }
                    Ok(Some(_)) => return Interrupted::LeaseLost,
                    Ok(None) => return Interrupted::Broken("etcd closed the stream".into()),
                    Err(e) => return Interrupted::Broken(e.to_string()),
                },
                result = run_check(&mut check) => match result {
                    Ok(KeyState::Written) => {
                        metrics::reregistered();
                        tracing::warn!(instance = %self.instance, key = %self.key,
                            lease = lease.id, "registration key was deleted; written again");
                    }
                    Ok(KeyState::Held) => {}
                    Ok(KeyState::TakenOver(by)) => return Interrupted::TakenOver(by),
                    Err(error) => tracing::debug!(instance = %self.instance, %error,
                        "cannot check the registration key; will retry"),
                },
            }
        }
    }

    /// Checks that the key holds `lease`, and writes it again if it is
    /// missing or holds one of this keeper's earlier leases.
    async fn ensure_key(&self, lease: Lease) -> Result<KeyState, RegistryError> {
        let key = self.key.as_str();
        // A few rounds, in case the key changes between the read and the
        // write (the write compares, so it never clobbers such a change).
        for _ in 0..3 {
            let found = self
                .members
                .call(self.patience(), |client: Client| async move {
                    let options = GetOptions::new().with_keys_only();
                    client.kv_client().get(key, Some(options)).await
                })
                .await?
                .value;
            let unchanged = match found.kvs().first() {
                None => Compare::create_revision(key, CompareOp::Equal, 0),
                Some(kv) if kv.lease() == lease.id => return Ok(KeyState::Held),
                Some(kv) if self.leases().contains(&kv.lease()) => {
                    Compare::mod_revision(key, CompareOp::Equal, kv.mod_revision())
                }
                Some(kv) => return Ok(KeyState::TakenOver(kv.lease())),
            };
            if self.put_when(lease, unchanged).await? {
                return Ok(KeyState::Written);
            }
        }
        Err(RegistryError::Unavailable(format!(
            "the key {key} keeps changing"
        )))
    }

    /// Writes the key under `lease` unless it holds `lease` already
    /// (registering replaces whatever is there).
    async fn put(&self, lease: Lease) -> Result<bool, RegistryError> {
        let other = Compare::lease(self.key.as_str(), CompareOp::NotEqual, lease.id);
        self.put_when(lease, other).await
    }

    /// Writes the key under `lease` if `compare` holds; `true` if it did.
    async fn put_when(&self, lease: Lease, compare: Compare) -> Result<bool, RegistryError> {
        let txn = Txn::new().when([compare]).and_then([TxnOp::put(
            self.key.as_str(),
            self.value.as_str(),
            Some(PutOptions::new().with_lease(lease.id)),
        )]);
        let txn = &txn;
        let answer = self
            .members
            .call(self.patience(), |client: Client| async move {
                client.kv_client().txn(txn.clone()).await
            })
            .await?;
        Ok(answer.value.succeeded())
    }

    /// Grants lease `id` (etcd's answer to a repeated grant of the same ID
    /// counts as granted).
    async fn grant(&self, id: i64) -> Result<Lease, RegistryError> {
        let ttl_secs = self.ttl_secs;
        let answer = self
            .members
            .call(self.patience(), |client: Client| async move {
                let options = LeaseGrantOptions::new().with_id(id);
                match client.lease_client().grant(ttl_secs, Some(options)).await {
                    Ok(granted) => Ok(granted.ttl()),
                    Err(e) if is_lease_exists(&e) => Ok(ttl_secs),
                    Err(e) => Err(e),
                }
            })
            .await?;
        let ttl = u64::try_from(answer.value).unwrap_or(0).max(1);
        Ok(Lease {
            id,
            ttl: Duration::from_secs(ttl),
        })
    }

    /// Grants lease `next` in place of the lost `old` one and writes the key
    /// under it; `Err(lease)` (within `Ok`) if another registration holds the
    /// key under that lease.
    async fn regrant(&self, old: Lease, next: i64) -> Result<Result<Lease, i64>, RegistryError> {
        {
            let mut leases = self.leases();
            if !leases.contains(&next) {
                leases.push(next);
            }
        }
        let lease = self.grant(next).await?;
        if let KeyState::TakenOver(by) = self.ensure_key(lease).await? {
            return Ok(Err(by));
        }
        self.leases().retain(|&id| id != old.id);
        metrics::reregistered();
        tracing::warn!(instance = %self.instance, key = %self.key, old_lease = old.id,
            lease = lease.id, "registration was lost by etcd; registered again");
        self.probe
            .reached(Hook::Reregistered { lease: lease.id })
            .await;
        Ok(Ok(lease))
    }

    /// Gives the key up to the registration holding it under lease `by`:
    /// revokes this keeper's leases (nothing is written under them any more)
    /// and ends.
    async fn stand_down(&self, by: i64) -> Result<(), RegistryError> {
        tracing::warn!(instance = %self.instance, key = %self.key, lease = by,
            "another registration of this instance took its key over; standing down");
        let leases = self.leases().clone();
        for id in leases {
            if let Err(error) = self.revoke(id).await {
                tracing::debug!(instance = %self.instance, lease = id, %error,
                    "cannot revoke the lease; it expires by itself");
            }
        }
        Ok(())
    }

    /// Ends the registration as asked.
    async fn stop(&self, mode: StopMode) -> Result<(), RegistryError> {
        let leases = self.leases().clone();
        match mode {
            StopMode::Abandon => {
                tracing::debug!(instance = %self.instance, ?leases,
                    "registration abandoned; it expires with its lease");
                Ok(())
            }
            StopMode::Deregister => {
                // Revoking a lease deletes the key written under it; a key
                // that another registration took over stays.
                for id in leases {
                    self.revoke(id).await?;
                }
                tracing::debug!(instance = %self.instance, key = %self.key, "deregistered from etcd");
                Ok(())
            }
        }
    }

    /// Revokes a lease; one that already expired (or was never granted) is
    /// fine.
    async fn revoke(&self, id: i64) -> Result<(), RegistryError> {
        self.members
            .call(self.patience(), |client: Client| async move {
                match client.lease_client().revoke(id).await {
                    Err(e) if is_not_found(&e) => Ok(()),
                    other => other.map(drop),
                }
            })
            .await?;
        self.leases().retain(|&l| l != id);
        Ok(())
    }
}

type CheckFuture<'a> = Pin<Box<dyn Future<Output = Result<KeyState, RegistryError>> + Send + 'a>>;

/// Runs the pending key check, if any, and clears it when done; never
/// resolves when there is none.
async fn run_check(check: &mut Option<CheckFuture<'_>>) -> Result<KeyState, RegistryError> {
    let result = match check.as_mut() {
        Some(running) => running.await,
        None => std::future::pending().await,
    };
    *check = None;
    result
}

/// A fresh lease ID: random, so that a grant sent twice (hedged) grants one
/// lease, and positive, as etcd wants.
fn new_lease_id() -> i64 {
    fastrand::i64(1..i64::MAX)
}

/// Whether etcd refused a grant because the lease exists (a repeated grant).
fn is_lease_exists(e: &ClientError) -> bool {
    matches!(e, ClientError::GRpcStatus(s) if s.message().contains("lease already exists"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_and_silence_limits() {
        let lease = |secs| Lease {
            id: 1,
            ttl: Duration::from_secs(secs),
        };
        let timeout = Duration::from_secs(5);
        assert_eq!(lease(2).period(), Duration::from_millis(500));
        assert_eq!(lease(2).silence_limit(timeout), Duration::from_secs(1));
        assert_eq!(lease(10).silence_limit(timeout), Duration::from_secs(5));
        assert_eq!(lease(3600).period(), MAX_PERIOD);
        assert_eq!(lease(3600).silence_limit(timeout), Duration::from_secs(65));
        assert_eq!(lease(MAX_TTL_SECS).period(), MAX_PERIOD);
    }

    #[tokio::test]
    async fn refuses_ttls_etcd_cannot_grant() {
        let members = Members::new(vec!["http://127.0.0.1:1".into()], Default::default());
        let instance = Instance::new("a", "S", "127.0.0.1:1").expect("instance");
        let keeper = |ttl| {
            Keeper::new(
                members.clone(),
                "/p",
                instance.clone(),
                ttl,
                Duration::from_secs(1),
                Probe::default(),
            )
        };
        for absurd in [
            Duration::ZERO,
            Duration::from_secs(MAX_TTL_SECS + 1),
            Duration::MAX,
        ] {
            assert!(matches!(
                keeper(absurd),
                Err(RegistryError::InvalidArgument(_))
            ));
        }
        let rounded = keeper(Duration::from_millis(1500)).expect("valid");
        assert_eq!(rounded.ttl_secs, 2, "rounded up to whole seconds");
        let tiny = keeper(Duration::from_millis(1)).expect("valid");
        assert_eq!(tiny.ttl_secs, 1);
    }

    #[test]
    fn lease_ids_are_positive() {
        assert!((0..1000).map(|_| new_lease_id()).all(|id| id > 0));
    }
}
