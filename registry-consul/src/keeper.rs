//! The task behind a [`Registration`](fyerrpc::Registration): checks that the
//! agent still holds *this* registration (by the nonce in its `Meta`), keeps
//! its TTL check passing, registers it again when the agent lost it, stands
//! down when a newer registration replaced it, and deregisters on shutdown.
//!
//! ```text
//!                      every keep-alive period (TTL/3)
//!                 +-------------------------------------+
//!                 v                                     |
//!   register --> Keeping --GET /v1/agent/service/<id>---+-- ours: pass the TTL check
//!                 |   ^                                 |
//!                 |   +--- registered again <-- Lost <--+-- missing (deleted, agent restarted,
//!                 |        (backoff while it fails)     |   TTL check unknown)
//!                 |                                     +-- another nonce --> Superseded
//!                 |                                          (task ends, entry left alone)
//!                 +-- stop(Deregister) --> recovery in progress ends --> deregister if ours --> end
//!                 +-- stop(Abandon) -----> recovery in progress ends ----------------------> end
//! ```
//!
//! A stop never cancels a recovery half-way: a registration sent to the
//! agent just before the stop is always followed by the deregistration, so a
//! shutdown racing a recovery leaves nothing behind. (A renewal creates
//! nothing, so a stop cuts it short: a hung agent delays a shutdown by the
//! deregistration timeout only.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use fyerrpc::registry::{RetryBackoff, StopMode, StopSignal};
use fyerrpc::RegistryError;

use crate::client::ConsulClient;
use crate::codec::{ttl_check_id, META_NONCE};
use crate::metrics;
use crate::transport::ApiError;
use crate::wire::{CheckStatus, ServiceRegistration};

/// First retry delay after a failed call.
const RETRY_BASE: Duration = Duration::from_millis(200);

/// A test hook awaited just before the keeper registers the service again.
pub(crate) type Hook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the keeper learned from one round.
#[derive(Debug)]
enum Outcome {
    /// The agent holds our registration (and its TTL was renewed).
    Alive,
    /// The agent does not know the service or its check any more.
    Lost,
    /// The service was registered again.
    Restored,
    /// The agent holds a newer registration of the same service id.
    Superseded,
    /// The call failed; try again soon.
    Failed(ApiError),
}

/// Whose registration the agent holds under our service id.
#[derive(Debug, PartialEq, Eq)]
enum Holder {
    Ours,
    Nobody,
    Other,
}

/// Keeps one service registered on the agent.
pub(crate) struct Keeper {
    client: ConsulClient,
    /// Client for the stop-time deregistration (short timeout).
    deregister_client: ConsulClient,
    deregister_timeout: Duration,
    registration: ServiceRegistration,
    nonce: String,
    /// Whether a TTL check must be passed.
    ttl_check: bool,
    period: Duration,
    before_restore: Option<Hook>,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("id", &self.registration.id)
            .field("ttl_check", &self.ttl_check)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

/// How a [`Keeper`] is set up.
pub(crate) struct KeeperOptions {
    pub(crate) period: Duration,
    pub(crate) ttl_check: bool,
    pub(crate) request_timeout: Duration,
    pub(crate) deregister_timeout: Duration,
    pub(crate) before_restore: Option<Hook>,
}

impl Keeper {
    /// A keeper for `registration` (whose `Meta` holds `nonce`), running a
    /// round every `period`.
    pub(crate) fn new(
        client: ConsulClient,
        registration: ServiceRegistration,
        nonce: String,
        options: KeeperOptions,
    ) -> Self {
        // A renewal that takes longer than its period is as good as lost.
        let timeout = options
            .period
            .max(Duration::from_secs(1))
            .min(options.request_timeout);
        Self {
            deregister_client: client.with_request_timeout(options.deregister_timeout),
            deregister_timeout: options.deregister_timeout,
            client: client.with_request_timeout(timeout),
            registration,
            nonce,
            ttl_check: options.ttl_check,
            period: options.period,
            before_restore: options.before_restore,
        }
    }

    /// Runs until `stop` fires (then deregisters, or not, as asked) or a
    /// newer registration replaced this one.
    pub(crate) async fn run(self, mut stop: StopSignal) -> Result<(), RegistryError> {
        let mut backoff = RetryBackoff::new(RETRY_BASE, self.period.max(RETRY_BASE));
        let mut lost = false;
        let mut delay = self.period;
        loop {
            tokio::select! {
                biased;
                mode = stop.stopped() => return self.stop(mode).await,
                () = tokio::time::sleep(delay) => {}
            }
            // A recovery is not raced against the stop (see the module
            // docs); a renewal creates nothing and may be cut short.
            let outcome = if lost {
                self.restore().await
            } else {
                tokio::select! {
                    biased;
                    mode = stop.stopped() => return self.stop(mode).await,
                    outcome = self.renew() => outcome,
                }
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
                Outcome::Superseded => {
                    tracing::warn!(
                        service = %self.registration.name, id = %self.registration.id,
                        "a newer registration of this instance replaced ours on the Consul \
                         agent; no longer keeping it (and leaving it at shutdown)"
                    );
                    return Ok(());
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

    /// Who holds our service id on the agent.
    async fn holder(&self, client: &ConsulClient) -> Result<Holder, ApiError> {
        Ok(match client.agent_service(&self.registration.id).await? {
            None => Holder::Nobody,
            Some(svc) => {
                let nonce = svc.meta.as_ref().and_then(|m| m.get(META_NONCE));
                if nonce == Some(&self.nonce) {
                    Holder::Ours
                } else {
                    Holder::Other
                }
            }
        })
    }

    /// Checks that the agent holds our registration, then passes its TTL
    /// check.
    async fn renew(&self) -> Outcome {
        match self.holder(&self.client).await {
            Ok(Holder::Ours) => {}
            Ok(Holder::Nobody) => return Outcome::Lost,
            Ok(Holder::Other) => return Outcome::Superseded,
            Err(e) => return Outcome::Failed(e),
        }
        if !self.ttl_check {
            return Outcome::Alive;
        }
        let check = ttl_check_id(&self.registration.id);
        match self
            .client
            .update_ttl_check(&check, CheckStatus::Passing)
            .await
        {
            Ok(()) => Outcome::Alive,
            Err(e) if e.is_unknown() => Outcome::Lost,
            Err(e) => Outcome::Failed(e),
        }
    }

    async fn restore(&self) -> Outcome {
        if let Some(hook) = &self.before_restore {
            hook().await;
        }
        match self.client.register_service(&self.registration).await {
            Ok(()) => Outcome::Restored,
            Err(e) => Outcome::Failed(e),
        }
    }

    /// Deregisters our registration (and only ours), within the
    /// deregistration timeout.
    async fn stop(&self, mode: StopMode) -> Result<(), RegistryError> {
        if mode == StopMode::Abandon {
            return Ok(());
        }
        let id = &self.registration.id;
        let client = &self.deregister_client;
        let deregister = async {
            match self.holder(client).await? {
                Holder::Ours => client.deregister_service(id).await.map(|()| true),
                Holder::Nobody | Holder::Other => Ok(false),
            }
        };
        let removed = tokio::time::timeout(self.deregister_timeout, deregister)
            .await
            .map_err(|_| {
                RegistryError::Unavailable(format!(
                    "Consul did not deregister {id} within {:?}",
                    self.deregister_timeout
                ))
            })?
            .map_err(RegistryError::from)?;
        if removed {
            tracing::debug!(service = %self.registration.name, %id, "deregistered from Consul");
        } else {
            tracing::info!(service = %self.registration.name, %id,
                "not deregistered: the Consul agent no longer holds this registration");
        }
        Ok(())
    }
}
