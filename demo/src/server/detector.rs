//! [`HealthDetector`]: the fault injection of the example's servers.
//!
//! Three independent faults, all applied to `SayHello` calls only (never to
//! health checks or statistics):
//!
//! * **failure window**: after `fail_after` calls the server fails every call
//!   for `fail_duration`, then recovers and starts counting again;
//! * **random failures**: outside a window, each call fails with probability
//!   `fail_rate`.
//! * **latency**: every call waits `latency` plus a uniform random extra of
//!   up to `latency_jitter` before it is answered (or failed), on a timer,
//!   without holding a runtime thread.
//!
//! While a window is open the server reports itself unhealthy: `GET /health`
//! answers 503 "DOWN" and the [`HealthFlag`] (mirrored into
//! `grpc.health.v1`) is not serving. Random failures do not change health.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fyerrpc::server::HealthFlag;
use serde::Serialize;
use tokio::time::Instant;

/// The fault settings.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct FaultConfig {
    /// Calls served before a failure window opens; 0 disables windows.
    pub fail_after: u64,
    /// How long a failure window lasts.
    #[serde(with = "as_humantime")]
    pub fail_duration: Duration,
    /// Probability in `0..=1` that a call outside a window fails.
    pub fail_rate: f64,
    /// Delay added to every call.
    #[serde(with = "as_humantime")]
    pub latency: Duration,
    /// Largest random extra delay (uniform in `0..=latency_jitter`).
    #[serde(with = "as_humantime")]
    pub latency_jitter: Duration,
}

impl FaultConfig {
    /// The delay of one call: `latency` plus a uniform random part of
    /// `latency_jitter`.
    pub fn delay(&self) -> Duration {
        if self.latency_jitter.is_zero() {
            return self.latency;
        }
        self.latency + self.latency_jitter.mul_f64(fastrand::f64())
    }
}

/// Why a call was failed on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A failure window is open.
    Window,
    /// The random failure rate struck.
    Random,
}

impl Fault {
    /// A lower-case name for metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Window => "window",
            Self::Random => "random",
        }
    }
}

/// Whether the server is healthy, as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// `true` outside failure windows.
    pub healthy: bool,
    /// `SayHello` calls received so far (failed ones included).
    pub request_count: u64,
    /// When the open failure window closes, if one is open.
    pub failing_until: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct State {
    /// Every call seen.
    requests: u64,
    /// Calls since the last window closed (or since start).
    since_recovery: u64,
    /// The end of the open window.
    failing_until: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
    config: FaultConfig,
    flag: HealthFlag,
    state: Mutex<State>,
}

/// Decides, call by call, whether to fail on purpose. Cloning shares it.
#[derive(Debug, Clone)]
pub struct HealthDetector {
    inner: Arc<Inner>,
}

impl HealthDetector {
    /// A detector with `config` that keeps `flag` in step with its windows.
    pub fn new(config: FaultConfig, flag: HealthFlag) -> Self {
        flag.set(true);
        Self {
            inner: Arc::new(Inner {
                config,
                flag,
                state: Mutex::default(),
            }),
        }
    }

    /// The fault settings.
    pub fn config(&self) -> &FaultConfig {
        &self.inner.config
    }

    /// Counts one `SayHello` call and says whether it must fail.
    pub fn on_call(&self) -> Result<(), Fault> {
        let config = &self.inner.config;
        let now = Instant::now();
        let mut state = self.lock();
        state.requests += 1;
        if self.close_expired(&mut state, now) {
            return Err(Fault::Window);
        }
        state.since_recovery += 1;
        if config.fail_after > 0 && state.since_recovery > config.fail_after {
            let until = now + config.fail_duration;
            state.failing_until = Some(until);
            drop(state);
            self.open_window(until);
            return Err(Fault::Window);
        }
        drop(state);
        if config.fail_rate > 0.0 && fastrand::f64() < config.fail_rate {
            return Err(Fault::Random);
        }
        Ok(())
    }

    /// The current health.
    pub fn health(&self) -> Health {
        let now = Instant::now();
        let mut state = self.lock();
        let failing = self.close_expired(&mut state, now);
        let failing_until = state
            .failing_until
            .filter(|_| failing)
            .map(|until| SystemTime::now() + until.saturating_duration_since(now));
        Health {
            healthy: !failing,
            request_count: state.requests,
            failing_until,
        }
    }

    /// Closes an expired window (recovering health); returns whether a
    /// window is still open.
    fn close_expired(&self, state: &mut State, now: Instant) -> bool {
        match state.failing_until {
            Some(until) if now < until => true,
            Some(_) => {
                state.failing_until = None;
                state.since_recovery = 0;
                self.inner.flag.set(true);
                tracing::info!(
                    requests = state.requests,
                    "failure window closed: healthy again"
                );
                false
            }
            None => false,
        }
    }

    /// Marks the server unhealthy and schedules the recovery of its health
    /// flag for when the window closes, even if no call comes.
    fn open_window(&self, until: Instant) {
        self.inner.flag.set(false);
        tracing::warn!(
            duration = ?self.inner.config.fail_duration,
            "failure window opened: failing every call"
        );
        let detector = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            let _ = detector.health();
        });
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain counters: a panicked holder leaves nothing inconsistent.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Durations as humantime strings ("10s") in JSON.
mod as_humantime {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(fail_after: u64, secs: u64, rate: f64) -> (HealthDetector, HealthFlag) {
        let flag = HealthFlag::default();
        let config = FaultConfig {
            fail_after,
            fail_duration: Duration::from_secs(secs),
            fail_rate: rate,
            ..FaultConfig::default()
        };
        (HealthDetector::new(config, flag.clone()), flag)
    }

    #[tokio::test(start_paused = true)]
    async fn fails_after_n_calls_for_the_duration_then_recovers() {
        let (d, flag) = detector(3, 10, 0.0);
        for _ in 0..3 {
            assert_eq!(d.on_call(), Ok(()));
        }
        assert_eq!(d.on_call(), Err(Fault::Window));
        assert!(!flag.is_serving());
        let h = d.health();
        assert!(!h.healthy);
        assert_eq!(h.request_count, 4);
        assert!(h.failing_until.is_some());
        assert_eq!(d.on_call(), Err(Fault::Window));

        tokio::time::sleep(Duration::from_secs(10)).await;
        // The flag recovers by itself when the window closes.
        tokio::task::yield_now().await;
        assert!(flag.is_serving());
        assert!(d.health().healthy);
        assert_eq!(d.health().failing_until, None);
        // Counting starts again.
        for _ in 0..3 {
            assert_eq!(d.on_call(), Ok(()));
        }
        assert_eq!(d.on_call(), Err(Fault::Window));
        assert_eq!(d.health().request_count, 9);
    }

    #[tokio::test]
    async fn random_failures_follow_the_rate_and_keep_health() {
        let (never, _) = detector(0, 0, 0.0);
        assert!((0..1000).all(|_| never.on_call().is_ok()));
        let (always, flag) = detector(0, 0, 1.0);
        assert!((0..100).all(|_| always.on_call() == Err(Fault::Random)));
        assert!(always.health().healthy && flag.is_serving());
        let (some, _) = detector(0, 0, 0.5);
        let failed = (0..2000).filter(|_| some.on_call().is_err()).count();
        assert!((800..1200).contains(&failed), "{failed}");
    }

    #[test]
    fn the_delay_is_the_latency_plus_a_share_of_the_jitter() {
        let mut c = FaultConfig::default();
        assert_eq!(c.delay(), Duration::ZERO);
        c.latency = Duration::from_millis(20);
        assert_eq!(c.delay(), Duration::from_millis(20));
        c.latency_jitter = Duration::from_millis(10);
        let delays: Vec<Duration> = (0..1000).map(|_| c.delay()).collect();
        let (lo, hi) = (Duration::from_millis(20), Duration::from_millis(30));
        assert!(delays.iter().all(|d| (lo..=hi).contains(d)));
        // Spread over the range, not stuck at one end.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(23)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(27)));
    }
}
