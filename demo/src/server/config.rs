//! The `greet-server` command line.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;

use super::detector::FaultConfig;
use crate::flags;
use crate::registry::RegistryArgs;

/// Offset from the gRPC port to the default health port.
pub const HEALTH_PORT_OFFSET: u16 = 10_000;

/// A greet server with fault injection, health and metrics endpoints.
#[derive(Debug, Clone, Parser)]
#[command(name = "greet-server", version)]
pub struct ServerArgs {
    /// gRPC port (0 picks a free one).
    #[arg(long, default_value_t = 8001)]
    pub port: u16,
    /// Interface to listen on (gRPC).
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub host: IpAddr,
    /// Address registered for clients, host:port [default: the listen
    /// address, with 127.0.0.1 for an unspecified host].
    #[arg(long)]
    pub advertise: Option<String>,
    /// Instance id [default: server-PORT].
    #[arg(long)]
    pub id: Option<String>,
    /// Fail every call for --fail-duration after this many calls (0: never).
    #[arg(long, default_value_t = 0)]
    pub fail_after: u64,
    /// How long a failure window lasts.
    #[arg(long, default_value = "10s", value_parser = flags::positive_duration)]
    pub fail_duration: Duration,
    /// Probability (0..1) that any call fails.
    #[arg(long, default_value_t = 0.0, value_parser = flags::rate)]
    pub fail_rate: f64,
    /// Delay added to every SayHello call, e.g. 20ms (0: none).
    #[arg(long, env = "FYERRPC_LATENCY", default_value = "0s", value_parser = flags::duration)]
    pub latency: Duration,
    /// Random extra delay per call, uniform between 0 and this.
    #[arg(long, env = "FYERRPC_LATENCY_JITTER", default_value = "0s", value_parser = flags::duration)]
    pub latency_jitter: Duration,
    /// Registry backend and its connection options.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// HTTP port for /health, /status and /metrics [default: port+10000].
    #[arg(long)]
    pub health_port: Option<u16>,
    /// Interface of the /health, /status and /metrics port (0.0.0.0 to let
    /// a Prometheus server on another host scrape /metrics).
    #[arg(long, env = "FYERRPC_HEALTH_HOST", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub health_host: IpAddr,
    /// TLS: server certificate and key, and the CA of client certificates.
    #[cfg(feature = "tls")]
    #[command(flatten)]
    pub tls: crate::tls::ServerTlsArgs,
    /// How long the registration outlives a stopped keep-alive (1s to 24h).
    #[arg(long, default_value = "10s", value_parser = flags::ttl)]
    pub ttl: Duration,
    /// Start serving even if the registry is down, and register in the
    /// background, retrying with backoff (logged) until it succeeds.
    #[arg(long, env = "FYERRPC_REGISTER_IN_BACKGROUND")]
    pub register_in_background: bool,
    /// How long in-flight calls may take to finish at shutdown.
    #[arg(long, default_value = "10s", value_parser = flags::duration)]
    pub drain_timeout: Duration,
    /// How long the server keeps serving after deregistering at shutdown,
    /// before it stops accepting (clients learn of the departure meanwhile).
    #[arg(long, default_value = "1s", value_parser = flags::duration)]
    pub lame_duck: Duration,
    /// How long a closed connection keeps reading what its client still
    /// sends (so a request sent just after the GOAWAY is refused cleanly,
    /// not reset); 0s closes at once.
    #[arg(long, default_value = "2s", value_parser = flags::duration)]
    pub linger: Duration,
}

/// A flag combination that is invalid although each flag parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// port + 10000 does not fit.
    #[error(
        "--port {0} leaves no room for the default health port (port+10000): pass --health-port"
    )]
    NoDefaultHealthPort(u16),
    /// The health port equals the gRPC port.
    #[error("--health-port must differ from --port ({0})")]
    SamePorts(u16),
}

impl ServerArgs {
    /// The health port: `--health-port`, or port+10000 (0 when the gRPC
    /// port is 0).
    pub fn health_port(&self) -> Result<u16, ConfigError> {
        let port = match (self.health_port, self.port) {
            (Some(p), _) => p,
            (None, 0) => 0,
            (None, p) => p
                .checked_add(HEALTH_PORT_OFFSET)
                .ok_or(ConfigError::NoDefaultHealthPort(p))?,
        };
        if port != 0 && port == self.port {
            return Err(ConfigError::SamePorts(port));
        }
        Ok(port)
    }

    /// Checks the combination of flags.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.health_port().map(|_| ())
    }

    /// The gRPC listen address.
    pub fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// The fault settings.
    pub fn faults(&self) -> FaultConfig {
        FaultConfig {
            fail_after: self.fail_after,
            fail_duration: self.fail_duration,
            fail_rate: self.fail_rate,
            latency: self.latency,
            latency_jitter: self.latency_jitter,
        }
    }

    /// The address to register for a server listening on `bound`.
    pub fn advertised(&self, bound: SocketAddr) -> String {
        if let Some(a) = &self.advertise {
            return a.clone();
        }
        let ip = if bound.ip().is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            bound.ip()
        };
        SocketAddr::new(ip, bound.port()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServerArgs, clap::Error> {
        ServerArgs::try_parse_from(std::iter::once("greet-server").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_follow_the_example() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.port, 8001);
        assert_eq!(a.health_port(), Ok(18001));
        assert_eq!(a.fail_duration, Duration::from_secs(10));
        assert_eq!(a.registry.registry, crate::registry::RegistryKind::Static);
        assert!(!a.register_in_background);
        assert_eq!(a.faults().delay(), Duration::ZERO);
        let a = parse(&["--latency", "20ms", "--latency-jitter", "5ms"]).unwrap();
        assert_eq!(a.faults().latency, Duration::from_millis(20));
        assert_eq!(a.faults().latency_jitter, Duration::from_millis(5));
        assert_eq!(a.health_host, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(a.linger, Duration::from_secs(2));
        assert_eq!(parse(&["--linger", "0s"]).unwrap().linger, Duration::ZERO);
        let a = parse(&["--port", "0", "--register-in-background"]).unwrap();
        assert!(a.register_in_background);
        assert_eq!(a.health_port(), Ok(0));
        assert_eq!(
            a.advertised("0.0.0.0:4242".parse().unwrap()),
            "127.0.0.1:4242"
        );
    }

    #[test]
    fn rejects_invalid_flags() {
        for bad in [
            &["--fail-rate", "1.5"][..],
            &["--fail-rate", "-0.1"],
            &["--fail-duration", "ten"],
            &["--fail-duration", "0s"],
            &["--port", "70000"],
            &["--ttl", "0s"],
            &["--ttl", "1ns"],
            &["--ttl", "1000d"],
            &["--registry", "zookeeper"],
            &["--fail-after", "-3"],
            &["--health-host", "somewhere"],
            &["--latency", "fast"],
            &["--latency-jitter", "-1ms"],
            &["--linger", "a while"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let a = parse(&["--port", "60000"]).unwrap();
        assert_eq!(a.validate(), Err(ConfigError::NoDefaultHealthPort(60000)));
        let a = parse(&["--port", "9000", "--health-port", "9000"]).unwrap();
        assert_eq!(a.validate(), Err(ConfigError::SamePorts(9000)));
    }
}
