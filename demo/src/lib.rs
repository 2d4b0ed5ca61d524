//! # fyerrpc-demo
//!
//! The fyerrpc greet cluster: `greet-server` (a greet service with fault
//! injection, gRPC and HTTP health, Prometheus metrics, registration in a
//! registry) and `greet-client` (a fyerrpc client that runs the failover,
//! circuit breaker, concurrency and load scenarios and prints the final
//! metrics).
//!
//! | module | concern |
//! |---|---|
//! | [`proto`] | the generated greet service |
//! | [`server`] | `greet-server`: service, fault detector, health port, metrics |
//! | [`client`] | `greet-client`: scenarios and the final report |
//! | [`registry`] | choosing a registry backend from flags |
//! | `tls` | TLS flags of both binaries (feature `tls`) |

#![warn(missing_docs)]

pub mod client;
pub mod flags;
pub mod logging;
pub mod proto;
pub mod registry;
pub mod server;
#[cfg(feature = "tls")]
pub mod tls;

/// An error and its sources, joined with ": ".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}
