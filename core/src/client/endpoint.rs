//! Per-instance state of a client: its channel, breaker, load and health.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::task::AbortHandle;
use tonic::transport::Channel;

use super::handles::InstanceHandles;
use crate::balance::{Candidate, Load};
use crate::breaker::{Breaker, BreakerState, Transition};
use crate::instance::Instance;
use crate::metrics::InstanceCounters;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Counts of ejected endpoints, shared by all endpoints of one client, so a
/// call can tell without a scan whether too many are ejected (panic mode).
#[derive(Debug, Default)]
pub(crate) struct Ejections {
    /// Endpoints whose breaker is open.
    pub open: AtomicUsize,
    /// Endpoints failing their active health check.
    pub unhealthy: AtomicUsize,
}

impl Ejections {
    pub(crate) fn total(&self) -> usize {
        self.open.load(Ordering::Relaxed) + self.unhealthy.load(Ordering::Relaxed)
    }
}

/// What stays with an instance for as long as it is registered, across
/// snapshots: channel, breaker, load, health and counters.
#[derive(Debug)]
pub(crate) struct EndpointCore {
    pub id: String,
    pub address: String,
    pub channel: Channel,
    pub breaker: Box<dyn Breaker>,
    pub load: Arc<Load>,
    pub healthy: Arc<AtomicBool>,
    /// Nanoseconds since the process epoch of the last failure (0: never).
    last_failure: AtomicU64,
    pub counters: Arc<InstanceCounters>,
    pub health_task: OnceLock<AbortHandle>,
    pub handles: InstanceHandles,
    ejections: Arc<Ejections>,
}

impl EndpointCore {
    pub(crate) fn new(
        instance: &Instance,
        channel: Channel,
        breaker: Box<dyn Breaker>,
        counters: Arc<InstanceCounters>,
        ejections: Arc<Ejections>,
        service: Arc<str>,
    ) -> Self {
        Self {
            id: instance.id().to_owned(),
            address: instance.address().to_owned(),
            channel,
            breaker,
            load: Arc::new(Load::new()),
            healthy: Arc::new(AtomicBool::new(true)),
            last_failure: AtomicU64::new(0),
            counters,
            health_task: OnceLock::new(),
            handles: InstanceHandles::new(service, instance.id()),
            ejections,
        }
    }

    /// Whether the balancer may pick this endpoint (breaker and health).
    #[inline]
    pub(crate) fn is_available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.breaker.is_available()
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_failure(&self) {
        let now = u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_failure.store(now.max(1), Ordering::Relaxed);
    }

    pub(crate) fn last_failure(&self) -> u64 {
        self.last_failure.load(Ordering::Relaxed)
    }

    /// Keeps the shared ejection count in step with a breaker transition.
    pub(crate) fn count_transition(&self, t: Transition) {
        if t.to == BreakerState::Open && t.from != BreakerState::Open {
            self.ejections.open.fetch_add(1, Ordering::Relaxed);
        } else if t.from == BreakerState::Open && t.to != BreakerState::Open {
            dec(&self.ejections.open);
        }
    }

    /// Keeps the shared ejection count in step with a health change.
    pub(crate) fn count_health(&self, healthy: bool) {
        if healthy {
            dec(&self.ejections.unhealthy);
        } else {
            self.ejections.unhealthy.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn dec(n: &AtomicUsize) {
    let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
}

impl Drop for EndpointCore {
    fn drop(&mut self) {
        if let Some(task) = self.health_task.get() {
            task.abort();
        }
        if self.breaker.state() == BreakerState::Open {
            dec(&self.ejections.open);
        }
        if !self.is_healthy() {
            dec(&self.ejections.unhealthy);
        }
    }
}

/// One instance in one snapshot: its current registry entry and its core.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub instance: Arc<Instance>,
    pub core: Arc<EndpointCore>,
}

impl Endpoint {
    pub(crate) fn candidate(&self) -> Candidate {
        Candidate::with_load(Arc::clone(&self.instance), Arc::clone(&self.core.load))
    }
}
