//! What happens when an endpoint's eligibility changes: breaker transitions
//! (and the timer that moves an open breaker on), reachability and health
//! changes, the `fyerrpc_client_endpoints` gauges, and the breaker events a
//! program can subscribe to.

use std::sync::{Arc, OnceLock, Weak};
use std::time::SystemTime;

use metrics::Gauge;

use super::eligibility::{Change, BREAKER_OPEN, BREAKER_SPARED, UNHEALTHY, UNREACHABLE};
use super::endpoint::EndpointCore;
use super::{reconnect, Shared};
use crate::breaker::{BreakerState, Transition};
use crate::metrics::{self as m, ClientCounters};

/// A circuit breaker changed state. See [`Client::breaker_events`].
///
/// [`Client::breaker_events`]: super::Client::breaker_events
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerEvent {
    /// The instance id.
    pub instance: String,
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
    /// When it happened.
    pub at: SystemTime,
}

/// Events kept for a slow subscriber before the oldest are dropped.
pub(crate) const EVENT_BUFFER: usize = 256;

/// The `fyerrpc_client_endpoints` gauges of one client, registered when
/// first set.
#[derive(Debug)]
pub(crate) struct EndpointGauges {
    service: Arc<str>,
    gauges: OnceLock<[Gauge; 7]>,
}

/// The `state` label values of `fyerrpc_client_endpoints`, in gauge order.
pub(crate) const ENDPOINT_STATES: [&str; 7] = [
    "known",
    "eligible",
    "ejected",
    "unreachable",
    "breaker_open",
    "unhealthy",
    "disabled",
];

impl EndpointGauges {
    pub(crate) fn new(service: Arc<str>) -> Self {
        Self {
            service,
            gauges: OnceLock::new(),
        }
    }

    fn get(&self) -> &[Gauge; 7] {
        self.gauges.get_or_init(|| {
            ENDPOINT_STATES.map(|state| {
                metrics::gauge!(m::CLIENT_ENDPOINTS, "service" => self.service.to_string(),
                    "state" => state)
            })
        })
    }
}

impl Shared {
    /// Sets every `fyerrpc_client_endpoints` gauge from the current counts.
    pub(crate) fn publish_endpoint_gauges(&self) {
        let known = self.snapshot.load().endpoints.len();
        let c = self.tally.counts();
        let disabled = self.disabled.load(std::sync::atomic::Ordering::Relaxed);
        let values = [
            known,
            known.saturating_sub(c.ejected),
            c.ejected,
            c.unreachable,
            c.breaker_open,
            c.unhealthy,
            disabled,
        ];
        for (gauge, value) in self.gauges.get().iter().zip(values) {
            gauge.set(value as f64);
        }
    }

    /// Applies a breaker transition: eligibility, the expiry timer, logs,
    /// metrics and events.
    pub(crate) fn on_transition(self: &Arc<Self>, core: &Arc<EndpointCore>, t: Transition) {
        if t.to == BreakerState::Open {
            ClientCounters::incr(&self.counters.breaker_trips);
            let known = self.snapshot.load().endpoints.len();
            if self.tally.may_eject(known, self.config.max_ejection_ratio) {
                core.state.set(BREAKER_OPEN, true, &self.tally);
                tracing::warn!(service = %self.service, instance = %core.id, from = %t.from,
                    "circuit breaker opened: instance ejected");
            } else {
                core.state.set(BREAKER_SPARED, true, &self.tally);
                tracing::warn!(service = %self.service, instance = %core.id, from = %t.from,
                    max_ejection_ratio = self.config.max_ejection_ratio,
                    "circuit breaker opened, but ejecting one more instance would pass the \
                     maximum ejection ratio: it keeps taking calls");
            }
            spawn_expiry(Arc::downgrade(self), Arc::downgrade(core));
        } else {
            if t.from == BreakerState::Open {
                core.state
                    .set(BREAKER_OPEN | BREAKER_SPARED, false, &self.tally);
            }
            tracing::info!(service = %self.service, instance = %core.id, from = %t.from,
                to = %t.to, "circuit breaker state changed");
        }
        metrics::counter!(m::CLIENT_BREAKER_TRANSITIONS, "service" => self.service.to_string(),
            "instance" => core.label.to_string(), "to" => t.to.as_str())
        .increment(1);
        metrics::gauge!(m::CLIENT_BREAKER_STATE, "service" => self.service.to_string(),
            "instance" => core.label.to_string())
        .set(t.to.gauge());
        let _ = self.events.send(BreakerEvent {
            instance: core.id.clone(),
            from: t.from,
            to: t.to,
            at: SystemTime::now(),
        });
        self.publish_endpoint_gauges();
        if t.from == BreakerState::Open {
            self.became_eligible.notify_waiters();
        }
    }

    /// Records that an attempt or a check could not connect to `core`.
    pub(crate) fn mark_unreachable(self: &Arc<Self>, core: &Arc<EndpointCore>) {
        let change = core.state.set(UNREACHABLE, true, &self.tally);
        if change.raised(UNREACHABLE) {
            tracing::warn!(service = %self.service, instance = %core.id,
                address = %core.address, "instance unreachable: no new calls until it answers again");
            self.publish_endpoint_gauges();
            reconnect::spawn(Arc::downgrade(self), Arc::downgrade(core));
        }
    }

    /// After a connection broke under a call: checks at once, off the call
    /// path, whether the instance can still be connected to, so that a
    /// crashed instance is known as unreachable (hard evidence) rather than
    /// only through its breaker (statistical).
    pub(crate) fn check_reachability(self: &Arc<Self>, core: &Arc<EndpointCore>) {
        if !core.is_reachable()
            || core
                .checking
                .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            core.checking
                .store(false, std::sync::atomic::Ordering::Release);
            return;
        };
        let (shared, weak) = (Arc::downgrade(self), Arc::downgrade(core));
        let channel = core.service();
        let timeout = self.config.connect_timeout.saturating_mul(2);
        runtime.spawn(async move {
            let result = crate::health::check(channel, "", timeout).await;
            let (Some(s), Some(c)) = (shared.upgrade(), weak.upgrade()) else {
                return;
            };
            c.checking
                .store(false, std::sync::atomic::Ordering::Release);
            if result == crate::health::CheckResult::Unreachable {
                s.mark_unreachable(&c);
            }
        });
    }

    /// Records that `core` answered (a call, a check or a reconnect probe).
    pub(crate) fn mark_reachable(&self, core: &EndpointCore) {
        if core.is_reachable() {
            return;
        }
        let change = core.state.set(UNREACHABLE, false, &self.tally);
        if change.cleared(UNREACHABLE) {
            tracing::info!(service = %self.service, instance = %core.id, "instance reachable again");
            self.publish_endpoint_gauges();
            self.became_eligible.notify_waiters();
        }
    }

    /// Applies a health verdict.
    pub(crate) fn set_health(&self, core: &EndpointCore, healthy: bool) -> Change {
        let change = core.state.set(UNHEALTHY, !healthy, &self.tally);
        if change.before != change.after {
            self.publish_endpoint_gauges();
            if healthy {
                self.became_eligible.notify_waiters();
            }
        }
        change
    }
}

/// Moves an open breaker to half-open when its open time has passed, whether
/// or not any call is made: time moves the state, not the next pick.
fn spawn_expiry(shared: Weak<Shared>, core: Weak<EndpointCore>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        loop {
            let remaining = {
                let Some(core) = core.upgrade() else { return };
                match core.breaker.open_remaining() {
                    Some(d) => d,
                    // Not open any more (expired by a late try_acquire).
                    None => return,
                }
            };
            if !remaining.is_zero() {
                tokio::time::sleep(remaining).await;
                continue;
            }
            let (Some(shared), Some(core)) = (shared.upgrade(), core.upgrade()) else {
                return;
            };
            if let Some(t) = core.breaker.expire() {
                shared.on_transition(&core, t);
            }
            return;
        }
    });
}
