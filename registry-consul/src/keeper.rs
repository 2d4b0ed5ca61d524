//! The task behind a [`Registration`](fyerrpc::Registration): keeps the TTL
//! check passing, registers the service again when the agent lost it, and
//! deregisters on shutdown.

use std::time::Duration;

use fyerrpc::registry::{RetryBackoff, StopMode, StopSignal};
use fyerrpc::RegistryError;

use crate::client::ConsulClient;
use crate::codec::ttl_check_id;
use crate::metrics;
use crate::transport::ApiError;
use crate::wire::{CheckStatus, ServiceRegistration};

/// Period of the existence probe when the registration has no TTL check.
const PROBE_PERIOD: Duration = Duration::from_secs(10);
/// First retry delay after a failed call.
const RETRY_BASE: Duration = Duration::from_millis(200);

/// What the keeper learned from one round.
#[derive(Debug)]
enum Outcome {
    /// The agent has the service (and its TTL was renewed).
    Alive,
    /// The agent does not know the service or its check any more.
    Lost,
    /// The service was registered again.
    Restored,
    /// The call failed; try again soon.
    Failed(ApiError),
}

/// Keeps one service registered on the agent.
#[derive(Debug)]
pub(crate) struct Keeper {
    client: ConsulClient,
    /// Client for the stop-time deregistration (full request timeout).
    deregister_client: ConsulClient,
    registration: ServiceRegistration,
    /// Whether a TTL check must be passed (else the service is only probed).
    ttl_check: bool,
    period: Duration,
}

impl Keeper {
    /// A keeper for `registration`, renewing every `ttl / 3` when it has a
    /// TTL check, probing every [`PROBE_PERIOD`] otherwise.
    pub(crate) fn new(
        client: ConsulClient,
        registration: ServiceRegistration,
        ttl: Option<Duration>,
        request_timeout: Duration,
    ) -> Self {
        let period = ttl.map_or(PROBE_PERIOD, |t| t / 3);
        // A renewal that takes longer than its period is as good as lost.
        let timeout = period.max(Duration::from_secs(1)).min(request_timeout);
        Self {
            deregister_client: client.clone(),
            client: client.with_request_timeout(timeout),
            registration,
            ttl_check: ttl.is_some(),
            period,
        }
    }

    /// Runs until `stop` fires, then deregisters (or not) as asked.
    pub(crate) async fn run(self, mut stop: StopSignal) -> Result<(), RegistryError> {
        let mut backoff = RetryBackoff::new(RETRY_BASE, self.period.max(RETRY_BASE));
        let mut lost = false;
        let mut delay = self.period;
        loop {
            let round = async {
                tokio::time::sleep(delay).await;
                if lost {
                    self.restore().await
                } else {
                    self.renew().await
                }
            };
            let outcome = tokio::select! {
                mode = stop.stopped() => return self.stop(mode).await,
                outcome = round => outcome,
            };
            (lost, delay) = match outcome {
                Outcome::Alive => {
                    backoff.reset();
                    (false, self.period)
                }
                Outcome::Lost => {
                    tracing::warn!(
                        service = %self.registration.name, id = %self.registration.id,
                        "the Consul agent lost the registration; registering again"
                    );
                    (true, Duration::ZERO)
                }
                Outcome::Restored => {
                    metrics::reregistered();
                    tracing::info!(
                        service = %self.registration.name, id = %self.registration.id,
                        "registered again with the Consul agent"
                    );
                    backoff.reset();
                    (false, self.period)
                }
                Outcome::Failed(error) => {
                    tracing::warn!(
                        service = %self.registration.name, id = %self.registration.id,
                        %error, lost, "Consul keep-alive failed; retrying"
                    );
                    (lost, backoff.next_delay().min(self.period))
                }
            };
        }
    }

    /// Passes the TTL check, or probes for the service when there is none.
    async fn renew(&self) -> Outcome {
        let id = &self.registration.id;
        let result = if self.ttl_check {
            self.client
                .update_ttl_check(&ttl_check_id(id), CheckStatus::Passing)
                .await
                .map(|()| true)
        } else {
            self.client.agent_has_service(id).await
        };
        match result {
            Ok(true) => Outcome::Alive,
            Ok(false) => Outcome::Lost,
            Err(e) if e.is_unknown() => Outcome::Lost,
            Err(e) => Outcome::Failed(e),
        }
    }

    async fn restore(&self) -> Outcome {
        match self.client.register_service(&self.registration).await {
            Ok(()) => Outcome::Restored,
            Err(e) => Outcome::Failed(e),
        }
    }

    async fn stop(&self, mode: StopMode) -> Result<(), RegistryError> {
        if mode == StopMode::Abandon {
            return Ok(());
        }
        let id = &self.registration.id;
        self.deregister_client
            .deregister_service(id)
            .await
            .map_err(RegistryError::from)?;
        tracing::debug!(service = %self.registration.name, %id, "deregistered from Consul");
        Ok(())
    }
}
