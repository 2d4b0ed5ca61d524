//! The `greet-client` command line, and the fyerrpc client it builds.

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use fyerrpc::breaker::{ConsecutiveFailures, OpenPolicy};
use fyerrpc::failover::{FailoverConfig, HedgingPolicy, Strategy};
use fyerrpc::health::HealthCheckConfig;
use fyerrpc::{Client, Registry};

use super::ClientRunError;
use crate::flags;
use crate::proto::{GET_GREET_STATS, SAY_HELLO, SERVICE_NAME};
use crate::registry::RegistryArgs;

/// The servers of the example cluster.
pub const DEFAULT_SERVERS: &str = "localhost:8001,localhost:8002,localhost:8003";

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// basic, failover, breaker and concurrent, in that order.
    All,
    /// A few plain calls.
    Basic,
    /// Fast calls that trip the failing server, a wait for its recovery,
    /// and a check that it serves again.
    Failover,
    /// Calls with a tiny deadline that trip a circuit breaker, a wait, and a
    /// check that calls succeed again.
    Breaker,
    /// Calls in parallel.
    Concurrent,
    /// --requests calls with --concurrency in flight.
    Load,
    /// Each of --balancers in turn, for --duration with --concurrency in
    /// flight, through a fresh client: one table (and --plot).
    Compare,
}

impl Scenario {
    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Basic => "basic",
            Self::Failover => "failover",
            Self::Breaker => "breaker",
            Self::Concurrent => "concurrent",
            Self::Load => "load",
            Self::Compare => "compare",
        }
    }
}

/// How the final metrics are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A readable table, with the scenarios' narration on stdout.
    Table,
    /// One JSON object on stdout; the narration goes to stderr.
    Json,
}

/// Runs the example's scenarios against the greet cluster through a fyerrpc
/// client and prints the final metrics.
#[derive(Debug, Clone, Parser)]
#[command(name = "greet-client", version)]
pub struct ClientArgs {
    /// Registry backend and its connection options.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Server addresses for the static registry, comma-separated.
    #[arg(long, default_value = DEFAULT_SERVERS)]
    pub servers: String,
    /// Balancing policy: round_robin, weighted_round_robin, random,
    /// weighted_random, least_request (alias p2c), peak_ewma, ring_hash,
    /// maglev [default: the client's, least_request].
    #[arg(long, value_parser = parse_balancer)]
    pub balancer: Option<String>,

    /// Retries after a failed attempt.
    #[arg(long, default_value_t = 3)]
    pub max_retries: u32,
    /// Delay before the first retry.
    #[arg(long, default_value = "200ms", value_parser = flags::duration)]
    pub retry_interval: Duration,
    /// Growth of the retry delay per retry.
    #[arg(long, default_value_t = 1.5, value_parser = flags::multiplier)]
    pub backoff: f64,
    /// Largest delay between attempts.
    #[arg(long, default_value = "5s", value_parser = flags::duration)]
    pub max_retry_delay: Duration,
    /// Which untried instance a retry goes to: next, random or best.
    #[arg(long, default_value = "next", value_parser = parse_strategy)]
    pub failover_strategy: Strategy,
    /// Consecutive failures that open an instance's circuit breaker.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_failures: u32,
    /// How long an open breaker keeps its instance out.
    #[arg(long, default_value = "5s", value_parser = flags::positive_duration)]
    pub breaker_open: Duration,
    /// Time limit to connect to an instance.
    #[arg(long, default_value = "1s", value_parser = flags::positive_duration)]
    pub connect_timeout: Duration,
    /// Deadline of a call that sets none.
    #[arg(long, default_value = "2s", value_parser = flags::positive_duration)]
    pub request_timeout: Duration,
    /// Interval of active gRPC health checks.
    #[arg(long, default_value = "2s", value_parser = flags::positive_duration)]
    pub health_interval: Duration,
    /// Do not run active gRPC health checks.
    #[arg(long)]
    pub no_health_check: bool,
    /// How long to wait for the first instances.
    #[arg(long, default_value = "10s", value_parser = flags::positive_duration)]
    pub ready_timeout: Duration,

    /// What to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    pub scenario: Scenario,
    /// Calls of the basic scenario.
    #[arg(long, default_value_t = 3)]
    pub basic_calls: u64,
    /// Fast calls of the failover scenario. The original example sent 120
    /// calls to one instance at a time; balanced over three servers, 360
    /// calls give server A about 120, past its --fail-after 100.
    #[arg(long, default_value_t = 360)]
    pub failover_calls: u64,
    /// Wait for the failing server to recover (its --fail-duration and some).
    #[arg(long, default_value = "12s", value_parser = flags::duration)]
    pub recovery_wait: Duration,
    /// Calls after a recovery wait that check the cluster serves again.
    #[arg(long, default_value_t = 10)]
    pub verify_calls: u64,
    /// Most calls the breaker scenario sends, one at a time, to trip a
    /// breaker on the servers' own failures (it stops at the first trip).
    /// With server A failing after 100 of its calls, 1000 leave margin.
    #[arg(long, default_value_t = 1000, value_parser = flags::positive)]
    pub breaker_calls: u64,
    /// Longest wait, after a trip, for every breaker to close again
    /// [default: 4 x --breaker-open + 15s, room for A's 10 s failure window].
    #[arg(long, value_parser = flags::duration)]
    pub breaker_wait: Option<Duration>,
    /// Calls of the concurrent scenario, all at once.
    #[arg(long, default_value_t = 10, value_parser = flags::positive)]
    pub concurrent_calls: u64,
    /// Calls of the load scenario.
    #[arg(long, default_value_t = 1000, value_parser = flags::positive)]
    pub requests: u64,
    /// Run the load scenario for this long instead of a number of calls;
    /// in the compare scenario, how long each policy runs [default: 10s].
    #[arg(long, value_parser = flags::positive_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Calls in flight in the load scenario.
    #[arg(long, default_value_t = 10, value_parser = flags::positive)]
    pub concurrency: u64,

    /// Hedge GetGreetStats: after this long without an answer, send a copy
    /// of the call to another instance (the first answer wins, the other
    /// attempt is cancelled).
    #[arg(long, env = "FYERRPC_HEDGE_DELAY", value_parser = flags::duration,
        conflicts_with = "hedge_percentile")]
    pub hedge_delay: Option<Duration>,
    /// Hedge GetGreetStats after this percentile (0-100, exclusive) of its
    /// recent latency instead of a fixed delay, never sooner than
    /// --hedge-min-delay.
    #[arg(long, env = "FYERRPC_HEDGE_PERCENTILE", value_parser = parse_percentile)]
    pub hedge_percentile: Option<f64>,
    /// The shortest adaptive hedging delay (with --hedge-percentile).
    #[arg(long, env = "FYERRPC_HEDGE_MIN_DELAY", default_value = "5ms",
        value_parser = flags::duration)]
    pub hedge_min_delay: Duration,
    /// Attempts a hedged call may make in all, the first included (2-5).
    #[arg(long, env = "FYERRPC_HEDGE_MAX_ATTEMPTS", default_value_t = 2,
        value_parser = clap::value_parser!(u32).range(2..=5))]
    pub hedge_max_attempts: u32,
    /// Hedge SayHello too (with --hedge-delay or --hedge-percentile). It is
    /// not idempotent (the servers count greetings): a hedged greeting may be
    /// counted twice.
    #[arg(long, env = "FYERRPC_HEDGE_SAY_HELLO")]
    pub hedge_say_hello: bool,

    /// TLS: CA of the servers, client certificate and key, fixed server
    /// name.
    #[cfg(feature = "tls")]
    #[command(flatten)]
    pub tls: crate::tls::ClientTlsArgs,

    /// Policies of the compare scenario, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_balancer,
        default_value = "round_robin,random,least_request,peak_ewma,ring_hash")]
    pub balancers: Vec<String>,
    /// Compare scenario: also write a chart of the latency distribution and
    /// the share of calls per instance to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,

    /// Final metrics format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Checks a policy name; keeps its canonical form.
fn parse_balancer(s: &str) -> Result<String, String> {
    fyerrpc::balance::by_name(s)
        .map(|b| b.name().to_owned())
        .map_err(|e| e.to_string())
}

fn parse_percentile(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if p.is_finite() && p > 0.0 && p < 100.0 {
        Ok(p)
    } else {
        Err(format!("{s} must be a number strictly between 0 and 100"))
    }
}

fn parse_strategy(s: &str) -> Result<Strategy, String> {
    s.parse()
        .map_err(|e: fyerrpc::failover::FailoverConfigError| e.to_string())
}

impl ClientArgs {
    /// The longest wait for every breaker to close again.
    pub fn breaker_wait(&self) -> Duration {
        self.breaker_wait
            .unwrap_or(self.breaker_open.saturating_mul(4) + Duration::from_secs(15))
    }

    /// The failover policy from the flags.
    pub fn failover(&self) -> FailoverConfig {
        let mut config = FailoverConfig::default()
            .with_max_retries(self.max_retries)
            .with_retry_interval(self.retry_interval)
            .with_backoff_multiplier(self.backoff)
            .with_max_retry_delay(self.max_retry_delay)
            .with_strategy(self.failover_strategy)
            .with_idempotent_methods([GET_GREET_STATS]);
        if let Some(policy) = self.hedging() {
            if self.hedge_say_hello {
                config = config.with_hedging(SAY_HELLO, policy.clone().hedgeable());
            }
            config = config.with_hedging(GET_GREET_STATS, policy);
        }
        config
    }

    /// The hedging policy from the flags, if hedging is on.
    pub fn hedging(&self) -> Option<HedgingPolicy> {
        let policy = match (self.hedge_delay, self.hedge_percentile) {
            (Some(delay), _) => HedgingPolicy::fixed(delay),
            (None, Some(p)) => HedgingPolicy::adaptive(p, self.hedge_min_delay),
            (None, None) => return None,
        };
        Some(policy.with_max_attempts(self.hedge_max_attempts))
    }

    /// The breaker policy from the flags.
    pub fn breaker(&self) -> ConsecutiveFailures {
        ConsecutiveFailures::new(self.breaker_failures)
            .with_open(OpenPolicy::default().with_base_open(self.breaker_open))
    }

    /// Opens the registry and builds the client (not yet waiting for
    /// instances).
    pub async fn build_client(&self) -> Result<Client, ClientRunError> {
        let registry: Arc<dyn Registry> =
            crate::registry::open(&self.registry, SERVICE_NAME, Some(&self.servers)).await?;
        let breaker = self.breaker();
        breaker.validate().map_err(ClientRunError::Breaker)?;
        let mut builder = Client::builder(SERVICE_NAME, registry)
            .failover(self.failover())
            .breaker(Arc::new(breaker))
            .connect_timeout(self.connect_timeout)
            .request_timeout(self.request_timeout);
        #[cfg(feature = "tls")]
        if let Some(tls) = self.tls.config()? {
            builder = builder.tls(tls);
        }
        if let Some(name) = &self.balancer {
            let balancer = fyerrpc::balance::by_name(name).map_err(ClientRunError::Balancer)?;
            builder = builder.balancer(balancer);
        }
        if !self.no_health_check {
            builder = builder.health_check(
                HealthCheckConfig::default()
                    .with_interval(self.health_interval)
                    .with_service(SERVICE_NAME),
            );
        }
        Ok(builder.build().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fyerrpc::failover::HedgeDelay;

    fn parse(args: &[&str]) -> Result<ClientArgs, clap::Error> {
        ClientArgs::try_parse_from(std::iter::once("greet-client").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_follow_the_example_client() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.servers, DEFAULT_SERVERS);
        assert_eq!(a.scenario, Scenario::All);
        let f = a.failover();
        assert_eq!(f.retry_interval, Duration::from_millis(200));
        assert_eq!(f.backoff_multiplier, 1.5);
        assert_eq!(f.max_retry_delay, Duration::from_secs(5));
        assert!(f.is_idempotent(GET_GREET_STATS));
        let b = a.breaker();
        assert_eq!(b.threshold, 3);
        assert_eq!(b.open.base_open, Duration::from_secs(5));
        assert_eq!(a.connect_timeout, Duration::from_secs(1));
        assert_eq!(a.request_timeout, Duration::from_secs(2));
        assert_eq!(a.recovery_wait, Duration::from_secs(12));
        assert_eq!(a.breaker_wait(), Duration::from_secs(35));
        assert_eq!(a.duration, None);
        let a = parse(&["--scenario", "load", "--duration", "8s"]).unwrap();
        assert_eq!(a.duration, Some(Duration::from_secs(8)));
        assert!(a.hedging().is_none());
        assert!(a.failover().hedging.is_empty());
        assert_eq!(a.balancers.len(), 5);
        assert_eq!(a.plot, None);
        let a = parse(&[
            "--scenario",
            "compare",
            "--balancers",
            "rr,p2c",
            "--plot",
            "x.svg",
        ])
        .unwrap();
        assert_eq!(a.scenario, Scenario::Compare);
        assert_eq!(a.balancers, ["round_robin", "least_request"]);
    }

    #[test]
    fn hedging_flags_build_a_valid_policy() {
        let a = parse(&["--hedge-delay", "20ms"]).unwrap();
        let f = a.failover();
        let p = f.hedging_policy(GET_GREET_STATS).expect("hedged");
        assert_eq!(p.delay, HedgeDelay::Fixed(Duration::from_millis(20)));
        assert_eq!(p.max_attempts, 2);
        assert!(f.hedging_policy(SAY_HELLO).is_none(), "only with the flag");
        assert!(f.validate().is_ok());
        let a = parse(&[
            "--hedge-percentile",
            "95",
            "--hedge-min-delay",
            "3ms",
            "--hedge-max-attempts",
            "3",
            "--hedge-say-hello",
        ])
        .unwrap();
        let f = a.failover();
        let p = f.hedging_policy(SAY_HELLO).expect("hedged");
        assert_eq!(
            p.delay,
            HedgeDelay::Adaptive {
                percentile: 95.0,
                floor: Duration::from_millis(3)
            }
        );
        assert_eq!(p.max_attempts, 3);
        assert!(p.hedgeable);
        assert!(f.validate().is_ok(), "SayHello is explicitly hedgeable");
    }

    #[test]
    fn rejects_invalid_flags() {
        for bad in [
            &["--scenario", "chaos"][..],
            &["--backoff", "0.5"],
            &["--failover-strategy", "sideways"],
            &["--breaker-failures", "0"],
            &["--request-timeout", "soon"],
            &["--concurrency", "0"],
            &["--output", "xml"],
            &["--duration", "0s"],
            &["--requests", "5", "--duration", "1s"],
            &["--hedge-delay", "soon"],
            &["--hedge-delay", "5ms", "--hedge-percentile", "95"],
            &["--hedge-percentile", "100"],
            &["--hedge-percentile", "0"],
            &["--hedge-max-attempts", "1"],
            &["--hedge-max-attempts", "6"],
            &["--balancers", "round_robin,fastest"],
            #[cfg(feature = "tls")]
            &["--tls-cert", "c.pem", "--tls-key", "k.pem"],
            #[cfg(feature = "tls")]
            &["--tls-domain", "x"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
