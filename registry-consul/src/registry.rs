//! [`ConsulRegistry`]: the [`Registry`] implementation.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fyerrpc::registry::{
    ChangeStream, RegisterOptions, Registration, SharedWatches, WatchEvent, WatchStream,
};
use fyerrpc::{Instance, Registry, RegistryError};

use crate::client::ConsulClient;
use crate::codec::{registration, service_id, Checks};
use crate::config::{CheckConfig, ConfigError, ConsulConfig};
use crate::discovery::{self, Warnings};
use crate::keeper::{Hook, Keeper, KeeperOptions};

/// A [`Registry`] on Consul. See the [crate docs](crate).
#[derive(Clone)]
pub struct ConsulRegistry {
    client: ConsulClient,
    /// Client of deregistrations (short timeout).
    deregister_client: ConsulClient,
    check: CheckConfig,
    request_timeout: Duration,
    deregister_timeout: Duration,
    warnings: Arc<Warnings>,
    before_restore: Option<Hook>,
    /// One blocking-query loop per (service, version), shared by the clones.
    watches: SharedWatches,
}

impl std::fmt::Debug for ConsulRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulRegistry")
            .field("client", &self.client)
            .field("check", &self.check)
            .field("request_timeout", &self.request_timeout)
            .field("deregister_timeout", &self.deregister_timeout)
            .finish_non_exhaustive()
    }
}

impl ConsulRegistry {
    /// A registry talking to the agent of `config`. Validates the options
    /// and reads the TLS files; connects lazily, on the first call.
    pub fn new(config: ConsulConfig) -> Result<Self, ConfigError> {
        let client = ConsulClient::new(&config)?;
        crate::metrics::describe();
        Ok(Self {
            deregister_client: client.with_request_timeout(config.deregister_timeout),
            client,
            check: config.check,
            request_timeout: config.request_timeout,
            deregister_timeout: config.deregister_timeout,
            warnings: Arc::new(Warnings::default()),
            before_restore: None,
            watches: SharedWatches::new(),
        })
    }

    /// The typed HTTP client this registry uses.
    pub fn client(&self) -> &ConsulClient {
        &self.client
    }

    /// How many blocking-query loops [`Registry::watch_changes`] keeps
    /// running now: one per watched (service, version), however many
    /// clients (of this handle and its clones) follow it.
    pub fn watch_count(&self) -> usize {
        self.watches.upstream_count()
    }

    /// How many [`Registry::watch_changes`] streams of this handle and its
    /// clones are open now.
    pub fn watcher_count(&self) -> usize {
        self.watches.subscriber_count()
    }

    /// This registry as a shared trait object.
    pub fn into_dyn(self) -> Arc<dyn Registry> {
        Arc::new(self)
    }

    /// Test hook: `hook` is awaited each time a keeper is about to register
    /// its service again (after the agent lost it), so that a test can hold
    /// a recovery at that point and race a shutdown against it.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn with_restore_hook<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.before_restore = Some(Arc::new(move || Box::pin(hook())));
        self
    }

    fn checks<'a>(
        &'a self,
        instance: &Instance,
        options: &'a RegisterOptions,
    ) -> Result<Checks<'a>, RegistryError> {
        let ttl = options.checked_ttl()?;
        let url = options
            .health_url
            .as_deref()
            .or(self.check.http_url.as_deref());
        if !self.check.ttl_check && url.is_none() {
            return Err(RegistryError::InvalidArgument(format!(
                "{instance} would be registered with Consul without any health check, so it \
                 would stay passing after its process died: keep the TTL check \
                 (CheckConfig::ttl_check) or give a health URL"
            )));
        }
        Ok(Checks {
            ttl: self.check.ttl_check.then_some(ttl),
            http: url.map(|u| (u, self.check.http_interval)),
            deregister_critical_after: self.check.deregister_critical_service_after,
        })
    }
}

/// A random nonce identifying one registration.
fn nonce() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

#[async_trait]
impl Registry for ConsulRegistry {
    async fn register(
        &self,
        instance: Instance,
        options: RegisterOptions,
    ) -> Result<Registration, RegistryError> {
        let checks = self.checks(&instance, &options)?;
        let nonce = nonce();
        let (service, problems) = registration(&instance, &checks, &nonce);
        for problem in &problems {
            tracing::warn!(service = %instance.service(), id = %problem.id, problem = %problem.what,
                "metadata not registered with Consul");
        }
        self.client.register_service(&service).await?;
        tracing::debug!(%instance, consul_id = %service.id, "registered with Consul");
        let keeper = Keeper::new(
            self.client.clone(),
            service,
            nonce,
            KeeperOptions {
                period: options.keepalive_period(),
                ttl_check: checks.ttl.is_some(),
                request_timeout: self.request_timeout,
                deregister_timeout: self.deregister_timeout,
                before_restore: self.before_restore.clone(),
            },
        );
        Ok(Registration::spawn(instance, move |stop| keeper.run(stop)))
    }

    async fn deregister(&self, instance: &Instance) -> Result<(), RegistryError> {
        Ok(self
            .deregister_client
            .deregister_service(&service_id(instance))
            .await?)
    }

    async fn discover(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<Vec<Instance>, RegistryError> {
        discovery::discover(&self.client, &self.warnings, service, version).await
    }

    async fn watch(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<WatchStream, RegistryError> {
        Ok(discovery::watch(
            self.client.clone(),
            service.to_owned(),
            version.map(str::to_owned),
        ))
    }

    /// Blocking queries return the whole set; the shared watch diffs each
    /// answer against the set its subscribers have, by instance id, and
    /// hands out only what changed.
    async fn watch_changes(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<ChangeStream, RegistryError> {
        let client = self.client.clone();
        let owned = (service.to_owned(), version.map(str::to_owned));
        self.watches
            .subscribe(service, version, move || async move {
                let (service, version) = owned;
                let sets = discovery::watch(client, service, version);
                let changes = futures_util::StreamExt::map(sets, |set| set.map(WatchEvent::Full));
                Ok(Box::pin(changes) as ChangeStream)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_registration_without_any_check_is_refused() {
        let check = CheckConfig {
            ttl_check: false,
            ..CheckConfig::default()
        };
        // Refused before anything is sent (nothing listens there).
        let registry =
            ConsulRegistry::new(ConsulConfig::from_address("http://127.0.0.1:9").with_check(check))
                .unwrap();
        let inst = Instance::new("a", "S", "127.0.0.1:1").unwrap();
        let err = registry
            .register(inst, RegisterOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, RegistryError::InvalidArgument(_)), "{err}");
        assert!(
            err.to_string().contains("without any health check"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn absurd_ttls_are_refused_even_without_a_ttl_check() {
        let check = CheckConfig {
            ttl_check: false,
            http_url: Some("http://127.0.0.1:9/health".into()),
            ..CheckConfig::default()
        };
        let registry =
            ConsulRegistry::new(ConsulConfig::from_address("http://127.0.0.1:9").with_check(check))
                .unwrap();
        for ttl in [Duration::from_nanos(1), Duration::MAX] {
            let inst = Instance::new("a", "S", "127.0.0.1:1").unwrap();
            let err = registry
                .register(inst, RegisterOptions::default().with_ttl(ttl))
                .await
                .unwrap_err();
            assert!(matches!(err, RegistryError::InvalidArgument(_)), "{err}");
        }
    }
}
