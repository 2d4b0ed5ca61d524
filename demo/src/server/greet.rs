//! [`GreetServer`]: the gRPC face of a greet server: fault injection and
//! metrics around [`GreetServiceImpl`].

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use super::detector::HealthDetector;
use super::metrics::ServerMetrics;
use super::service::GreetServiceImpl;
use crate::proto::{GreetService, HelloRequest, HelloResponse, StatsRequest, StatsResponse};

/// The `GreetService` implementation a greet server serves.
///
/// `SayHello` first waits the configured latency (`--latency`, plus
/// jitter) on a tokio timer, then asks the [`HealthDetector`]: a call it
/// fails returns `Unavailable` with `service <id> is currently unavailable`
/// and is not counted in the statistics. `GetGreetStats` is never delayed
/// or failed on purpose.
#[derive(Debug, Clone)]
pub struct GreetServer {
    id: Arc<str>,
    service: Arc<GreetServiceImpl>,
    detector: HealthDetector,
    metrics: ServerMetrics,
}

impl GreetServer {
    /// A server with id `id`.
    pub fn new(
        id: &str,
        service: Arc<GreetServiceImpl>,
        detector: HealthDetector,
        metrics: ServerMetrics,
    ) -> Self {
        Self {
            id: id.into(),
            service,
            detector,
            metrics,
        }
    }

    fn greet(&self, request: &HelloRequest) -> Result<HelloResponse, Status> {
        if let Err(fault) = self.detector.on_call() {
            self.metrics.fault(fault.as_str());
            tracing::debug!(fault = fault.as_str(), name = %request.name, "failing call on purpose");
            return Err(Status::unavailable(format!(
                "service {} is currently unavailable",
                self.id
            )));
        }
        Ok(self.service.say_hello(request))
    }
}

#[tonic::async_trait]
impl GreetService for GreetServer {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloResponse>, Status> {
        let start = Instant::now();
        let delay = self.detector.config().delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let result = self.greet(request.get_ref());
        let code = result
            .as_ref()
            .map_or_else(Status::code, |_| tonic::Code::Ok);
        self.metrics.call("SayHello", code, start.elapsed());
        result.map(Response::new)
    }

    async fn get_greet_stats(
        &self,
        request: Request<StatsRequest>,
    ) -> Result<Response<StatsResponse>, Status> {
        let start = Instant::now();
        let stats = self.service.stats(request.get_ref());
        self.metrics
            .call("GetGreetStats", tonic::Code::Ok, start.elapsed());
        Ok(Response::new(stats))
    }
}
