//! [`ConsulClient`]: the typed calls this crate makes to the Consul HTTP API
//! (agent service registration and TTL checks, health and catalog reads).

use std::collections::BTreeMap;
use std::time::Duration;

use http::Method;
use serde::de::DeserializeOwned;

use crate::config::{ConfigError, ConsulConfig};
use crate::transport::{encode, ApiError, BaseUri, Call, Reply, Transport};
use crate::wire::{go_duration, AgentService, CheckStatus, ServiceEntry, ServiceRegistration};

/// A value read with a blocking query, and the `X-Consul-Index` to pass to
/// the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Indexed<T> {
    /// The value.
    pub value: T,
    /// The index Consul reported (`None` if it sent no valid
    /// `X-Consul-Index`, e.g. through a proxy that drops it).
    pub index: Option<u64>,
    /// Whether the ACL token kept Consul from returning some results
    /// (`X-Consul-Results-Filtered-By-ACLs`): the answer may be partial.
    pub filtered_by_acls: bool,
}

/// A thin typed client of one Consul agent's HTTP API.
///
/// Every request carries the configured ACL token; catalog and health
/// queries carry the configured datacenter. Cheap to clone (connections are
/// pooled and shared).
#[derive(Debug, Clone)]
pub struct ConsulClient {
    transport: Transport,
    datacenter: Option<String>,
    wait: Duration,
}

impl ConsulClient {
    /// A client for `config` (validated; nothing is contacted yet).
    pub fn new(config: &ConsulConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let base = BaseUri::parse(&config.address)?;
        Ok(Self {
            transport: Transport::new(
                base,
                config.token.as_deref(),
                config.request_timeout,
                &config.tls,
            )?,
            datacenter: config.datacenter.clone(),
            wait: config.wait,
        })
    }

    /// The same client with another timeout for each request (keep-alive
    /// calls use one shorter than their period).
    pub fn with_request_timeout(&self, timeout: Duration) -> Self {
        let mut c = self.clone();
        c.transport = c.transport.with_timeout(timeout);
        c
    }

    /// The wait of blocking queries.
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// `PUT /v1/agent/service/register?replace-existing-checks`: registers
    /// (or replaces) a service and its checks on the agent.
    pub async fn register_service(&self, service: &ServiceRegistration) -> Result<(), ApiError> {
        let body = serde_json::to_vec(service).map_err(|e| ApiError::Decode {
            uri: "/v1/agent/service/register".into(),
            reason: e.to_string(),
        })?;
        let call = Call::new(Method::PUT, "/v1/agent/service/register".into())
            .query("replace-existing-checks", "true")
            .json(body);
        self.transport.send(call).await.map(drop)
    }

    /// `PUT /v1/agent/service/deregister/<id>`. An unknown service is no
    /// error.
    pub async fn deregister_service(&self, id: &str) -> Result<(), ApiError> {
        let path = format!("/v1/agent/service/deregister/{}", encode(id));
        match self.transport.send(Call::new(Method::PUT, path)).await {
            Err(e) if e.status() == Some(404) => Ok(()),
            other => other.map(drop),
        }
    }

    /// `PUT /v1/agent/check/{pass,warn,fail}/<check_id>`: sets a TTL check's
    /// status and restarts its TTL. An unknown check is an error for which
    /// [`ApiError::is_unknown`] holds.
    pub async fn update_ttl_check(
        &self,
        check_id: &str,
        status: CheckStatus,
    ) -> Result<(), ApiError> {
        let path = format!("/v1/agent/check/{}/{}", status.endpoint(), encode(check_id));
        self.transport
            .send(Call::new(Method::PUT, path))
            .await
            .map(drop)
    }

    /// `GET /v1/agent/service/<id>`: whether the agent knows the service.
    pub async fn agent_has_service(&self, id: &str) -> Result<bool, ApiError> {
        Ok(self.agent_service(id).await?.is_some())
    }

    /// `GET /v1/agent/service/<id>`: the agent's definition of a service
    /// (`None` when it does not know it).
    pub async fn agent_service(&self, id: &str) -> Result<Option<AgentService>, ApiError> {
        let path = format!("/v1/agent/service/{}", encode(id));
        let uri = path.clone();
        match self.transport.send(Call::new(Method::GET, path)).await {
            Ok(reply) => {
                serde_json::from_slice(&reply.body)
                    .map(Some)
                    .map_err(|e| ApiError::Decode {
                        uri,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/health/service/<name>[?passing]`: the service's instances
    /// with their node and checks. With `index`, a blocking query that
    /// returns when the index moves past it or after the configured wait.
    pub async fn health_service(
        &self,
        name: &str,
        passing_only: bool,
        index: Option<u64>,
    ) -> Result<Indexed<Vec<ServiceEntry>>, ApiError> {
        let path = format!("/v1/health/service/{}", encode(name));
        let mut call = Call::new(Method::GET, path);
        if passing_only {
            call = call.query("passing", "");
        }
        if let Some(index) = index {
            call = call
                .query("index", index.to_string())
                .query("wait", go_duration(self.wait));
        }
        self.read(call).await
    }

    /// `GET /v1/catalog/services`: every service name with its tags.
    pub async fn catalog_services(
        &self,
    ) -> Result<Indexed<BTreeMap<String, Vec<String>>>, ApiError> {
        let call = Call::new(Method::GET, "/v1/catalog/services".into());
        self.read(call).await
    }

    /// Sends a read (adding the datacenter) and decodes its JSON answer.
    async fn read<T: DeserializeOwned>(&self, mut call: Call<'_>) -> Result<Indexed<T>, ApiError> {
        if let Some(dc) = &self.datacenter {
            call = call.query("dc", dc.clone());
        }
        let path = call.path.clone();
        let Reply {
            index,
            filtered_by_acls,
            body,
        } = self.transport.send(call).await?;
        let value = serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
            uri: path,
            reason: e.to_string(),
        })?;
        Ok(Indexed {
            value,
            index,
            filtered_by_acls,
        })
    }
}
