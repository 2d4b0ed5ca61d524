//! [`ConsulRegistry`]: the [`Registry`] implementation.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fyerrpc::registry::{RegisterOptions, Registration, WatchStream};
use fyerrpc::{Instance, Registry, RegistryError};

use crate::client::ConsulClient;
use crate::codec::{registration, Checks};
use crate::config::{CheckConfig, ConfigError, ConsulConfig};
use crate::discovery;
use crate::keeper::Keeper;

/// A [`Registry`] on Consul. See the [crate docs](crate).
#[derive(Debug, Clone)]
pub struct ConsulRegistry {
    client: ConsulClient,
    check: CheckConfig,
    request_timeout: Duration,
}

impl ConsulRegistry {
    /// A registry talking to the agent of `config`. Validates the options;
    /// connects lazily, on the first call.
    pub fn new(config: ConsulConfig) -> Result<Self, ConfigError> {
        let client = ConsulClient::new(&config)?;
        crate::metrics::describe();
        Ok(Self {
            client,
            check: config.check,
            request_timeout: config.request_timeout,
        })
    }

    /// The typed HTTP client this registry uses.
    pub fn client(&self) -> &ConsulClient {
        &self.client
    }

    /// This registry as a shared trait object.
    pub fn into_dyn(self) -> Arc<dyn Registry> {
        Arc::new(self)
    }

    fn checks<'a>(&'a self, options: &'a RegisterOptions) -> Result<Checks<'a>, RegistryError> {
        let ttl = self
            .check
            .ttl_check
            .then(|| options.checked_ttl())
            .transpose()?;
        let url = options
            .health_url
            .as_deref()
            .or(self.check.http_url.as_deref());
        Ok(Checks {
            ttl,
            http: url.map(|u| (u, self.check.http_interval)),
            deregister_critical_after: self.check.deregister_critical_service_after,
        })
    }
}

#[async_trait]
impl Registry for ConsulRegistry {
    async fn register(
        &self,
        instance: Instance,
        options: RegisterOptions,
    ) -> Result<Registration, RegistryError> {
        let checks = self.checks(&options)?;
        let (service, problems) = registration(&instance, &checks);
        for problem in &problems {
            tracing::warn!(service = %instance.service(), id = %problem.id, problem = %problem.what,
                "metadata not registered with Consul");
        }
        self.client.register_service(&service).await?;
        tracing::debug!(%instance, "registered with Consul");
        let keeper = Keeper::new(
            self.client.clone(),
            service,
            checks.ttl,
            self.request_timeout,
        );
        Ok(Registration::spawn(instance, move |stop| keeper.run(stop)))
    }

    async fn deregister(&self, instance: &Instance) -> Result<(), RegistryError> {
        Ok(self.client.deregister_service(instance.id()).await?)
    }

    async fn discover(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<Vec<Instance>, RegistryError> {
        discovery::discover(&self.client, service, version).await
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
}
