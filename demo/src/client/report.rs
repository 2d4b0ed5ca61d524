//! The final metrics: the client's stats plus the scenarios' own counts, as
//! a table or one JSON object.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fyerrpc::metrics::Stats;
use serde::Serialize;

/// Calls counted by the scenarios themselves.
#[derive(Debug, Default)]
pub struct Counter {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Counter {
    /// Counts one call.
    pub fn record(&self, ok: bool) {
        let c = if ok { &self.ok } else { &self.failed };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn tally(&self) -> Tally {
        let ok = self.ok.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        Tally {
            calls: ok + failed,
            ok,
            failed,
        }
    }
}

/// Calls, successes and failures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Calls made.
    pub calls: u64,
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed (after any retries).
    pub failed: u64,
}

impl Tally {
    /// The counts between `earlier` and `self`.
    pub fn since(self, earlier: Tally) -> Tally {
        Tally {
            calls: self.calls.saturating_sub(earlier.calls),
            ok: self.ok.saturating_sub(earlier.ok),
            failed: self.failed.saturating_sub(earlier.failed),
        }
    }
}

/// One phase of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// The phase, e.g. `failover` or `failover-verify`.
    pub name: String,
    /// Its `SayHello` calls.
    #[serde(flatten)]
    pub calls: Tally,
    /// How long it took, in seconds.
    pub elapsed_seconds: f64,
}

/// Everything `greet-client` reports at the end.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario run.
    pub scenario: String,
    /// The balancing policy (`default` for the client's).
    pub balancer: String,
    /// All `SayHello` calls of the run, as the scenarios counted them.
    pub greetings: Tally,
    /// The phases, in order.
    pub phases: Vec<Phase>,
    /// Panic-mode picks made after the last recovery wait (`None` when the
    /// scenario has no wait). Zero once the cluster has recovered.
    pub panic_picks_after_waits: Option<u64>,
    /// The client's stats: totals, retries, failovers, breaker trips,
    /// latency (seconds), per-instance counts.
    #[serde(flatten)]
    pub stats: Stats,
}

impl Report {
    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        // A struct of numbers, strings and vectors always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The report as a readable table.
    pub fn to_table(&self) -> String {
        let s = &self.stats;
        let mut t = String::new();
        let _ = writeln!(t, "\n=== Failover Metrics ===");
        let rows = [
            (
                "Scenario",
                format!("{} (balancer: {})", self.scenario, self.balancer),
            ),
            (
                "Total requests",
                format!(
                    "{} (Success: {}, Failure: {})",
                    s.requests, s.successes, s.failures
                ),
            ),
            ("Retry count", s.retries.to_string()),
            ("Failover count", s.failovers.to_string()),
            ("Breaker trips", s.breaker_trips.to_string()),
            (
                "Panic-mode picks",
                match self.panic_picks_after_waits {
                    Some(after) => format!("{} ({after} after the recovery waits)", s.panic_picks),
                    None => s.panic_picks.to_string(),
                },
            ),
            ("Transparent retries", s.transparent_retries.to_string()),
            ("Retries over budget", s.budget_exhausted.to_string()),
            ("Avg response time", ms(s.avg_latency)),
            ("p50 response time", ms(s.p50_latency)),
            ("p99 response time", ms(s.p99_latency)),
            (
                "SayHello calls",
                format!(
                    "{} (ok {}, failed {})",
                    self.greetings.calls, self.greetings.ok, self.greetings.failed
                ),
            ),
        ];
        for (k, v) in rows {
            let _ = writeln!(t, "{k:<20} {v}");
        }
        let _ = writeln!(t, "\nPhases");
        let _ = writeln!(
            t,
            "{:<18} {:>7} {:>7} {:>7} {:>9}",
            "phase", "calls", "ok", "failed", "seconds"
        );
        for p in &self.phases {
            let _ = writeln!(
                t,
                "{:<18} {:>7} {:>7} {:>7} {:>9.2}",
                p.name, p.calls.calls, p.calls.ok, p.calls.failed, p.elapsed_seconds
            );
        }
        let _ = writeln!(t, "\nCalls per instance");
        let _ = writeln!(
            t,
            "{:<22} {:>8} {:>8} {:>8}  {:<10} {:<8} eligible",
            "instance", "attempts", "success", "failure", "breaker", "healthy"
        );
        for i in &s.instances {
            let eligible = if i.ejected_for.is_empty() {
                "yes".to_owned()
            } else {
                format!("no ({})", i.ejected_for.join(", "))
            };
            let _ = writeln!(
                t,
                "{:<22} {:>8} {:>8} {:>8}  {:<10} {:<8} {eligible}",
                i.id,
                i.attempts,
                i.successes,
                i.failures,
                i.breaker,
                if i.healthy { "yes" } else { "no" }
            );
        }
        t
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}
