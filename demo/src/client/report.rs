//! The final metrics: the client's stats plus the scenarios' own counts, as
//! a table or one JSON object.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fyerrpc::metrics::Stats;
use serde::{Deserialize, Serialize};

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

/// Phases in which failed calls are part of the demonstration: none. Even
/// the breaker phase, which trips a breaker on a server's own failures,
/// expects every call to succeed (failed attempts are retried on another
/// instance). A phase added to show failures is listed here.
pub const PHASES_WITH_EXPECTED_FAILURES: &[&str] = &[];

/// One phase of a scenario.
///
/// In JSON it carries `failures_expected` as well (see
/// [`Phase::failures_expected`]), so that a reader can tell a demonstrated
/// failure from a defect without knowing the scenarios.
#[derive(Debug, Clone, Serialize)]
#[serde(into = "PhaseRecord")]
pub struct Phase {
    /// The phase, e.g. `failover` or `failover-verify`.
    pub name: String,
    /// Its `SayHello` calls.
    #[serde(flatten)]
    pub calls: Tally,
    /// How long it took, in seconds.
    pub elapsed_seconds: f64,
}

impl Phase {
    /// Whether failed calls are expected in this phase (it is one of
    /// [`PHASES_WITH_EXPECTED_FAILURES`]).
    pub fn failures_expected(&self) -> bool {
        PHASES_WITH_EXPECTED_FAILURES.contains(&self.name.as_str())
    }

    /// Whether the phase had failed calls where none are expected.
    pub fn failed_unexpectedly(&self) -> bool {
        self.calls.failed > 0 && !self.failures_expected()
    }
}

/// A [`Phase`] as it is written in JSON.
#[derive(Serialize)]
struct PhaseRecord {
    name: String,
    #[serde(flatten)]
    calls: Tally,
    elapsed_seconds: f64,
    failures_expected: bool,
}

impl From<Phase> for PhaseRecord {
    fn from(p: Phase) -> Self {
        Self {
            failures_expected: p.failures_expected(),
            name: p.name,
            calls: p.calls,
            elapsed_seconds: p.elapsed_seconds,
        }
    }
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
            (
                "Hedged copies",
                format!(
                    "{} sent ({:.1}% of calls), {} won, {} attempts cancelled",
                    s.hedges_sent,
                    percent(s.hedges_sent, s.requests),
                    s.hedges_won,
                    s.hedges_cancelled
                ),
            ),
            ("Avg response time", ms(s.avg_latency)),
            ("p50 response time", ms(s.p50_latency)),
            ("p99 response time", ms(s.p99_latency)),
            ("Max response time", ms(s.max_latency)),
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

/// One phase as [`check_json`] reads it from a JSON report.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PhaseCheck {
    /// The phase.
    pub name: String,
    /// Its calls.
    pub calls: u64,
    /// Its failed calls.
    pub failed: u64,
    /// Whether failed calls are expected in it.
    pub failures_expected: bool,
}

impl std::fmt::Display for PhaseCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} of {} calls failed)",
            self.name, self.failed, self.calls
        )
    }
}

/// The part of a JSON report that [`check_json`] reads.
#[derive(Debug, Deserialize)]
struct ReportPhases {
    phases: Vec<PhaseCheck>,
    #[serde(default)]
    instances: Vec<InstanceCheck>,
    #[serde(default)]
    panic_picks_after_waits: Option<u64>,
}

/// An instance of a JSON report, as [`check_json`] reads it.
#[derive(Debug, Deserialize)]
struct InstanceCheck {
    id: String,
    breaker: String,
}

/// Why a JSON report does not pass [`check_json`].
#[derive(Debug, thiserror::Error)]
pub enum ReportCheckError {
    /// The text is not a `greet-client --output json` report.
    #[error("not a greet-client JSON report: {0}")]
    Json(#[from] serde_json::Error),
    /// The report lists no phase: the client ran nothing.
    #[error("the report lists no phase")]
    NoPhases,
    /// Calls failed in phases where every call is expected to succeed.
    #[error("failed calls in phases where none are expected: {}", list(.0))]
    UnexpectedFailures(Vec<PhaseCheck>),
    /// The run ended with breakers not closed (instance=state).
    #[error("breakers not closed at the end of the run: {}", .0.join(", "))]
    BreakersNotClosed(Vec<String>),
    /// Picks were made in panic mode after the cluster had recovered.
    #[error("{0} panic-mode picks after the recovery waits (expected none)")]
    PanicAfterWaits(u64),
}

fn list(phases: &[PhaseCheck]) -> String {
    phases
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a report printed by `greet-client --output json`: it must list at
/// least one phase, no phase whose `failures_expected` is false may have
/// failed calls, every instance's breaker must be closed at the end, and no
/// pick may have been made in panic mode after the recovery waits. Returns
/// the phases on success.
///
/// ```
/// use fyerrpc_demo::client::report::{check_json, ReportCheckError};
///
/// let ok = r#"{"phases":[{"name":"breaker","calls":5,"ok":2,"failed":3,
///     "elapsed_seconds":0.1,"failures_expected":true}]}"#;
/// assert_eq!(check_json(ok).unwrap().len(), 1);
///
/// let bad = r#"{"phases":[{"name":"basic","calls":3,"ok":2,"failed":1,
///     "elapsed_seconds":0.1,"failures_expected":false}]}"#;
/// assert!(matches!(check_json(bad), Err(ReportCheckError::UnexpectedFailures(_))));
/// ```
pub fn check_json(text: &str) -> Result<Vec<PhaseCheck>, ReportCheckError> {
    let report: ReportPhases = serde_json::from_str(text.trim())?;
    if report.phases.is_empty() {
        return Err(ReportCheckError::NoPhases);
    }
    let unexpected: Vec<PhaseCheck> = report
        .phases
        .iter()
        .filter(|p| p.failed > 0 && !p.failures_expected)
        .cloned()
        .collect();
    if !unexpected.is_empty() {
        return Err(ReportCheckError::UnexpectedFailures(unexpected));
    }
    let open: Vec<String> = report
        .instances
        .iter()
        .filter(|i| i.breaker != "closed" && i.breaker != "removed")
        .map(|i| format!("{}={}", i.id, i.breaker))
        .collect();
    if !open.is_empty() {
        return Err(ReportCheckError::BreakersNotClosed(open));
    }
    match report.panic_picks_after_waits {
        Some(n) if n > 0 => Err(ReportCheckError::PanicAfterWaits(n)),
        _ => Ok(report.phases),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// `part` as a percentage of `whole` (0 when `whole` is 0).
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: &str, ok: u64, failed: u64) -> Phase {
        Phase {
            name: name.into(),
            calls: Tally {
                calls: ok + failed,
                ok,
                failed,
            },
            elapsed_seconds: 0.5,
        }
    }

    fn report(phases: Vec<Phase>) -> Report {
        Report {
            scenario: "all".into(),
            balancer: "default".into(),
            greetings: Tally::default(),
            phases,
            panic_picks_after_waits: Some(0),
            stats: fyerrpc::metrics::ClientCounters::default().snapshot(Vec::new()),
        }
    }

    #[test]
    fn the_table_shows_the_hedges() {
        let mut r = report(vec![phase("load", 200, 0)]);
        r.stats.requests = 200;
        r.stats.hedges_sent = 9;
        r.stats.hedges_won = 7;
        r.stats.hedges_cancelled = 8;
        r.stats.max_latency = Duration::from_millis(61);
        let table = r.to_table();
        assert!(
            table.contains("9 sent (4.5% of calls), 7 won, 8 attempts cancelled"),
            "{table}"
        );
        assert!(table.contains("Max response time    61.00 ms"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["hedges_sent"], 9);
        assert_eq!(json["max_latency"], 0.061);
    }

    #[test]
    fn json_phases_say_whether_failures_are_expected() {
        let r = report(vec![phase("basic", 3, 0), phase("breaker", 9, 0)]);
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        let phases = json["phases"].as_array().unwrap();
        assert_eq!(phases[0]["name"], "basic");
        assert_eq!(phases[0]["failures_expected"], false);
        assert_eq!(phases[0]["ok"], 3);
        // The breaker trips on the servers' own failures, retried elsewhere.
        assert_eq!(phases[1]["failures_expected"], false);
        assert_eq!(phases[1]["ok"], 9);
        assert_eq!(check_json(&r.to_json()).unwrap().len(), 2);
    }

    #[test]
    fn the_check_names_phases_that_failed_unexpectedly() {
        let r = report(vec![
            phase("basic", 3, 0),
            phase("failover-verify", 8, 2),
            phase("breaker", 20, 0),
        ]);
        assert!(r.phases[1].failed_unexpectedly());
        assert!(!r.phases[2].failed_unexpectedly());
        match check_json(&r.to_json()) {
            Err(ReportCheckError::UnexpectedFailures(p)) => {
                assert_eq!(p.len(), 1);
                assert_eq!(p[0].name, "failover-verify");
                let msg = ReportCheckError::UnexpectedFailures(p).to_string();
                assert!(
                    msg.contains("failover-verify (2 of 10 calls failed)"),
                    "{msg}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_check_wants_closed_breakers_and_no_late_panic() {
        let phases = r#""phases":[{"name":"basic","calls":3,"ok":3,"failed":0,
            "elapsed_seconds":0.1,"failures_expected":false}]"#;
        let open = format!(
            r#"{{{phases},"instances":[{{"id":"a","breaker":"closed"}},{{"id":"b","breaker":"half_open"}}]}}"#
        );
        match check_json(&open) {
            Err(e @ ReportCheckError::BreakersNotClosed(_)) => {
                assert!(e.to_string().contains("b=half_open"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let panicked = format!(r#"{{{phases},"panic_picks_after_waits":4}}"#);
        assert!(matches!(
            check_json(&panicked),
            Err(ReportCheckError::PanicAfterWaits(4))
        ));
        let fine = format!(
            r#"{{{phases},"instances":[{{"id":"a","breaker":"closed"}}],"panic_picks_after_waits":0}}"#
        );
        assert!(check_json(&fine).is_ok());
    }

    #[test]
    fn the_check_rejects_what_is_not_a_report() {
        assert!(matches!(
            check_json("Cluster stopped."),
            Err(ReportCheckError::Json(_))
        ));
        assert!(matches!(
            check_json(r#"{"phases":[{"name":"x"}]}"#),
            Err(ReportCheckError::Json(_))
        ));
        assert!(matches!(
            check_json(r#"{"phases":[]}"#),
            Err(ReportCheckError::NoPhases)
        ));
    }
}
