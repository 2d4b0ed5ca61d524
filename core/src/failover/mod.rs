//! Failover: when a failed call is tried again, where, and how often.
//!
//! ```
//! use std::time::Duration;
//! use fyerrpc::failover::{FailoverConfig, Strategy};
//! use tonic::Code;
//!
//! // The seed example's client settings.
//! let config = FailoverConfig::default()
//!     .with_retry_interval(Duration::from_millis(200))
//!     .with_backoff_multiplier(1.5)
//!     .with_max_retry_delay(Duration::from_secs(5))
//!     .with_strategy(Strategy::Next)
//!     .with_idempotent_methods(["/GreetService/GetGreetStats"]);
//! config.validate()?;
//! assert_eq!(config.max_retries, 3);
//! assert!(config.is_retryable_code(Code::Unavailable));
//! # Ok::<(), fyerrpc::failover::FailoverConfigError>(())
//! ```
//!
//! Safe by default: a call is retried only when the server cannot have
//! processed it — the connection was refused or reset before the request was
//! sent, the server refused the stream, or it answered `Unavailable` (gRPC's
//! "not processed" signal). Methods listed as idempotent are also retried
//! after transport failures and attempt time-outs, and on the extra
//! `idempotent_codes`.
//!
//! Retries draw on a [`RetryBudget`] (a ratio of recent requests plus a small
//! floor per second), so that an outage cannot multiply the load. Each retry
//! goes to an instance this call has not tried yet when one is available,
//! chosen by the [`Strategy`], after a jittered exponential [`Backoff`]. The
//! caller's deadline (`grpc-timeout`) bounds everything: a retry whose backoff
//! would pass it is not made.
//!
//! Methods safe to send twice may instead be *hedged* (see [`hedge`]): a
//! copy goes to another instance when the first attempt is slow to answer.

mod backoff;
mod budget;
pub mod classify;
pub mod hedge;

pub use backoff::Backoff;
pub use budget::RetryBudget;
pub use hedge::{HedgeDelay, HedgingPolicy, HedgingPolicyError};

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use tonic::Code;

/// Which untried instance a retry goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The next instance after the failed one, in snapshot order.
    #[default]
    Next,
    /// A random untried instance.
    Random,
    /// The untried instance with the lowest load-adjusted latency.
    Best,
}

impl FromStr for Strategy {
    type Err = FailoverConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "next" => Ok(Self::Next),
            "random" => Ok(Self::Random),
            "best" => Ok(Self::Best),
            _ => Err(FailoverConfigError::UnknownStrategy(s.to_owned())),
        }
    }
}

impl Strategy {
    /// The strategy's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Random => "random",
            Self::Best => "best",
        }
    }
}

/// A failover setting that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FailoverConfigError {
    /// Not one of `next`, `random`, `best`.
    #[error("unknown failover strategy {0:?}: expected next, random or best")]
    UnknownStrategy(String),
    /// A numeric setting is out of range.
    #[error("invalid failover setting {name}: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A method's hedging policy cannot work, or the method may not be
    /// hedged.
    #[error("invalid hedging policy for {method}: {source}")]
    Hedging {
        /// The method.
        method: String,
        /// What is wrong.
        #[source]
        source: HedgingPolicyError,
    },
}

/// Failover (retry) policy. Defaults follow the seed framework's
/// `failover.Config`: 3 retries, 100 ms first interval, backoff ×2.0,
/// jitter 0.2, at most 5 s between attempts, strategy `next`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct FailoverConfig {
    /// Whether failed calls are retried at all.
    pub enabled: bool,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before the first retry.
    pub retry_interval: Duration,
    /// Growth of the delay per retry.
    pub backoff_multiplier: f64,
    /// Random spread of each delay, a fraction in `0..=1`.
    pub jitter: f64,
    /// Largest delay between attempts.
    pub max_retry_delay: Duration,
    /// Which untried instance a retry goes to.
    pub strategy: Strategy,
    /// Status codes retried for every method (default: `Unavailable`).
    pub retryable_codes: Vec<Code>,
    /// Status codes retried only for idempotent methods (default:
    /// `DeadlineExceeded` of an attempt, `ResourceExhausted`, `Aborted`,
    /// `Internal`, `Unknown`).
    pub idempotent_codes: Vec<Code>,
    /// Methods (`/Service/Method` paths) safe to send more than once.
    pub idempotent_methods: HashSet<String>,
    /// Time limit of one attempt (`None`: only the call's deadline).
    pub attempt_timeout: Option<Duration>,
    /// Retries allowed as a fraction of requests, over `budget_ttl`.
    pub budget_ratio: f32,
    /// Retries always allowed per second, whatever the ratio.
    pub budget_min_per_sec: u32,
    /// Window over which the budget counts requests.
    pub budget_ttl: Duration,
    /// Largest request body kept for re-sending; larger requests are sent once.
    pub max_buffered_body: usize,
    /// Hedging policies by method (`/Service/Method`); see [`hedge`]. A
    /// method with a policy is hedged instead of retried. Not applied when
    /// failover is disabled.
    pub hedging: HashMap<String, HedgingPolicy>,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_retries: 3,
            retry_interval: Duration::from_millis(100),
            backoff_multiplier: 2.0,
            jitter: 0.2,
            max_retry_delay: Duration::from_secs(5),
            strategy: Strategy::Next,
            retryable_codes: vec![Code::Unavailable],
            idempotent_codes: vec![
                Code::DeadlineExceeded,
                Code::ResourceExhausted,
                Code::Aborted,
                Code::Internal,
                Code::Unknown,
            ],
            idempotent_methods: HashSet::new(),
            attempt_timeout: None,
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            budget_ttl: Duration::from_secs(10),
            max_buffered_body: 64 * 1024,
            hedging: HashMap::new(),
        }
    }
}

impl FailoverConfig {
    /// No retries at all: every call is one attempt.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            max_retries: 0,
            ..Self::default()
        }
    }
    /// Sets the number of retries.
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }
    /// Sets the delay before the first retry.
    pub fn with_retry_interval(mut self, d: Duration) -> Self {
        self.retry_interval = d;
        self
    }
    /// Sets the backoff multiplier.
    pub fn with_backoff_multiplier(mut self, m: f64) -> Self {
        self.backoff_multiplier = m;
        self
    }
    /// Sets the jitter fraction.
    pub fn with_jitter(mut self, j: f64) -> Self {
        self.jitter = j;
        self
    }
    /// Sets the largest delay between attempts.
    pub fn with_max_retry_delay(mut self, d: Duration) -> Self {
        self.max_retry_delay = d;
        self
    }
    /// Sets the strategy.
    pub fn with_strategy(mut self, s: Strategy) -> Self {
        self.strategy = s;
        self
    }
    /// Sets the codes retried for every method.
    pub fn with_retryable_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.retryable_codes = codes.into_iter().collect();
        self
    }
    /// Marks methods (`/Service/Method`) as idempotent.
    pub fn with_idempotent_methods<S: Into<String>>(
        mut self,
        methods: impl IntoIterator<Item = S>,
    ) -> Self {
        self.idempotent_methods
            .extend(methods.into_iter().map(Into::into));
        self
    }
    /// Sets the time limit of one attempt.
    pub fn with_attempt_timeout(mut self, d: Duration) -> Self {
        self.attempt_timeout = Some(d);
        self
    }
    /// Sets the retry budget: `ratio` of requests plus `min_per_sec`.
    pub fn with_budget(mut self, ratio: f32, min_per_sec: u32) -> Self {
        self.budget_ratio = ratio;
        self.budget_min_per_sec = min_per_sec;
        self
    }
    /// Sets the largest request body kept for re-sending.
    pub fn with_max_buffered_body(mut self, bytes: usize) -> Self {
        self.max_buffered_body = bytes;
        self
    }

    /// Hedges `method` (`/Service/Method`) with `policy`, replacing any
    /// policy it had. The method must be declared idempotent (see
    /// [`with_idempotent_methods`](Self::with_idempotent_methods)) or the
    /// policy marked [`hedgeable`](HedgingPolicy::hedgeable); [`validate`](Self::validate)
    /// checks it.
    pub fn with_hedging(mut self, method: impl Into<String>, policy: HedgingPolicy) -> Self {
        self.hedging.insert(method.into(), policy);
        self
    }

    /// The hedging policy of `method`, if it is hedged.
    pub fn hedging_policy(&self, method: &str) -> Option<&HedgingPolicy> {
        if self.enabled {
            self.hedging.get(method)
        } else {
            None
        }
    }

    /// Checks that the settings can work.
    pub fn validate(&self) -> Result<(), FailoverConfigError> {
        let bad = |name, reason| Err(FailoverConfigError::Invalid { name, reason });
        if !(self.backoff_multiplier.is_finite() && self.backoff_multiplier >= 1.0) {
            return bad("backoff_multiplier", "must be a number >= 1");
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad("jitter", "must be within 0..=1");
        }
        if self.max_retry_delay < self.retry_interval {
            return bad("max_retry_delay", "must not be below retry_interval");
        }
        if !(self.budget_ratio.is_finite() && (0.0..=1000.0).contains(&self.budget_ratio)) {
            return bad("budget_ratio", "must be within 0..=1000");
        }
        if self.budget_ttl < Duration::from_secs(1) || self.budget_ttl > Duration::from_secs(60) {
            return bad("budget_ttl", "must be within 1s..=60s");
        }
        if self.attempt_timeout.is_some_and(|d| d.is_zero()) {
            return bad("attempt_timeout", "must be positive");
        }
        for (method, policy) in &self.hedging {
            policy
                .validate_for(method, self.is_idempotent(method))
                .map_err(|source| FailoverConfigError::Hedging {
                    method: method.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// The backoff between attempts.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(
            self.retry_interval,
            self.backoff_multiplier,
            self.max_retry_delay,
            self.jitter,
        )
    }

    /// Whether `code` is retried for any method.
    pub fn is_retryable_code(&self, code: Code) -> bool {
        self.retryable_codes.contains(&code)
    }

    /// Whether `method` may be sent more than once.
    pub fn is_idempotent(&self, method: &str) -> bool {
        self.idempotent_methods.contains(method)
    }

    /// Whether a response with `code` to `method` may be retried.
    pub fn may_retry_code(&self, method: &str, code: Code) -> bool {
        self.is_retryable_code(code)
            || (self.is_idempotent(method) && self.idempotent_codes.contains(&code))
    }

    /// Attempts a call may make in all.
    pub fn max_attempts(&self) -> u32 {
        if self.enabled {
            self.max_retries.saturating_add(1)
        } else {
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seeds_and_valid() {
        let c = FailoverConfig::default();
        assert_eq!(c.max_retries, 3);
        assert_eq!(c.retry_interval, Duration::from_millis(100));
        assert_eq!(c.backoff_multiplier, 2.0);
        assert_eq!(c.jitter, 0.2);
        assert!(c.validate().is_ok());
        assert_eq!(c.max_attempts(), 4);
        assert_eq!(FailoverConfig::disabled().max_attempts(), 1);
    }

    #[test]
    fn retries_only_what_is_safe() {
        let c = FailoverConfig::default().with_idempotent_methods(["/S/Get"]);
        assert!(c.may_retry_code("/S/Put", Code::Unavailable));
        assert!(!c.may_retry_code("/S/Put", Code::Internal));
        assert!(c.may_retry_code("/S/Get", Code::Internal));
        assert!(!c.may_retry_code("/S/Get", Code::InvalidArgument));
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(FailoverConfig::default()
            .with_backoff_multiplier(0.5)
            .validate()
            .is_err());
        assert!(FailoverConfig::default()
            .with_jitter(2.0)
            .validate()
            .is_err());
        assert!(FailoverConfig::default()
            .with_budget(f32::NAN, 1)
            .validate()
            .is_err());
        assert!("sideways".parse::<Strategy>().is_err());
        let hedged = FailoverConfig::default()
            .with_hedging("/S/Put", HedgingPolicy::fixed(Duration::from_millis(5)));
        assert!(matches!(
            hedged.validate(),
            Err(FailoverConfigError::Hedging {
                source: HedgingPolicyError::NotHedgeable(_),
                ..
            })
        ));
        assert!(hedged
            .clone()
            .with_idempotent_methods(["/S/Put"])
            .validate()
            .is_ok());
        assert!(FailoverConfig::default()
            .with_idempotent_methods(["/S/Get"])
            .with_hedging(
                "/S/Get",
                HedgingPolicy::fixed(Duration::ZERO).with_max_attempts(9)
            )
            .validate()
            .is_err());
        assert_eq!("Best".parse::<Strategy>().unwrap(), Strategy::Best);
    }
}
