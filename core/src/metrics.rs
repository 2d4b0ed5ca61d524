//! Every metric fyerrpc emits, in one place, and the in-process stats snapshot.
//!
//! Metrics go through the [`metrics`](https://docs.rs/metrics) facade: install
//! a recorder (for example `metrics-exporter-prometheus`) to export them.
//! Names follow the grpc-prometheus style. The seed framework's names map as
//! follows: `rpc_requests_total` → [`CLIENT_REQUESTS`], `rpc_response_time_seconds`
//! → [`CLIENT_REQUEST_DURATION`], `rpc_failover_total{from_instance,to_instance}`
//! → [`CLIENT_FAILOVERS`], `rpc_circuit_breaks_total` → [`CLIENT_BREAKER_TRANSITIONS`]
//! with `to="open"`, `rpc_retry_total` → [`CLIENT_RETRIES`].
//!
//! [`Stats`] is the same information kept in process, for programs that print
//! it (the demo's final table) without a metrics backend.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Counter: calls made through the client, by `service`, `method` and final
/// `code` (`ok` or the gRPC status code name in snake_case, as in
/// `deadline_exceeded`).
pub const CLIENT_REQUESTS: &str = "fyerrpc_client_requests_total";
/// Histogram: duration of whole calls (all attempts), seconds, by `service`, `method`.
pub const CLIENT_REQUEST_DURATION: &str = "fyerrpc_client_request_duration_seconds";
/// Counter: attempts, by `service`, `instance` and `outcome`: the gRPC status
/// code name of the answer (`ok`, `unavailable`, ...), or `unreachable` (no
/// connection could be made), `not_sent` (the instance did not process the
/// request: refused stream, GOAWAY), `transport_error` (the transport
/// failed after the request may have been sent) or `timed_out` (the
/// attempt ran out of time).
pub const CLIENT_ATTEMPTS: &str = "fyerrpc_client_attempts_total";
/// Counter: retries (attempts after the first), by `service`, `method`.
pub const CLIENT_RETRIES: &str = "fyerrpc_client_retries_total";
/// Counter: retries that went to another instance, by `service`,
/// `from_instance`, `to_instance`.
pub const CLIENT_FAILOVERS: &str = "fyerrpc_client_failovers_total";
/// Counter: retries refused because the retry budget was spent, by `service`.
pub const CLIENT_BUDGET_EXHAUSTED: &str = "fyerrpc_client_retry_budget_exhausted_total";
/// Counter: breaker state changes, by `service`, `instance` and `to`, the
/// new state (`closed`, `open`, `half_open`).
pub const CLIENT_BREAKER_TRANSITIONS: &str = "fyerrpc_client_breaker_transitions_total";
/// Gauge: breaker state per instance (0 closed, 1 open, 2 half-open), by
/// `service`, `instance`.
pub const CLIENT_BREAKER_STATE: &str = "fyerrpc_client_breaker_state";
/// Gauge: the client's endpoints by eligibility, by `service` and `state`:
///
/// | `state` | counts |
/// |---|---|
/// | `known` | endpoints in the client's current snapshot (enabled, selected) |
/// | `eligible` | known endpoints with no ejection cause |
/// | `ejected` | known endpoints with at least one cause, each counted once |
/// | `unreachable` | endpoints that cannot be connected to |
/// | `breaker_open` | endpoints whose circuit breaker is open |
/// | `unhealthy` | endpoints failing their active health checks |
/// | `disabled` | instances the registry lists as disabled (not in the snapshot) |
///
/// The per-cause lines count an endpoint with two causes in both.
pub const CLIENT_ENDPOINTS: &str = "fyerrpc_client_endpoints";
/// Counter: picks made while more reachable endpoints were ejected for
/// statistical causes than the client's maximum ejection ratio allows, so
/// those ejections were ignored (panic mode), by `service`.
pub const CLIENT_PANIC_PICKS: &str = "fyerrpc_client_panic_picks_total";
/// Counter: attempts sent again at once because the previous one never
/// reached a server (no connection, refused stream, above a GOAWAY), by
/// `service`. They spend no retry budget.
pub const CLIENT_TRANSPARENT_RETRIES: &str = "fyerrpc_client_transparent_retries_total";
/// Counter: hedged attempts (copies of a slow call sent to another
/// instance), by `service`, `method` and `outcome`: `sent` (a copy went
/// out), `won` (a copy's answer was the call's), `cancelled` (an attempt of
/// a hedged call, the first included, was cancelled because another one
/// answered first). `sent` over the method's requests is the extra load.
pub const CLIENT_HEDGES: &str = "fyerrpc_client_hedges_total";
/// Counter: active health check results, by `service`, `instance` and
/// `result` (`serving`, `not_serving`, `unknown_service`: the server does not
/// know the checked name, `unimplemented`: no health service, checking
/// stops, `unreachable`: no connection, or `failed`: a time-out or another
/// error).
pub const CLIENT_HEALTH_CHECKS: &str = "fyerrpc_client_health_checks_total";
/// Counter: registry watch errors seen by the client, by `service`.
pub const CLIENT_DISCOVERY_ERRORS: &str = "fyerrpc_client_discovery_errors_total";
/// Counter: registrations re-created after the backend lost them, by
/// `backend` (`etcd`, `consul`).
pub const REGISTRY_REREGISTRATIONS: &str = "fyerrpc_registry_reregistrations_total";
/// Counter: registry entries skipped because they did not decode, by
/// `backend` (`etcd`, `consul`).
pub const REGISTRY_INVALID_ENTRIES: &str = "fyerrpc_registry_invalid_entries_total";
/// Counter: registry watches re-established after a disconnect, an error or a
/// compacted revision, by `backend` (only `etcd` counts them).
pub const REGISTRY_WATCH_RESTARTS: &str = "fyerrpc_registry_watch_restarts_total";

/// A latency histogram with fixed log-scale buckets and atomic counters:
/// recording never locks or allocates. Buckets grow by 2^(1/4) (about 19 %)
/// from 1 µs to about 70 minutes, so percentiles are within that factor.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
    max_nanos: AtomicU64,
}

const SUB_BUCKETS: f64 = 4.0;
const BUCKETS: usize = 4 * 32;
const MIN_NANOS: f64 = 1_000.0;

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
            max_nanos: AtomicU64::new(0),
        }
    }

    fn index(nanos: f64) -> usize {
        if nanos <= MIN_NANOS {
            return 0;
        }
        let i = ((nanos / MIN_NANOS).log2() * SUB_BUCKETS).ceil();
        (i as usize).min(BUCKETS - 1)
    }

    fn upper_bound(index: usize) -> Duration {
        Duration::from_nanos((MIN_NANOS * 2f64.powf(index as f64 / SUB_BUCKETS)) as u64)
    }

    /// Records one sample.
    pub fn record(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[Self::index(nanos as f64)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.max_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    /// The largest sample (exact; zero when empty).
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_nanos.load(Ordering::Relaxed))
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The mean (zero when empty).
    pub fn mean(&self) -> Duration {
        let n = self.count();
        if n == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed) / n)
    }

    /// The `q` quantile (`0.0..=1.0`), as the upper bound of its bucket.
    pub fn quantile(&self, q: f64) -> Duration {
        let n = self.count();
        if n == 0 {
            return Duration::ZERO;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= rank {
                return Self::upper_bound(i);
            }
        }
        Self::upper_bound(BUCKETS - 1)
    }
}

/// Calls, successes and failures of one instance, as seen by one client.
#[derive(Debug, Default)]
pub struct InstanceCounters {
    /// Attempts placed on the instance.
    pub attempts: AtomicU64,
    /// Attempts that succeeded.
    pub successes: AtomicU64,
    /// Attempts that failed (by the failure classification).
    pub failures: AtomicU64,
}

/// Client-wide counters behind [`Stats`].
#[derive(Debug, Default)]
pub struct ClientCounters {
    /// Calls started.
    pub requests: AtomicU64,
    /// Calls that ended with `Ok`.
    pub successes: AtomicU64,
    /// Calls that ended with an error.
    pub failures: AtomicU64,
    /// Attempts after the first.
    pub retries: AtomicU64,
    /// Retries that went to another instance.
    pub failovers: AtomicU64,
    /// Retries refused by the budget.
    pub budget_exhausted: AtomicU64,
    /// Breaker trips (to open).
    pub breaker_trips: AtomicU64,
    /// Picks made in panic mode.
    pub panic_picks: AtomicU64,
    /// Attempts re-sent because the previous one never reached a server.
    pub transparent_retries: AtomicU64,
    /// Hedged copies sent (attempts of hedged calls after the first).
    pub hedges_sent: AtomicU64,
    /// Hedged copies whose answer was the call's.
    pub hedges_won: AtomicU64,
    /// Attempts of hedged calls cancelled because another one answered.
    pub hedges_cancelled: AtomicU64,
    /// Whole-call latency.
    pub latency: LatencyHistogram,
}

impl ClientCounters {
    /// Adds one to a counter.
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of one instance's stats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceStats {
    /// Instance id.
    pub id: String,
    /// Instance address.
    pub address: String,
    /// Attempts placed on it.
    pub attempts: u64,
    /// Successful attempts.
    pub successes: u64,
    /// Failed attempts.
    pub failures: u64,
    /// Breaker state (`closed`, `open`, `half_open`), or `removed` when the
    /// instance has left the registry.
    pub breaker: String,
    /// Whether the last active health check verdict is healthy (true
    /// without checks).
    pub healthy: bool,
    /// Whether the instance can be connected to, as far as the client knows.
    pub reachable: bool,
    /// Whether the client holds a connection to it now (opened on first
    /// use, closed after the idle timeout).
    pub connected: bool,
    /// Why the instance takes no new calls now (`unreachable`,
    /// `breaker_open`, `breaker_half_open_busy`, `unhealthy`); empty when it
    /// is eligible.
    pub ejected_for: Vec<String>,
}

/// A snapshot of a client's stats: what the demo prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Calls made.
    pub requests: u64,
    /// Calls that succeeded.
    pub successes: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Retries (attempts after the first).
    pub retries: u64,
    /// Retries that went to another instance.
    pub failovers: u64,
    /// Retries refused by the budget.
    pub budget_exhausted: u64,
    /// Breaker trips.
    pub breaker_trips: u64,
    /// Picks made in panic mode.
    pub panic_picks: u64,
    /// Attempts re-sent because the previous one never reached a server.
    pub transparent_retries: u64,
    /// Hedged copies sent (attempts of hedged calls after the first): the
    /// extra load of hedging.
    pub hedges_sent: u64,
    /// Hedged copies whose answer was the call's.
    pub hedges_won: u64,
    /// Attempts of hedged calls cancelled because another one answered.
    pub hedges_cancelled: u64,
    /// Mean call latency.
    #[serde(serialize_with = "as_secs")]
    pub avg_latency: Duration,
    /// Median call latency (bucket upper bound).
    #[serde(serialize_with = "as_secs")]
    pub p50_latency: Duration,
    /// 99th percentile call latency (bucket upper bound).
    #[serde(serialize_with = "as_secs")]
    pub p99_latency: Duration,
    /// Longest call (exact).
    #[serde(serialize_with = "as_secs")]
    pub max_latency: Duration,
    /// Per-instance stats, by id.
    pub instances: Vec<InstanceStats>,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl ClientCounters {
    /// Builds a [`Stats`] snapshot with the given per-instance stats.
    pub fn snapshot(&self, instances: Vec<InstanceStats>) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            requests: get(&self.requests),
            successes: get(&self.successes),
            failures: get(&self.failures),
            retries: get(&self.retries),
            failovers: get(&self.failovers),
            budget_exhausted: get(&self.budget_exhausted),
            breaker_trips: get(&self.breaker_trips),
            panic_picks: get(&self.panic_picks),
            transparent_retries: get(&self.transparent_retries),
            hedges_sent: get(&self.hedges_sent),
            hedges_won: get(&self.hedges_won),
            hedges_cancelled: get(&self.hedges_cancelled),
            avg_latency: self.latency.mean(),
            p50_latency: self.latency.quantile(0.5),
            p99_latency: self.latency.quantile(0.99),
            max_latency: self.latency.max(),
            instances,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_within_a_bucket() {
        let h = LatencyHistogram::new();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile(0.5).as_secs_f64();
        assert!((0.050..=0.050 * 1.2).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99).as_secs_f64();
        assert!((0.099..=0.099 * 1.2).contains(&p99), "{p99}");
        assert_eq!(h.count(), 100);
        assert_eq!(h.max(), Duration::from_millis(100));
        assert!((h.mean().as_secs_f64() - 0.0505).abs() < 1e-6);
        assert_eq!(LatencyHistogram::new().quantile(0.5), Duration::ZERO);
    }
}
