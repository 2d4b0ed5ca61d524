//! The server's Prometheus metrics, exported on `GET /metrics`.
//!
//! Each server owns its recorder (not the process-global one), so several
//! servers in one process keep separate numbers. Every series carries the
//! label `server`, the server's id.

use std::sync::Arc;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// gRPC calls handled, by `method` (`SayHello`, `GetGreetStats`) and `code`
/// (`ok` or the gRPC status code name).
pub const REQUESTS_TOTAL: &str = "greet_server_requests_total";
/// Time to handle a gRPC call, in seconds, by `method`.
pub const REQUEST_DURATION: &str = "greet_server_request_duration_seconds";
/// Calls failed on purpose, by `fault` (`window`, `random`).
pub const INJECTED_FAULTS_TOTAL: &str = "greet_server_injected_faults_total";
/// 1 while healthy, 0 during a failure window.
pub const HEALTHY: &str = "greet_server_healthy";

/// Histogram buckets for call latency, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A server's metrics: a private Prometheus recorder and its renderer.
#[derive(Clone)]
pub struct ServerMetrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
    server_id: Arc<str>,
}

impl std::fmt::Debug for ServerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerMetrics")
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

impl ServerMetrics {
    /// A fresh recorder whose series carry the label `server=<server_id>`.
    pub fn new(server_id: &str) -> Self {
        let builder = PrometheusBuilder::new().add_global_label("server", server_id);
        // Rejected only for an empty bucket list, which this is not.
        let recorder = match builder
            .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), LATENCY_BUCKETS)
        {
            Ok(builder) => builder.build_recorder(),
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        let metrics = Self {
            recorder: Arc::new(recorder),
            handle,
            server_id: server_id.into(),
        };
        metrics.describe();
        metrics
    }

    fn describe(&self) {
        metrics::with_local_recorder(&*self.recorder, || {
            metrics::describe_counter!(REQUESTS_TOTAL, "gRPC calls handled, by method and code");
            metrics::describe_histogram!(
                REQUEST_DURATION,
                Unit::Seconds,
                "Time to handle a gRPC call, by method"
            );
            metrics::describe_counter!(INJECTED_FAULTS_TOTAL, "Calls failed on purpose, by fault");
            metrics::describe_gauge!(HEALTHY, "1 while healthy, 0 during a failure window");
        });
    }

    /// Records one handled call.
    pub fn call(&self, method: &'static str, code: tonic::Code, elapsed: Duration) {
        let code = code_label(code);
        metrics::with_local_recorder(&*self.recorder, || {
            metrics::counter!(REQUESTS_TOTAL, "method" => method, "code" => code).increment(1);
            metrics::histogram!(REQUEST_DURATION, "method" => method).record(elapsed.as_secs_f64());
        });
    }

    /// Records one call failed on purpose.
    pub fn fault(&self, fault: &'static str) {
        metrics::with_local_recorder(&*self.recorder, || {
            metrics::counter!(INJECTED_FAULTS_TOTAL, "fault" => fault).increment(1);
        });
    }

    /// Sets the health gauge.
    pub fn healthy(&self, healthy: bool) {
        metrics::with_local_recorder(&*self.recorder, || {
            metrics::gauge!(HEALTHY).set(if healthy { 1.0 } else { 0.0 });
        });
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// Drains histogram buffers; call every few seconds.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }
}

/// `ok`, or the snake_case name of a gRPC status code.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histograms_per_server() {
        let a = ServerMetrics::new("a");
        let b = ServerMetrics::new("b");
        a.call("SayHello", tonic::Code::Ok, Duration::from_millis(3));
        a.call(
            "SayHello",
            tonic::Code::Unavailable,
            Duration::from_millis(1),
        );
        a.fault("window");
        a.healthy(false);
        let text = a.render();
        assert!(
            text.contains(
                r#"greet_server_requests_total{server="a",method="SayHello",code="ok"} 1"#
            ) || text.contains(
                r#"greet_server_requests_total{method="SayHello",code="ok",server="a"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("greet_server_request_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE greet_server_request_duration_seconds histogram"),
            "{text}"
        );
        assert!(!b.render().contains("SayHello"));
    }
}
