//! The example's scenarios: basic calls, failover, circuit breaker,
//! concurrent calls, and a load run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fyerrpc::breaker::BreakerState;
use fyerrpc::client::BreakerEvent;
use fyerrpc::Client;
use tonic::{Request, Status};

use super::config::{ClientArgs, Scenario};
use super::console::Console;
use super::report::{Counter, Phase, Tally};
use crate::proto::{GreetServiceClient, HelloRequest, HelloResponse};

/// Failed calls printed one by one in a long phase before they are only
/// counted.
const SHOWN_FAILURES: u64 = 10;

/// Time between the calls that keep traffic flowing while the breaker
/// scenario waits for every breaker to close (half-open probes are calls).
pub const BREAKER_TICK: Duration = Duration::from_millis(50);

/// Breaker state changes seen since the runner started, with when.
#[derive(Debug, Default)]
pub struct Lifecycle {
    events: Mutex<Vec<(Duration, BreakerEvent)>>,
}

impl Lifecycle {
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn since(&self, from: usize) -> Vec<(Duration, BreakerEvent)> {
        self.lock()
            .get(from..)
            .map(<[_]>::to_vec)
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Duration, BreakerEvent)>> {
        self.events.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs scenarios on one client and keeps their counts.
#[derive(Debug)]
pub struct Runner {
    args: ClientArgs,
    client: Client,
    console: Console,
    greetings: Arc<Counter>,
    phases: Vec<Phase>,
    lifecycle: Arc<Lifecycle>,
    /// Panic-mode picks counted when the last recovery wait ended.
    panic_picks_after_wait: Option<u64>,
}

impl Runner {
    /// A runner over a ready client. Must be called inside a tokio runtime
    /// (it follows the client's breaker events in a task).
    pub fn new(args: ClientArgs, client: Client, console: Console) -> Self {
        let started = Instant::now();
        let lifecycle = Arc::new(Lifecycle::default());
        let mut events = client.breaker_events();
        let log = Arc::clone(&lifecycle);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e) => log.lock().push((started.elapsed(), e)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Self {
            args,
            client,
            console,
            greetings: Arc::default(),
            phases: Vec::new(),
            lifecycle,
            panic_picks_after_wait: None,
        }
    }

    /// Panic-mode picks made after the last recovery wait ended (`None`
    /// when the scenarios had no wait).
    pub fn panic_picks_after_waits(&self) -> Option<u64> {
        self.panic_picks_after_wait
            .map(|at| self.client.stats().panic_picks.saturating_sub(at))
    }

    /// All `SayHello` calls so far.
    pub fn greetings(&self) -> Tally {
        self.greetings.tally()
    }

    /// The phases run so far.
    pub fn into_phases(self) -> Vec<Phase> {
        self.phases
    }

    /// Runs `scenario`. The compare scenario needs a client per policy
    /// ([`super::compare::run`]); given to a runner, it runs one load
    /// phase with the runner's client.
    pub async fn run(&mut self, scenario: Scenario) {
        match scenario {
            Scenario::All => {
                self.basic().await;
                self.failover().await;
                self.breaker().await;
                self.concurrent().await;
            }
            Scenario::Basic => self.basic().await,
            Scenario::Failover => self.failover().await,
            Scenario::Breaker => self.breaker().await,
            Scenario::Concurrent => self.concurrent().await,
            Scenario::Load | Scenario::Compare => self.load().await,
        }
    }

    /// A few plain calls, each printed.
    pub async fn basic(&mut self) {
        self.say("\n=== Basic calls ===");
        let start = self.begin();
        for i in 0..self.args.basic_calls {
            let result = self.hello(format!("User{i}"), None).await;
            self.show(&result);
        }
        self.end("basic", start);
    }

    /// Fast calls that trip the failing server, a wait for its recovery,
    /// and calls that show every server answering again.
    pub async fn failover(&mut self) {
        let n = self.args.failover_calls;
        self.say(format!("\n=== Failover: {n} fast calls ==="));
        let before = self.client.stats();
        let start = self.begin();
        let progress = self.console.progress("failover", n);
        let mut failed = 0;
        for i in 0..n {
            let result = self.hello(format!("User{i}"), None).await;
            progress.step();
            if let Err(status) = &result {
                failed += 1;
                if failed <= SHOWN_FAILURES {
                    progress.finish();
                    self.say(format!("  call {i} failed: {}", status.message()));
                }
            }
        }
        progress.finish();
        let phase = self.end("failover", start);
        let after = self.client.stats();
        self.say(format!(
            "  {} of {} calls succeeded; {} retries, {} failovers",
            phase.ok,
            phase.calls,
            after.retries - before.retries,
            after.failovers - before.failovers
        ));
        for i in &after.instances {
            let old = before.instances.iter().find(|o| o.id == i.id);
            let failures = i.failures - old.map_or(0, |o| o.failures);
            if failures > 0 {
                self.say(format!(
                    "  {} failed {failures} attempts (retried elsewhere)",
                    i.id
                ));
            }
        }

        self.console
            .wait(
                "Waiting for the failing server to recover",
                self.args.recovery_wait,
            )
            .await;
        self.panic_picks_after_wait = Some(self.client.stats().panic_picks);
        self.verify("failover-verify").await;
    }

    /// Whether every breaker of a known instance is closed.
    fn all_closed(&self) -> bool {
        self.client
            .stats()
            .instances
            .iter()
            .all(|i| i.breaker == "closed" || i.breaker == "removed")
    }

    /// Real server failures trip a breaker (server A's failure window, or
    /// B's random failures), time half-opens it and probes close it; the
    /// lifecycle observed is printed with timestamps.
    ///
    /// Calls go one at a time until a breaker opens (at most
    /// `--breaker-calls`); then a call every [`BREAKER_TICK`] keeps traffic
    /// flowing (the half-open probes are such calls) until every breaker is
    /// closed again, for at most `--breaker-wait`. Failed attempts are
    /// retried elsewhere, so the calls themselves should all succeed.
    pub async fn breaker(&mut self) {
        self.say("\n=== Circuit breaker: real failures open it, time and probes close it ===");
        let start = self.begin();
        let from = self.lifecycle.len();
        let opened = |events: &[(Duration, BreakerEvent)]| {
            events
                .iter()
                .find(|(_, e)| e.to == BreakerState::Open)
                .map(|(_, e)| e.instance.clone())
        };
        let mut sent = 0;
        let mut tripped = None;
        while sent < self.args.breaker_calls && tripped.is_none() {
            let _ = self.hello(format!("BreakerUser{}", sent % 100), None).await;
            sent += 1;
            tripped = opened(&self.lifecycle.since(from));
        }
        match &tripped {
            Some(id) => self.say(format!(
                "  {id}'s breaker opened after {sent} calls, on the server's own failures"
            )),
            None => self.say(format!("  no breaker opened in {sent} calls")),
        }
        let limit = Instant::now() + self.args.breaker_wait();
        let progress = self
            .console
            .progress("waiting for every breaker to close", 0);
        while !self.all_closed() && Instant::now() < limit {
            let _ = self.hello(format!("BreakerUser{}", sent % 100), None).await;
            sent += 1;
            progress.step();
            tokio::time::sleep(BREAKER_TICK).await;
        }
        progress.finish();
        self.end("breaker", start);
        self.say("  breaker lifecycle (seconds since the client started):");
        for (at, e) in self.lifecycle.since(from) {
            self.say(format!(
                "    {:>8.3}s  {:<12} {:>9} -> {}",
                at.as_secs_f64(),
                e.instance,
                e.from,
                e.to
            ));
        }
        let states = self.breaker_states();
        if self.all_closed() {
            self.say(format!("  every breaker closed again: {states}"));
        } else {
            self.say(format!(
                "  breakers not all closed after the wait: {states}"
            ));
        }
        self.panic_picks_after_wait = Some(self.client.stats().panic_picks);
        self.verify("breaker-verify").await;
    }

    /// Calls all at once.
    pub async fn concurrent(&mut self) {
        let n = self.args.concurrent_calls;
        self.say(format!("\n=== Concurrent calls: {n} at once ==="));
        let start = self.begin();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let mut greet = GreetServiceClient::new(self.client.clone());
                let counter = Arc::clone(&self.greetings);
                tokio::spawn(async move {
                    let result = say_hello(&mut greet, format!("ConcurrentUser{i}"), None).await;
                    counter.record(result.is_ok());
                    result
                })
            })
            .collect();
        for task in tasks {
            match task.await {
                Ok(result) => self.show(&result),
                Err(e) => self.say(format!("  task failed: {e}")),
            }
        }
        self.end("concurrent", start);
    }

    /// `--requests` calls (or calls for `--duration`) with `--concurrency`
    /// in flight; prints calls/s and the phase's p50/p99.
    pub async fn load(&mut self) {
        let workers = self.args.concurrency;
        let limit = match self.args.duration {
            Some(d) => LoadLimit::For(d),
            None => LoadLimit::Calls(self.args.requests),
        };
        match limit {
            LoadLimit::For(d) => self.say(format!(
                "\n=== Load: calls for {}, {workers} in flight ===",
                humantime::format_duration(d)
            )),
            LoadLimit::Calls(total) => self.say(format!(
                "\n=== Load: {total} calls, {workers} in flight ==="
            )),
        }
        let start = self.begin();
        let mut samples = drive_load(
            &self.client,
            workers,
            limit,
            &self.console,
            "load",
            Some(Arc::clone(&self.greetings)),
        )
        .await;
        if samples.worker_failures > 0 {
            self.say(format!("  {} worker(s) failed", samples.worker_failures));
        }
        let phase = self.end("load", start);
        let secs = self.phases.last().map_or(0.0, |p| p.elapsed_seconds);
        let [p50, p99] = samples.quantiles([0.5, 0.99]);
        self.say(format!(
            "  {} of {} calls succeeded in {secs:.2} s ({:.0} calls/s); {} failed ({:.3} %); \
             p50 {:.2} ms, p99 {:.2} ms",
            phase.ok,
            phase.calls,
            phase.calls as f64 / secs.max(1e-9),
            phase.failed,
            100.0 * phase.failed as f64 / (phase.calls.max(1)) as f64,
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
        ));
    }

    /// Plain calls after a wait, showing which servers answer.
    async fn verify(&mut self, name: &str) {
        let start = self.begin();
        let mut answered: BTreeMap<String, u64> = BTreeMap::new();
        for i in 0..self.args.verify_calls {
            match self.hello(format!("VerifyUser{i}"), None).await {
                Ok(reply) => *answered.entry(server_of(&reply.message)).or_default() += 1,
                Err(status) => self.say(format!("  verify call {i} failed: {}", status.message())),
            }
        }
        let phase = self.end(name, start);
        let by: Vec<String> = answered.iter().map(|(s, n)| format!("{s} x{n}")).collect();
        self.say(format!(
            "  after the wait: {} of {} calls succeeded, answered by {}",
            phase.ok,
            phase.calls,
            if by.is_empty() {
                "nobody".into()
            } else {
                by.join(", ")
            }
        ));
    }

    /// One `SayHello`, counted.
    async fn hello(
        &self,
        name: String,
        deadline: Option<Duration>,
    ) -> Result<HelloResponse, Status> {
        let mut greet = GreetServiceClient::new(self.client.clone());
        let result = say_hello(&mut greet, name, deadline).await;
        self.greetings.record(result.is_ok());
        result
    }

    fn show(&self, result: &Result<HelloResponse, Status>) {
        match result {
            Ok(r) => self.say(format!("  Response: {}", r.message)),
            Err(s) => self.say(format!("  Error: {:?} {}", s.code(), s.message())),
        }
    }

    fn breaker_states(&self) -> String {
        let stats = self.client.stats();
        let states: Vec<String> = stats
            .instances
            .iter()
            .map(|i| format!("{}={}", i.id, i.breaker))
            .collect();
        states.join(", ")
    }

    fn begin(&self) -> (Instant, Tally) {
        (Instant::now(), self.greetings.tally())
    }

    fn end(&mut self, name: &str, (started, before): (Instant, Tally)) -> Tally {
        let calls = self.greetings.tally().since(before);
        self.phases.push(Phase {
            name: name.to_owned(),
            calls,
            elapsed_seconds: started.elapsed().as_secs_f64(),
        });
        calls
    }

    fn say(&self, text: impl AsRef<str>) {
        self.console.line(text);
    }
}

/// One `SayHello` with greeting "Hello" and an optional deadline.
async fn say_hello(
    greet: &mut GreetServiceClient<Client>,
    name: String,
    deadline: Option<Duration>,
) -> Result<HelloResponse, Status> {
    let mut request = Request::new(HelloRequest {
        name,
        greeting: "Hello".into(),
    });
    if let Some(d) = deadline {
        request.set_timeout(d);
    }
    greet.say_hello(request).await.map(|r| r.into_inner())
}

/// How long a load run lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadLimit {
    /// This many calls in all.
    Calls(u64),
    /// Calls until this much time has passed.
    For(Duration),
}

/// What a load run measured.
#[derive(Debug, Default, Clone)]
pub struct LoadSamples {
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed (after the client's retries).
    pub failed: u64,
    /// The latency of every call, failed ones included, unordered.
    pub latencies: Vec<Duration>,
    /// Successful calls by the server that answered (as its greeting
    /// names it).
    pub answered: BTreeMap<String, u64>,
    /// From the first call to the end of the last.
    pub elapsed: Duration,
    /// Worker tasks that panicked (their calls are lost).
    pub worker_failures: u64,
}

impl LoadSamples {
    /// All calls made.
    pub fn calls(&self) -> u64 {
        self.ok + self.failed
    }

    fn merge(&mut self, other: LoadSamples) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.latencies.extend(other.latencies);
        for (server, n) in other.answered {
            *self.answered.entry(server).or_default() += n;
        }
    }

    /// Sorts the latencies (later quantiles are then cheap).
    pub fn sort(&mut self) {
        self.latencies.sort_unstable();
    }

    /// The latencies at quantiles `qs` (each in `0..=1`, nearest rank),
    /// zero when no call was made.
    pub fn quantiles<const N: usize>(&mut self, qs: [f64; N]) -> [Duration; N] {
        self.sort();
        qs.map(|q| nearest_rank(&self.latencies, q))
    }
}

/// The value at quantile `q` of `sorted` by nearest rank (zero if empty).
pub fn nearest_rank(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs `SayHello` calls through `client` with `workers` in flight until
/// `limit`, each call named after one of 100 users (also sent as the
/// client's hash key, so that hashing policies have keys to hash). Every
/// call is counted in `counter` if given; progress is drawn under `label`.
pub async fn drive_load(
    client: &Client,
    workers: u64,
    limit: LoadLimit,
    console: &Console,
    label: &str,
    counter: Option<Arc<Counter>>,
) -> LoadSamples {
    let (total, until) = match limit {
        LoadLimit::Calls(n) => (n, None),
        LoadLimit::For(d) => (u64::MAX, Some(Instant::now() + d)),
    };
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(console.progress(label, if until.is_some() { 0 } else { total }));
    let tasks: Vec<_> = (0..workers.min(total))
        .map(|_| {
            let mut greet = GreetServiceClient::new(client.clone());
            let (next, counter, progress) =
                (Arc::clone(&next), counter.clone(), Arc::clone(&progress));
            tokio::spawn(async move {
                let mut mine = LoadSamples::default();
                loop {
                    if until.is_some_and(|u| Instant::now() >= u) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let user = format!("LoadUser{}", i % 100);
                    let t0 = Instant::now();
                    let result = keyed_hello(&mut greet, user).await;
                    mine.latencies.push(t0.elapsed());
                    match &result {
                        Ok(reply) => {
                            mine.ok += 1;
                            *mine.answered.entry(server_of(&reply.message)).or_default() += 1;
                        }
                        Err(_) => mine.failed += 1,
                    }
                    if let Some(c) = &counter {
                        c.record(result.is_ok());
                    }
                    progress.step();
                }
                mine
            })
        })
        .collect();
    let mut samples = LoadSamples::default();
    for task in tasks {
        match task.await {
            Ok(mine) => samples.merge(mine),
            Err(e) => {
                tracing::warn!(error = %e, "load worker failed");
                samples.worker_failures += 1;
            }
        }
    }
    progress.finish();
    samples.elapsed = started.elapsed();
    samples
}

/// One `SayHello` for `name`, with `name` as the hash key.
async fn keyed_hello(
    greet: &mut GreetServiceClient<Client>,
    name: String,
) -> Result<HelloResponse, Status> {
    let mut request = Request::new(HelloRequest {
        name,
        greeting: "Hello".into(),
    });
    if let Ok(key) = request.get_ref().name.parse() {
        request
            .metadata_mut()
            .insert(fyerrpc::client::DEFAULT_HASH_HEADER, key);
    }
    greet.say_hello(request).await.map(|r| r.into_inner())
}

/// The server id in a greeting (`"... (from server-A)"`), or `unknown`.
fn server_of(message: &str) -> String {
    message
        .rsplit_once("(from ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or("unknown")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_answering_server() {
        assert_eq!(server_of("Hello, Ann! (from server-A)"), "server-A");
        assert_eq!(server_of("Hi"), "unknown");
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let ms = Duration::from_millis;
        let mut s = LoadSamples {
            latencies: (1..=100).rev().map(ms).collect(),
            ..LoadSamples::default()
        };
        assert_eq!(
            s.quantiles([0.0, 0.5, 0.9, 0.99, 1.0]),
            [ms(1), ms(50), ms(90), ms(99), ms(100)]
        );
        assert_eq!(nearest_rank(&[], 0.5), Duration::ZERO);
        assert_eq!(nearest_rank(&[ms(7)], 0.99), ms(7));
    }
}
