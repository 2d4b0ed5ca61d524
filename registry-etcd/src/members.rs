//! The cluster's members, each reached through its own etcd client, and the
//! hedged requests spread over them.
//!
//! The etcd client balances one channel over all endpoints and keeps sending
//! requests to a member that hangs (connections open, nothing answers). Here
//! every endpoint has a client of its own, and [`Members::call`] picks the
//! member a request goes to: healthy members first, in turn, then the
//! suspects, those whose suspicion ends soonest first.
//!
//! A request that has no answer after the hedge delay is *hedged*: the same
//! request goes to the next member while the first attempt keeps running,
//! and the first answer wins. Nothing is cancelled and sent again, so a slow
//! but healthy request still completes. Every request this crate makes has
//! the same effect when applied twice (reads, keep-alives, revocations,
//! grants of a lease ID chosen here, transactions that compare before they
//! write), so a hedge never applies a change twice.
//!
//! A member's health is a small state machine:
//!
//! ```text
//!              attempt failed (unreachable), lost a hedge race,
//!              or its stream (keep-alive, watch) fell silent
//!   +---------+ ----------------------------------------------> +-------------+
//!   | Healthy |                                                 | Suspect(n)  | --+ failed again:
//!   +---------+ <---------------------------------------------- +-------------+ <-+ n + 1
//!                  any answer from it
//! ```
//!
//! A suspect is tried after every healthy member; its suspicion lasts 1 s
//! after the first failure, doubling up to 30 s, after which it is picked
//! like a healthy member again (and, if it still hangs, costs one hedge
//! delay).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, Error as ClientError};
use futures_util::stream::{FuturesUnordered, StreamExt};
use fyerrpc::RegistryError;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::error::{is_unavailable, registry_error};

/// Shortest pause before another round of attempts after every member
/// failed.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Longest such pause.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How long a member stays suspect after its first failure.
const FIRST_SUSPICION: Duration = Duration::from_secs(1);
/// The longest suspicion.
const MAX_SUSPICION: Duration = Duration::from_secs(30);
/// Hedge delay bounds.
const MIN_HEDGE: Duration = Duration::from_millis(50);
const MAX_HEDGE: Duration = Duration::from_secs(1);

/// How long a request may take, and when it is hedged.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Patience {
    /// Give up after this.
    pub(crate) timeout: Duration,
    /// Send the request to another member too when no answer came after
    /// this.
    pub(crate) hedge_after: Duration,
}

impl Patience {
    /// The patience of an ordinary request: hedged after an eighth of the
    /// timeout (between 50 ms and 1 s).
    pub(crate) fn request(timeout: Duration) -> Self {
        Self {
            timeout,
            hedge_after: (timeout / 8).clamp(MIN_HEDGE, MAX_HEDGE),
        }
    }

    /// This patience with a shorter hedge delay, for requests in a hurry.
    pub(crate) fn hedged_after(self, delay: Duration) -> Self {
        Self {
            hedge_after: delay.clamp(MIN_HEDGE, self.hedge_after),
            ..self
        }
    }
}

/// A member's answer.
pub(crate) struct Answer<T> {
    pub(crate) value: T,
    /// Which member gave it.
    pub(crate) member: usize,
}

/// The members of one cluster. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Members {
    inner: Arc<Inner>,
}

struct Inner {
    members: Vec<Member>,
    options: ConnectOptions,
    /// Where the next pick starts among the healthy members.
    turn: AtomicUsize,
}

struct Member {
    endpoint: String,
    /// Connected on first use; a failed connection is tried again next time.
    client: OnceCell<Client>,
    health: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    /// Failures since the last answer.
    failures: u32,
    /// Until when the member is tried after the others.
    suspect_until: Option<Instant>,
}

impl Member {
    fn health(&self) -> MutexGuard<'_, Health> {
        // The lock guards plain data: a panic elsewhere leaves it usable.
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn client(&self, options: &ConnectOptions) -> Result<Client, ClientError> {
        let client = self
            .client
            .get_or_try_init(|| Client::connect([self.endpoint.as_str()], Some(options.clone())))
            .await?;
        Ok(client.clone())
    }
}

impl std::fmt::Debug for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoints: Vec<&str> = self
            .inner
            .members
            .iter()
            .map(|m| m.endpoint.as_str())
            .collect();
        f.debug_struct("Members")
            .field("endpoints", &endpoints)
            .finish_non_exhaustive()
    }
}

impl Members {
    /// One (not yet connected) client per endpoint.
    pub(crate) fn new(endpoints: Vec<String>, options: ConnectOptions) -> Self {
        let members = endpoints
            .into_iter()
            .map(|endpoint| Member {
                endpoint,
                client: OnceCell::new(),
                health: Mutex::new(Health::default()),
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                members,
                options,
                turn: AtomicUsize::new(0),
            }),
        }
    }

    /// The endpoint of member `index`.
    pub(crate) fn endpoint(&self, index: usize) -> &str {
        self.inner
            .members
            .get(index)
            .map_or("", |m| m.endpoint.as_str())
    }

    /// Notes that member `index` answered.
    pub(crate) fn answered(&self, index: usize) {
        if let Some(member) = self.inner.members.get(index) {
            *member.health() = Health::default();
        }
    }

    /// Notes that member `index` failed or fell silent: it is tried after the
    /// others for a while.
    pub(crate) fn suspect(&self, index: usize) {
        let Some(member) = self.inner.members.get(index) else {
            return;
        };
        let mut health = member.health();
        let doubling = 2u32.saturating_pow(health.failures.min(16));
        let suspicion = FIRST_SUSPICION.saturating_mul(doubling).min(MAX_SUSPICION);
        health.failures = health.failures.saturating_add(1);
        health.suspect_until = Some(Instant::now() + suspicion);
        if health.failures == 1 {
            tracing::debug!(endpoint = %member.endpoint, ?suspicion, "etcd member suspect");
        }
    }

    /// The members in the order a request tries them.
    fn order(&self) -> Vec<usize> {
        let now = Instant::now();
        let n = self.inner.members.len();
        let start = self.inner.turn.fetch_add(1, Ordering::Relaxed) % n.max(1);
        let mut healthy = Vec::with_capacity(n);
        let mut suspects = Vec::new();
        for i in (0..n).map(|k| (start + k) % n) {
            match self.inner.members[i].health().suspect_until {
                Some(until) if until > now => suspects.push((until, i)),
                _ => healthy.push(i),
            }
        }
        suspects.sort();
        healthy.extend(suspects.into_iter().map(|(_, i)| i));
        healthy
    }

    /// Runs one request, made by `attempt` for a member's client, until a
    /// member answers it, it fails for another reason than availability, or
    /// the patience runs out. See the [module docs](self) for how attempts
    /// are spread and hedged.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        patience: Patience,
        attempt: F,
    ) -> Result<Answer<T>, RegistryError>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let deadline = Instant::now() + patience.timeout;
        let n = self.inner.members.len();
        let options = &self.inner.options;
        let attempt = &attempt;
        let mut running = FuturesUnordered::new();
        // Members with an attempt running, and when it started.
        let mut in_flight: Vec<Option<Instant>> = vec![None; n];
        // Members to try in this round.
        let mut queue = self.order().into_iter();
        let mut pause = RETRY_PAUSE;
        let mut last: Option<ClientError> = None;
        let mut hedge_at = Instant::now();
        loop {
            let now = Instant::now();
            if running.is_empty() || now >= hedge_at {
                // Start an attempt on the next member of this round.
                let next = queue.by_ref().find(|&i| in_flight[i].is_none());
                if let Some(i) = next {
                    in_flight[i] = Some(now);
                    let member = &self.inner.members[i];
                    running.push(async move {
                        let answer = async {
                            let client = member.client(options).await?;
                            attempt(client).await
                        };
                        (i, answer.await)
                    });
                    hedge_at = now + patience.hedge_after;
                } else if running.is_empty() {
                    // Every member failed this round: pause, then start over.
                    let resume = (now + pause).min(deadline);
                    tokio::time::sleep_until(resume).await;
                    if Instant::now() >= deadline {
                        return Err(self.gave_up(patience.timeout, last, &in_flight));
                    }
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                    queue = self.order().into_iter();
                    continue;
                } else {
                    // Every member has an attempt running: wait for them.
                    hedge_at = deadline;
                }
            }
            tokio::select! {
                Some((i, result)) = running.next() => {
                    let started = in_flight[i].take();
                    match result {
                        Ok(value) => {
                            self.answered(i);
                            // Attempts that started before this one and are
                            // still unanswered lost to a hedge.
                            for (j, s) in in_flight.iter().enumerate() {
                                if s.is_some_and(|s| started.is_some_and(|t| s < t)) {
                                    self.suspect(j);
                                }
                            }
                            return Ok(Answer { value, member: i });
                        }
                        Err(e) if is_unavailable(&e) => {
                            tracing::trace!(endpoint = %self.endpoint(i), error = %e,
                                "etcd request failed; trying another member");
                            self.suspect(i);
                            last = Some(e);
                            // Move on to the next member at once.
                            hedge_at = Instant::now();
                        }
                        Err(e) => return Err(registry_error(e)),
                    }
                }
                _ = tokio::time::sleep_until(hedge_at), if !running.is_empty() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(self.gave_up(patience.timeout, last, &in_flight));
                }
            }
        }
    }

    /// The error of a request that ran out of patience; members that never
    /// answered it become suspect.
    fn gave_up(
        &self,
        timeout: Duration,
        last: Option<ClientError>,
        in_flight: &[Option<Instant>],
    ) -> RegistryError {
        for (i, started) in in_flight.iter().enumerate() {
            if started.is_some() {
                self.suspect(i);
            }
        }
        match last {
            Some(e) => registry_error(e),
            None => RegistryError::Unavailable(format!("etcd did not answer within {timeout:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Members {
        let endpoints = (0..n)
            .map(|i| format!("http://127.0.0.1:{}", 1 + i))
            .collect();
        Members::new(endpoints, ConnectOptions::new())
    }

    #[test]
    fn suspects_come_last_and_answers_clear_them() {
        let m = members(3);
        m.suspect(0);
        for _ in 0..6 {
            assert_eq!(m.order().last(), Some(&0));
        }
        m.suspect(2);
        m.suspect(2);
        let order = m.order();
        assert_eq!(order[0], 1);
        assert_eq!(&order[1..], [0, 2], "the longer suspicion last");
        m.answered(0);
        m.answered(2);
        let firsts: std::collections::BTreeSet<usize> = (0..6).map(|_| m.order()[0]).collect();
        assert_eq!(firsts.len(), 3, "healthy members take turns");
    }

    fn unavailable() -> ClientError {
        ClientError::GRpcStatus(tonic::Status::unavailable("down"))
    }

    /// A patience with a short hedge delay.
    fn patience(timeout_ms: u64) -> Patience {
        Patience {
            timeout: Duration::from_millis(timeout_ms),
            hedge_after: Duration::from_millis(50),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_request_to_a_lone_member_completes() {
        let m = members(1);
        let attempts = AtomicUsize::new(0);
        let answer = m
            .call(patience(5_000), |_| {
                attempts.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    Ok::<_, ClientError>("slow")
                }
            })
            .await
            .expect("answered");
        assert_eq!(answer.value, "slow");
        assert_eq!(attempts.into_inner(), 1, "never cancelled and sent again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hedge_leaves_the_first_attempt_running() {
        let m = members(2);
        let attempts = AtomicUsize::new(0);
        // The first attempt answers after four hedge delays, the hedge never.
        let answer = m
            .call(patience(5_000), |_| {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Ok::<_, ClientError>(n)
                    } else {
                        std::future::pending().await
                    }
                }
            })
            .await
            .expect("answered");
        assert_eq!(answer.value, 0, "the first attempt's answer");
        assert_eq!(attempts.into_inner(), 2, "one hedge");
        assert_eq!(answer.member, 0, "from the member tried first");
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_member_is_skipped_by_the_hedge_and_afterwards() {
        let m = members(3);
        let hung = m.order()[1]; // the turn moves on: this one comes first next
        let attempts = AtomicUsize::new(0);
        let answer = m
            .call(patience(5_000), |_| {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        std::future::pending().await
                    } else {
                        Ok::<_, ClientError>(n)
                    }
                }
            })
            .await
            .expect("answered by the hedge");
        assert_ne!(answer.member, hung);
        assert_eq!(attempts.into_inner(), 2);
        for _ in 0..6 {
            assert_ne!(m.order()[0], hung, "the hung member is tried last");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_members_are_passed_over_then_retried_until_the_timeout() {
        let m = members(2);
        let attempts = AtomicUsize::new(0);
        let answer = m
            .call(patience(5_000), |_| {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                std::future::ready(if n < 5 { Err(unavailable()) } else { Ok(n) })
            })
            .await
            .expect("answered once a member is back");
        assert_eq!(answer.value, 5);

        let started = Instant::now();
        let error = m
            .call(patience(1_000), |_| {
                std::future::ready(Err::<(), _>(unavailable()))
            })
            .await
            .err()
            .expect("gave up");
        assert!(matches!(error, RegistryError::Unavailable(ref m) if m.contains("down")));
        assert!(started.elapsed() >= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_are_not_retried() {
        let m = members(2);
        let attempts = AtomicUsize::new(0);
        let error = m
            .call(patience(1_000), |_| {
                attempts.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Err::<(), _>(ClientError::InvalidArgs("no".into())))
            })
            .await
            .err()
            .expect("failed");
        assert!(matches!(error, RegistryError::InvalidArgument(_)));
        assert_eq!(attempts.into_inner(), 1);
    }

    #[test]
    fn hedge_delay_is_bounded() {
        let p = Patience::request(Duration::from_secs(5));
        assert_eq!(p.hedge_after, Duration::from_millis(625));
        assert_eq!(
            Patience::request(Duration::from_secs(60)).hedge_after,
            MAX_HEDGE
        );
        assert_eq!(
            Patience::request(Duration::from_millis(10)).hedge_after,
            MIN_HEDGE
        );
        let hurried = p.hedged_after(Duration::from_millis(100));
        assert_eq!(hurried.hedge_after, Duration::from_millis(100));
        assert_eq!(p.hedged_after(Duration::ZERO).hedge_after, MIN_HEDGE);
    }
}
