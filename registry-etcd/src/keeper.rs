//! The registration keeper: one lease, one key, kept alive until stopped, and
//! re-established whenever etcd loses them.
//!
//! The etcd client's keep-alive sends one request per call and its streams do
//! not survive a broken connection, so the keeper drives the loop itself:
//! a request every TTL/3, each answer read (TTL 0 means the lease is gone), a
//! request left unanswered for the request timeout counts as a broken stream.
//! After any interruption the keeper retries with backoff until etcd answers:
//! if the old lease survived (a member went away, etcd restarted with its
//! data) it re-writes the key under it; otherwise it grants a new lease and
//! writes the key again, which it logs and counts as a re-registration.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use fyerrpc::instance::instance_key;
use fyerrpc::registry::{StopMode, StopSignal};
use fyerrpc::{Instance, RegistryError};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::error::{call, is_not_found, registry_error};
use crate::metrics;

/// Shortest keep-alive period, whatever the TTL.
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// A granted lease.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    id: i64,
    ttl: Duration,
}

impl Lease {
    /// How often the lease is renewed: a third of its TTL.
    fn period(&self) -> Duration {
        (self.ttl / 3).max(MIN_PERIOD)
    }
}

/// Keeps one instance registered.
#[derive(Clone)]
pub(crate) struct Keeper {
    client: Client,
    instance: Instance,
    key: String,
    value: String,
    /// Requested lease TTL, whole seconds (etcd's unit).
    ttl_secs: i64,
    timeout: Duration,
}

impl Keeper {
    /// A keeper of `instance` under `prefix` with a lease of `ttl` (rounded
    /// up to whole seconds).
    pub(crate) fn new(
        client: Client,
        prefix: &str,
        instance: Instance,
        ttl: Duration,
        timeout: Duration,
    ) -> Self {
        let ttl_secs = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        Self {
            client,
            key: instance_key(prefix, &instance),
            value: instance.to_json(),
            instance,
            ttl_secs,
            timeout,
        }
    }

    /// Grants a lease and writes the instance under it.
    pub(crate) async fn register(&self) -> Result<Lease, RegistryError> {
        let granted = call(self.timeout, || {
            let mut leases = self.client.lease_client();
            async move { leases.grant(self.ttl_secs, None).await }
        })
        .await?;
        let ttl = u64::try_from(granted.ttl()).unwrap_or(0).max(1);
        let lease = Lease {
            id: granted.id(),
            ttl: Duration::from_secs(ttl),
        };
        self.put(lease).await?;
        tracing::debug!(instance = %self.instance, key = %self.key, lease = lease.id,
            ttl_secs = ttl, "registered in etcd");
        Ok(lease)
    }

    /// Keeps the registration alive until `stop` resolves, then deregisters
    /// or abandons it.
    pub(crate) async fn run(
        self,
        mut lease: Lease,
        mut stop: StopSignal,
    ) -> Result<(), RegistryError> {
        let mut backoff = Backoff::default();
        loop {
            let started = Instant::now();
            let reason = tokio::select! {
                mode = stop.stopped() => return self.stop(mode, lease).await,
                reason = self.keep_alive(lease) => reason,
            };
            backoff.run_ended(started.elapsed());
            tracing::warn!(instance = %self.instance, lease = lease.id, %reason,
                "etcd keep-alive interrupted; restoring the registration");
            lease = tokio::select! {
                mode = stop.stopped() => return self.stop(mode, lease).await,
                lease = self.recover(lease, &mut backoff) => lease,
            };
        }
    }

    /// Writes the key under `lease`.
    async fn put(&self, lease: Lease) -> Result<(), RegistryError> {
        call(self.timeout, || {
            let mut kv = self.client.kv_client();
            let options = PutOptions::new().with_lease(lease.id);
            async move {
                kv.put(self.key.as_str(), self.value.as_str(), Some(options))
                    .await
            }
        })
        .await
        .map(drop)
    }

    /// Renews `lease` every period until something goes wrong; returns what.
    async fn keep_alive(&self, lease: Lease) -> RegistryError {
        let started = call(self.timeout, || {
            let mut leases = self.client.lease_client();
            async move { leases.keep_alive(lease.id).await }
        });
        let (mut sender, mut answers) = match started.await {
            Ok(pair) => pair,
            Err(e) => return e,
        };
        let mut tick = tokio::time::interval(lease.period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        // Past this without an answer the stream is taken as broken (and past
        // the TTL the lease is likely gone anyway).
        let patience = self.timeout.min(lease.ttl);
        let mut unanswered_since: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if unanswered_since.is_some_and(|t| t.elapsed() > patience) {
                        return RegistryError::Unavailable(format!(
                            "keep-alive unanswered for {patience:?}"
                        ));
                    }
                    if let Err(e) = sender.keep_alive().await {
                        return registry_error(e);
                    }
                    unanswered_since.get_or_insert_with(Instant::now);
                }
                answer = answers.message() => match answer {
                    Ok(Some(a)) if a.ttl() > 0 => unanswered_since = None,
                    Ok(Some(_)) => return RegistryError::Other("the lease expired".into()),
                    Ok(None) => {
                        return RegistryError::Unavailable("etcd closed the keep-alive stream".into())
                    }
                    Err(e) => return registry_error(e),
                },
            }
        }
    }

    /// Retries with backoff until the registration is back: on the old lease
    /// if it survived, on a new one otherwise.
    async fn recover(&self, old: Lease, backoff: &mut Backoff) -> Lease {
        loop {
            tokio::time::sleep(backoff.next_delay()).await;
            match self.try_recover(old).await {
                Ok(lease) => return lease,
                Err(error) => tracing::debug!(instance = %self.instance, %error,
                    "etcd still unavailable; will retry"),
            }
        }
    }

    async fn try_recover(&self, old: Lease) -> Result<Lease, RegistryError> {
        let remaining = call(self.timeout, || {
            let mut leases = self.client.lease_client();
            async move {
                match leases.time_to_live(old.id, None).await {
                    Ok(answer) => Ok(answer.ttl()),
                    Err(e) if is_not_found(&e) => Ok(-1),
                    Err(e) => Err(e),
                }
            }
        })
        .await?;
        if remaining > 0 {
            self.put(old).await?;
            tracing::info!(instance = %self.instance, lease = old.id,
                "etcd keep-alive restored; the lease survived");
            return Ok(old);
        }
        let lease = self.register().await?;
        metrics::reregistered();
        tracing::warn!(instance = %self.instance, key = %self.key, old_lease = old.id,
            lease = lease.id, "registration was lost by etcd; registered again");
        Ok(lease)
    }

    /// Ends the registration as asked.
    async fn stop(&self, mode: StopMode, lease: Lease) -> Result<(), RegistryError> {
        match mode {
            StopMode::Abandon => {
                tracing::debug!(instance = %self.instance, lease = lease.id,
                    "registration abandoned; it expires with its lease");
                Ok(())
            }
            StopMode::Deregister => {
                self.delete_if_ours(lease).await?;
                self.revoke(lease).await?;
                tracing::debug!(instance = %self.instance, key = %self.key, "deregistered from etcd");
                Ok(())
            }
        }
    }

    /// Deletes the key unless a later registration of the same instance
    /// (under another lease) replaced it.
    async fn delete_if_ours(&self, lease: Lease) -> Result<(), RegistryError> {
        call(self.timeout, || {
            let mut kv = self.client.kv_client();
            let txn = Txn::new()
                .when([Compare::lease(
                    self.key.as_str(),
                    CompareOp::Equal,
                    lease.id,
                )])
                .and_then([TxnOp::delete(self.key.as_str(), None)]);
            async move { kv.txn(txn).await }
        })
        .await
        .map(drop)
    }

    /// Revokes the lease; one that already expired is fine.
    async fn revoke(&self, lease: Lease) -> Result<(), RegistryError> {
        call(self.timeout, || {
            let mut leases = self.client.lease_client();
            async move {
                match leases.revoke(lease.id).await {
                    Err(e) if is_not_found(&e) => Ok(()),
                    other => other.map(drop),
                }
            }
        })
        .await
    }
}
