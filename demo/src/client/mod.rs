//! `greet-client`: the example's scenarios through a fyerrpc [`Client`],
//! ending with the final metrics.
//!
//! [`run`] builds the client from [`ClientArgs`], waits for instances, runs
//! the chosen [`Scenario`] and returns the [`Report`]; the binary prints it
//! as a table or as JSON. The compare scenario runs through
//! [`compare::run`] instead and returns a [`Comparison`].

pub mod compare;
pub mod config;
pub mod console;
pub mod report;
pub mod scenario;

pub use compare::Comparison;
pub use config::{ClientArgs, Output, Scenario};
pub use console::Console;
pub use report::{Phase, Report, Tally};
pub use scenario::Runner;

use fyerrpc::client::ClientError;
use fyerrpc::Client;

use crate::registry::RegistrySetupError;

/// Why the client could not run its scenarios.
#[derive(Debug, thiserror::Error)]
pub enum ClientRunError {
    /// The registry could not be set up.
    #[error(transparent)]
    Registry(#[from] RegistrySetupError),
    /// The client could not be built, or found no instance.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The breaker flags do not make a valid policy.
    #[error("invalid circuit breaker settings: {0}")]
    Breaker(#[source] fyerrpc::breaker::BreakerConfigError),
    /// The balancer name is unknown.
    #[error(transparent)]
    Balancer(fyerrpc::balance::UnknownPolicy),
    /// The compare scenario's chart could not be written.
    #[error(transparent)]
    Plot(#[from] compare::PlotError),
    /// The TLS flags do not give usable settings.
    #[cfg(feature = "tls")]
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
}

/// Builds the client, waits for instances, runs the scenario and returns
/// the final report. Narration goes to `console`.
pub async fn run(args: ClientArgs, console: Console) -> Result<Report, ClientRunError> {
    let client: Client = args.build_client().await?;
    client.ready(args.ready_timeout).await?;
    let names: Vec<String> = client.instances().iter().map(ToString::to_string).collect();
    console.line(format!(
        "Discovered {} instance(s): {}",
        names.len(),
        names.join(", ")
    ));

    let scenario = args.scenario;
    let balancer = args
        .balancer
        .clone()
        .unwrap_or_else(|| "least_request (default)".into());
    let mut runner = Runner::new(args, client.clone(), console);
    runner.run(scenario).await;
    let panic_picks_after_waits = runner.panic_picks_after_waits();
    Ok(Report {
        scenario: scenario.as_str().to_owned(),
        balancer,
        greetings: runner.greetings(),
        panic_picks_after_waits,
        phases: runner.into_phases(),
        stats: client.stats(),
    })
}
