//! The example's scenarios: basic calls, failover, circuit breaker,
//! concurrent calls, and a load run.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fyerrpc::Client;
use tonic::{Request, Status};

use super::config::{ClientArgs, Scenario};
use super::console::Console;
use super::report::{Counter, Phase, Tally};
use crate::proto::{GreetServiceClient, HelloRequest, HelloResponse};

/// Failed calls printed one by one in a long phase before they are only
/// counted.
const SHOWN_FAILURES: u64 = 10;

/// The smallest deadline a call is given (gRPC cannot send zero).
pub const MIN_DEADLINE: Duration = Duration::from_micros(1);

/// Calls the breaker scenario sends at once.
pub const BREAKER_BURST: u64 = 20;

/// Runs scenarios on one client and keeps their counts.
#[derive(Debug)]
pub struct Runner {
    args: ClientArgs,
    client: Client,
    console: Console,
    greetings: Arc<Counter>,
    phases: Vec<Phase>,
}

impl Runner {
    /// A runner over a ready client.
    pub fn new(args: ClientArgs, client: Client, console: Console) -> Self {
        Self {
            args,
            client,
            console,
            greetings: Arc::default(),
            phases: Vec::new(),
        }
    }

    /// All `SayHello` calls so far.
    pub fn greetings(&self) -> Tally {
        self.greetings.tally()
    }

    /// The phases run so far.
    pub fn into_phases(self) -> Vec<Phase> {
        self.phases
    }

    /// Runs `scenario`.
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
            Scenario::Load => self.load().await,
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
        self.verify("failover-verify").await;
    }

    /// Calls under a tiny deadline until a circuit breaker opens, a wait
    /// for it to half-open, and calls that close it again.
    ///
    /// Each call gets `--breaker-deadline` of its own: it is sent, and an
    /// instance that does not answer within it has failed that call, which
    /// counts against it. (A call whose deadline has already passed is not
    /// sent at all, so it counts against no instance.)
    pub async fn breaker(&mut self) {
        let deadline = self.args.breaker_deadline;
        self.say(format!(
            "\n=== Circuit breaker: calls under a {} deadline ===",
            humantime::format_duration(deadline)
        ));
        let trips = self.client.stats().breaker_trips;
        let start = self.begin();
        let mut tripped = false;
        // Bursts of concurrent calls: the instances cannot answer them all
        // within the deadline, so time-outs pile up against them.
        let left = deadline.max(MIN_DEADLINE);
        let mut sent = 0;
        while sent < self.args.breaker_calls && !tripped {
            let burst = BREAKER_BURST.min(self.args.breaker_calls - sent);
            let calls = (0..burst).map(|_| self.hello("CircuitBreakerTest".into(), Some(left)));
            let results = futures_util::future::join_all(calls).await;
            for (k, result) in results.iter().enumerate() {
                if let Err(status) = result {
                    self.say(format!(
                        "  call {}: {:?} {}",
                        sent + k as u64,
                        status.code(),
                        status.message()
                    ));
                }
            }
            sent += burst;
            tripped = self.client.stats().breaker_trips > trips;
        }
        self.end("breaker", start);
        let states = self.breaker_states();
        if tripped {
            self.say(format!("  circuit breaker opened: {states}"));
        } else {
            self.say(format!("  no breaker opened: {states}"));
        }
        self.console
            .wait(
                "Waiting for open breakers to half-open",
                self.args.breaker_wait(),
            )
            .await;
        self.verify("breaker-verify").await;
        let states = self.breaker_states();
        self.say(format!("  breakers now: {states}"));
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

    /// `--requests` calls with `--concurrency` in flight.
    pub async fn load(&mut self) {
        let (total, workers) = (self.args.requests, self.args.concurrency);
        self.say(format!(
            "\n=== Load: {total} calls, {workers} in flight ==="
        ));
        let start = self.begin();
        let next = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(self.console.progress("load", total));
        let tasks: Vec<_> = (0..workers.min(total))
            .map(|_| {
                let mut greet = GreetServiceClient::new(self.client.clone());
                let (next, counter, progress) = (
                    Arc::clone(&next),
                    Arc::clone(&self.greetings),
                    Arc::clone(&progress),
                );
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            break;
                        }
                        let result =
                            say_hello(&mut greet, format!("LoadUser{}", i % 100), None).await;
                        counter.record(result.is_ok());
                        progress.step();
                    }
                })
            })
            .collect();
        for task in tasks {
            if let Err(e) = task.await {
                self.say(format!("  worker failed: {e}"));
            }
        }
        progress.finish();
        let phase = self.end("load", start);
        let secs = self.phases.last().map_or(0.0, |p| p.elapsed_seconds);
        self.say(format!(
            "  {} of {} calls succeeded in {secs:.2} s ({:.0} calls/s)",
            phase.ok,
            phase.calls,
            phase.calls as f64 / secs.max(1e-9)
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
}
