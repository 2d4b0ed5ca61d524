//! # fyerrpc
//!
//! Service discovery, client-side load balancing, failover, circuit breaking,
//! health checking and metrics for [tonic] gRPC services, with the service
//! registry as a plug-in (static list, etcd, Consul, or your own).
//!
//! The crate is laid out one concern per module:
//!
//! | module | concern |
//! |---|---|
//! | [`instance`] | the [`Instance`] model and its shared JSON encoding |
//! | [`registry`] | the [`Registry`] trait, registration handles, conformance suite |
//! | [`discovery`] | instance selection (filters) before balancing |
//! | [`balance`] | the [`Balancer`] trait and its policies |
//! | [`breaker`] | the [`Breaker`] trait: consecutive failures, error rate |
//! | [`failover`] | retry policy: backoff, budget, what is retryable |
//! | [`health`] | active `grpc.health.v1` checking |
//! | [`client`] | the resilient client: a `tower::Service` tonic clients use |
//! | [`server`] | registration lifecycle for servers |
//! | [`metrics`] | every metric name, and the in-process stats snapshot |
//! | `tls` | TLS settings of the client (feature `tls`) |

#![warn(missing_docs)]

pub mod balance;
pub mod breaker;
pub mod client;
pub mod discovery;
pub mod failover;
pub mod health;
pub mod instance;
pub mod metrics;
pub mod registry;
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;

pub use balance::Balancer;
pub use breaker::Breaker;
pub use client::{Client, ClientBuilder};
pub use instance::{Instance, InstanceError, Status};
pub use registry::{RegisterOptions, Registration, Registry, RegistryError, WatchEvent};
