//! The health port: `GET /health`, `GET /status` and `GET /metrics`.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::detector::{FaultConfig, HealthDetector};
use super::metrics::ServerMetrics;
use super::service::GreetServiceImpl;

/// What the health port reports on.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The server id.
    pub id: Arc<str>,
    /// The advertised gRPC address.
    pub address: Arc<str>,
    /// The fault detector.
    pub detector: HealthDetector,
    /// The greeting statistics.
    pub service: Arc<GreetServiceImpl>,
    /// The metrics.
    pub metrics: ServerMetrics,
    /// When the server started.
    pub started: Instant,
}

/// The body of `GET /health`.
#[derive(Debug, Serialize)]
struct HealthBody<'a> {
    id: &'a str,
    /// `UP` or `DOWN`.
    status: &'static str,
    request_count: u64,
    /// RFC 3339, or null outside a failure window.
    failing_until: Option<String>,
}

/// The body of `GET /status`.
#[derive(Debug, Serialize)]
struct StatusBody<'a> {
    #[serde(flatten)]
    health: HealthBody<'a>,
    address: &'a str,
    uptime_seconds: u64,
    total_greets: i64,
    faults: FaultConfig,
}

/// The health port's routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn health_body(state: &HttpState) -> (bool, HealthBody<'_>) {
    let health = state.detector.health();
    let body = HealthBody {
        id: &state.id,
        status: if health.healthy { "UP" } else { "DOWN" },
        request_count: health.request_count,
        failing_until: health.failing_until.map(rfc3339),
    };
    (health.healthy, body)
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn code(healthy: bool) -> StatusCode {
    if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn health(State(state): State<HttpState>) -> Response {
    let (healthy, body) = health_body(&state);
    (code(healthy), Json(body)).into_response()
}

async fn status(State(state): State<HttpState>) -> Response {
    let (healthy, health) = health_body(&state);
    let body = StatusBody {
        health,
        address: &state.address,
        uptime_seconds: state.started.elapsed().as_secs(),
        total_greets: state.service.total_greets(),
        faults: *state.detector.config(),
    };
    (code(healthy), Json(body)).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
