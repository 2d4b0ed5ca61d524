//! Hedging policy: when a slow call gets a second (third, ...) copy sent to
//! another instance, after gRPC's hedging policy (proposal A6:
//! `hedgingDelay`, `maxAttempts`, `nonFatalStatusCodes`).
//!
//! ```
//! use std::time::Duration;
//! use fyerrpc::failover::{FailoverConfig, HedgeDelay, HedgingPolicy};
//!
//! let config = FailoverConfig::default()
//!     .with_idempotent_methods(["/GreetService/GetGreetStats"])
//!     // A copy after 50 ms without an answer, at most 2 attempts in all.
//!     .with_hedging(
//!         "/GreetService/GetGreetStats",
//!         HedgingPolicy::fixed(Duration::from_millis(50)),
//!     )
//!     // Not declared idempotent: hedged only because the policy says so.
//!     .with_hedging(
//!         "/GreetService/SayHello",
//!         HedgingPolicy::adaptive(95.0, Duration::from_millis(5))
//!             .with_max_attempts(3)
//!             .hedgeable(),
//!     );
//! config.validate()?;
//! # Ok::<(), fyerrpc::failover::FailoverConfigError>(())
//! ```
//!
//! A method is hedged only when it is safe to send more than once: it is
//! listed in [`FailoverConfig::idempotent_methods`](super::FailoverConfig),
//! or its policy is explicitly marked [`hedgeable`](HedgingPolicy::hedgeable).
//! [`FailoverConfig::validate`](super::FailoverConfig::validate) (run when a
//! client is built) rejects a policy on any other method.
//!
//! The client sends the first attempt; when no answer came within the delay,
//! it sends the same request to an eligible instance this call has not tried
//! yet, and so on up to `max_attempts` in flight. The first successful answer
//! (or a fatal status) is the call's; the other attempts are cancelled (their
//! streams reset). An attempt that ends with a non-fatal status leaves the
//! others running and lets the next copy go out at once. Every copy after the
//! first withdraws from the client's retry budget: when it is spent, no more
//! copies are sent. A method with a hedging policy is not retried otherwise
//! (the non-fatal codes take the place of retryable ones), as in A6.

use std::time::Duration;

use tonic::Code;

/// The most attempts a hedged call may make, as gRPC caps `maxAttempts`.
pub const MAX_HEDGED_ATTEMPTS: u32 = 5;

/// Samples of a method's latency needed before an adaptive delay follows
/// them; until then the floor is used.
pub const ADAPTIVE_MIN_SAMPLES: u64 = 20;

/// How long to wait for an answer before sending the next copy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    /// A fixed delay (zero sends all copies at once).
    Fixed(Duration),
    /// The observed `percentile` (in `0..100`, exclusive) of the method's
    /// recent latency, never below `floor`. Until [`ADAPTIVE_MIN_SAMPLES`]
    /// calls have been seen, `floor`.
    Adaptive {
        /// The percentile of recent latencies to wait for, e.g. 95.
        percentile: f64,
        /// The shortest delay.
        floor: Duration,
    },
}

/// A hedging policy that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HedgingPolicyError {
    /// `max_attempts` is out of range.
    #[error("hedging max_attempts must be within 2..={MAX_HEDGED_ATTEMPTS}, got {0}")]
    MaxAttempts(u32),
    /// The adaptive percentile is not a number strictly between 0 and 100.
    #[error("hedging percentile must be a number strictly between 0 and 100, got {0}")]
    Percentile(String),
    /// A non-fatal code that cannot be one.
    #[error("hedging non-fatal codes must not include OK")]
    NonFatalOk,
    /// The method is neither declared idempotent nor marked hedgeable.
    #[error(
        "method {0} is hedged but not declared idempotent; declare it idempotent \
         or mark its hedging policy hedgeable"
    )]
    NotHedgeable(String),
    /// A hedged method's path is not `/service/method`.
    #[error("hedged method {0:?} is not a /service/method path")]
    Method(String),
}

/// The hedging policy of one method. See the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HedgingPolicy {
    /// When the next copy goes out.
    pub delay: HedgeDelay,
    /// Attempts in all, the first included (`2..=5`; default 2).
    pub max_attempts: u32,
    /// Statuses after which the other attempts keep running and the next
    /// copy may go out at once (default: `Unavailable`). Any other status is
    /// fatal: it ends the call and cancels the other attempts.
    pub non_fatal_codes: Vec<Code>,
    /// Whether the method may be hedged although it is not declared
    /// idempotent (the caller vouches that a duplicate is harmless).
    pub hedgeable: bool,
}

impl HedgingPolicy {
    /// A policy with a fixed delay, 2 attempts, `Unavailable` non-fatal.
    pub fn fixed(delay: Duration) -> Self {
        Self::new(HedgeDelay::Fixed(delay))
    }

    /// A policy waiting for the `percentile` of recent latency, at least
    /// `floor`; 2 attempts, `Unavailable` non-fatal.
    pub fn adaptive(percentile: f64, floor: Duration) -> Self {
        Self::new(HedgeDelay::Adaptive { percentile, floor })
    }

    /// A policy with this delay, 2 attempts, `Unavailable` non-fatal.
    pub fn new(delay: HedgeDelay) -> Self {
        Self {
            delay,
            max_attempts: 2,
            non_fatal_codes: vec![Code::Unavailable],
            hedgeable: false,
        }
    }

    /// Sets the attempts in all (`2..=5`).
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Sets the non-fatal status codes.
    pub fn with_non_fatal_codes(mut self, codes: impl IntoIterator<Item = Code>) -> Self {
        self.non_fatal_codes = codes.into_iter().collect();
        self
    }

    /// Marks the method hedgeable although it is not declared idempotent.
    pub fn hedgeable(mut self) -> Self {
        self.hedgeable = true;
        self
    }

    /// Whether `code` lets the other attempts continue.
    pub fn is_non_fatal(&self, code: Code) -> bool {
        self.non_fatal_codes.contains(&code)
    }

    /// The delay while fewer than [`ADAPTIVE_MIN_SAMPLES`] are known (the
    /// fixed delay, or the adaptive floor).
    pub fn initial_delay(&self) -> Duration {
        match self.delay {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::Adaptive { floor, .. } => floor,
        }
    }

    /// Checks the policy on its own (not whether its method may be hedged).
    pub fn validate(&self) -> Result<(), HedgingPolicyError> {
        if !(2..=MAX_HEDGED_ATTEMPTS).contains(&self.max_attempts) {
            return Err(HedgingPolicyError::MaxAttempts(self.max_attempts));
        }
        if let HedgeDelay::Adaptive { percentile, .. } = self.delay {
            if !(percentile.is_finite() && percentile > 0.0 && percentile < 100.0) {
                return Err(HedgingPolicyError::Percentile(percentile.to_string()));
            }
        }
        if self.non_fatal_codes.contains(&Code::Ok) {
            return Err(HedgingPolicyError::NonFatalOk);
        }
        Ok(())
    }

    /// Checks the policy of `method`, which is hedged only if `idempotent`
    /// or the policy is marked hedgeable.
    pub fn validate_for(&self, method: &str, idempotent: bool) -> Result<(), HedgingPolicyError> {
        let well_formed = method
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(service, name)| {
                !service.is_empty() && !name.is_empty() && !name.contains('/')
            });
        if !well_formed {
            return Err(HedgingPolicyError::Method(method.to_owned()));
        }
        if !(idempotent || self.hedgeable) {
            return Err(HedgingPolicyError::NotHedgeable(method.to_owned()));
        }
        self.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let p = HedgingPolicy::fixed(Duration::from_millis(10));
        assert_eq!(p.max_attempts, 2);
        assert!(p.is_non_fatal(Code::Unavailable));
        assert!(!p.is_non_fatal(Code::Internal));
        assert_eq!(p.validate(), Ok(()));
        assert_eq!(p.initial_delay(), Duration::from_millis(10));
        let a = HedgingPolicy::adaptive(95.0, Duration::from_millis(5));
        assert_eq!(a.validate(), Ok(()));
        assert_eq!(a.initial_delay(), Duration::from_millis(5));
        // Zero sends every copy at once: allowed, as in A6.
        assert_eq!(HedgingPolicy::fixed(Duration::ZERO).validate(), Ok(()));
    }

    #[test]
    fn rejects_what_cannot_work() {
        let p = HedgingPolicy::fixed(Duration::from_millis(10));
        for n in [0, 1, 6, 100] {
            assert_eq!(
                p.clone().with_max_attempts(n).validate(),
                Err(HedgingPolicyError::MaxAttempts(n))
            );
        }
        for bad in [0.0, 100.0, -5.0, 150.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                HedgingPolicy::adaptive(bad, Duration::ZERO).validate(),
                Err(HedgingPolicyError::Percentile(_))
            ));
        }
        assert_eq!(
            p.clone()
                .with_non_fatal_codes([Code::Unavailable, Code::Ok])
                .validate(),
            Err(HedgingPolicyError::NonFatalOk)
        );
    }

    #[test]
    fn only_safe_methods_are_hedged() {
        let p = HedgingPolicy::fixed(Duration::from_millis(10));
        assert_eq!(p.validate_for("/S/Get", true), Ok(()));
        assert_eq!(
            p.validate_for("/S/Put", false),
            Err(HedgingPolicyError::NotHedgeable("/S/Put".into()))
        );
        assert_eq!(p.clone().hedgeable().validate_for("/S/Put", false), Ok(()));
        for bad in ["", "S/Get", "/S", "/S/", "//Get", "/S/Get/x"] {
            assert_eq!(
                p.validate_for(bad, true),
                Err(HedgingPolicyError::Method(bad.into())),
                "{bad}"
            );
        }
    }
}
