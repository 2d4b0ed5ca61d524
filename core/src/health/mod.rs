//! Active health checking with the standard gRPC health protocol
//! (`grpc.health.v1.Health/Check`).
//!
//! When enabled on a client, every instance is checked at an interval over
//! its own channel; an instance that fails `unhealthy_threshold` checks in a
//! row is ejected from balancing until it passes `healthy_threshold` checks.
//!
//! As gRPC's client-side health checking specifies (proposal A17), a server
//! that does not implement the health service (`UNIMPLEMENTED`) is not
//! checked any further and stays eligible: that is logged once. A
//! `NOT_FOUND` answer means the configured service name is not known to the
//! server, a configuration error: it is logged as such (once per instance)
//! and counts as not serving. A check that cannot connect is no health
//! verdict: it marks the instance unreachable instead, and any answer at all
//! marks it reachable again.
//!
//! Checks are spread over the interval: an instance's first check comes at
//! a random point within the first interval, and the following ones one
//! interval apart, so that a client of 10,000 instances checked every 2 s
//! sends about 5,000 checks a second, evenly, rather than 10,000 at once
//! every 2 s. Each instance's checker is a timer-driven task that sleeps
//! between checks (its channel is connected when checking starts).
//!
//! ```
//! use std::time::Duration;
//! use fyerrpc::health::HealthCheckConfig;
//!
//! let config = HealthCheckConfig::default()
//!     .with_interval(Duration::from_secs(2))
//!     .with_service("GreetService");
//! assert_eq!(config.timeout, Duration::from_secs(1));
//! ```

use std::time::Duration;

use bytes::Bytes;
use http_body::Body as HttpBody;
use tonic::body::Body;
use tonic::client::GrpcService;

/// The error type tonic's generated clients accept from a transport.
type StdError = Box<dyn std::error::Error + Send + Sync>;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Settings of active health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCheckConfig {
    /// Time between checks of one instance. Default 5 s.
    pub interval: Duration,
    /// Time limit of one check. Default 1 s.
    pub timeout: Duration,
    /// The service name sent in the check (`""`: the whole server).
    pub service: String,
    /// Failed checks in a row that eject an instance. Default 2.
    pub unhealthy_threshold: u32,
    /// Passed checks in a row that bring it back. Default 1.
    pub healthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            service: String::new(),
            unhealthy_threshold: 2,
            healthy_threshold: 1,
        }
    }
}

impl HealthCheckConfig {
    /// Sets the interval.
    pub fn with_interval(mut self, d: Duration) -> Self {
        self.interval = d;
        self
    }
    /// Sets the time limit of one check.
    pub fn with_timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }
    /// Sets the service name checked.
    pub fn with_service(mut self, s: impl Into<String>) -> Self {
        self.service = s.into();
        self
    }
    /// Sets the failed checks in a row that eject an instance.
    pub fn with_unhealthy_threshold(mut self, n: u32) -> Self {
        self.unhealthy_threshold = n.max(1);
        self
    }
    /// Sets the passed checks in a row that bring an instance back.
    pub fn with_healthy_threshold(mut self, n: u32) -> Self {
        self.healthy_threshold = n.max(1);
        self
    }
}

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    /// The server answered `SERVING`.
    Serving,
    /// The server answered, but not `SERVING`.
    NotServing,
    /// The server does not know the checked service name (`NOT_FOUND`): a
    /// configuration error. Counts as not serving.
    UnknownService,
    /// The server has no health service (`UNIMPLEMENTED`): checking stops
    /// and the instance stays eligible.
    Unimplemented,
    /// No connection could be made: no verdict on health, but the instance
    /// is unreachable.
    Unreachable,
    /// The check failed otherwise (time-out, transport error, another
    /// status). Counts as not serving.
    Failed,
}

impl CheckResult {
    /// A label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::NotServing => "not_serving",
            Self::UnknownService => "unknown_service",
            Self::Unimplemented => "unimplemented",
            Self::Unreachable => "unreachable",
            Self::Failed => "failed",
        }
    }

    /// Whether the server answered at all (so it is reachable).
    pub fn reached_server(self) -> bool {
        matches!(
            self,
            Self::Serving | Self::NotServing | Self::UnknownService | Self::Unimplemented
        )
    }
}

/// Runs one `grpc.health.v1.Health/Check` over `channel` (a tonic
/// `Channel`, or any service a tonic-generated client can call through).
pub async fn check<T>(channel: T, service: &str, timeout: Duration) -> CheckResult
where
    T: GrpcService<Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    <T::ResponseBody as HttpBody>::Error: Into<StdError> + Send,
{
    let mut client = HealthClient::new(channel);
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    req.set_timeout(timeout);
    match tokio::time::timeout(timeout, client.check(req)).await {
        Ok(Ok(resp)) if resp.get_ref().status == ServingStatus::Serving as i32 => {
            CheckResult::Serving
        }
        Ok(Ok(_)) => CheckResult::NotServing,
        Ok(Err(status)) => classify_status(&status),
        Err(_) => CheckResult::Failed,
    }
}

/// What a failed check's status says about the server.
fn classify_status(status: &tonic::Status) -> CheckResult {
    use crate::failover::classify::{classify_error, Outcome};
    match classify_error(status) {
        Outcome::Unreachable => return CheckResult::Unreachable,
        Outcome::TransportError | Outcome::NotSent | Outcome::TimedOut => {
            // A transport failure carries its cause as the status' source.
            if std::error::Error::source(status).is_some() {
                return CheckResult::Failed;
            }
        }
        Outcome::Status(_) => {}
    }
    match status.code() {
        tonic::Code::Unimplemented => CheckResult::Unimplemented,
        tonic::Code::NotFound => CheckResult::UnknownService,
        _ => CheckResult::Failed,
    }
}

/// When an instance's first check comes: at a random point of the first
/// interval, so that the checks of many instances spread evenly over it.
fn first_check_delay(interval: Duration) -> Duration {
    interval.mul_f64(fastrand::f64())
}

/// Checks one instance until the task is aborted, or until the server turns
/// out to have no health service. `on_result` sees every result and, when
/// the result changed the health verdict, the new verdict (`true`: healthy).
/// The verdict starts healthy; [`CheckResult::Unreachable`] results do not
/// move it (reachability is reported apart). The first check comes at a
/// random point of the first interval, the next ones an interval apart.
pub async fn run_checker<T, F>(channel: T, config: HealthCheckConfig, mut on_result: F)
where
    T: GrpcService<Body> + Clone,
    T::Error: Into<StdError>,
    T::ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    <T::ResponseBody as HttpBody>::Error: Into<StdError> + Send,
    F: FnMut(CheckResult, Option<bool>) + Send,
{
    let mut healthy = true;
    let mut fails = 0u32;
    let mut passes = 0u32;
    let offset = first_check_delay(config.interval);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = check(channel.clone(), &config.service, config.timeout).await;
        let mut changed = None;
        match result {
            CheckResult::Serving => {
                fails = 0;
                passes = passes.saturating_add(1);
                if !healthy && passes >= config.healthy_threshold {
                    healthy = true;
                    changed = Some(true);
                }
            }
            CheckResult::Unimplemented => {
                if !healthy {
                    changed = Some(true);
                }
                on_result(result, changed);
                return;
            }
            CheckResult::Unreachable => {}
            CheckResult::NotServing | CheckResult::UnknownService | CheckResult::Failed => {
                passes = 0;
                fails = fails.saturating_add(1);
                if healthy && fails >= config.unhealthy_threshold {
                    healthy = false;
                    changed = Some(false);
                }
            }
        }
        on_result(result, changed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_checks_spread_over_the_interval() {
        let interval = Duration::from_secs(2);
        let mut per_tenth = [0u32; 10];
        for _ in 0..10_000 {
            let d = first_check_delay(interval);
            assert!(d < interval);
            per_tenth[(d.as_secs_f64() / 0.2) as usize] += 1;
        }
        // 10,000 instances: about 1,000 first checks in each 200 ms.
        for (i, n) in per_tenth.iter().enumerate() {
            assert!((700..1_300).contains(n), "tenth {i}: {n} checks");
        }
    }
}
