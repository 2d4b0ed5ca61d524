//! Per-instance state of a client: its channel, breaker, load, eligibility
//! and counters.
//!
//! An instance that takes no calls costs one [`EndpointCore`] (a few hundred
//! bytes): its HTTP/2 connection, with the task that drives it, is opened on
//! first use (a call, a health check, a reachability probe), not on
//! discovery, and closed again after a long idle period (see
//! [`conn`](super::conn)).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use tokio::task::AbortHandle;

use super::eligibility::EndpointState;
use super::handles::InstanceHandles;
use crate::balance::{Candidate, Load};
use crate::breaker::Breaker;
use crate::failover::classify::Outcome;
use crate::instance::Instance;
use crate::metrics::InstanceCounters;

/// What stays with an instance for as long as it is registered, across
/// snapshots: channel, breaker, load, eligibility and counters.
#[derive(Debug)]
pub(crate) struct EndpointCore {
    pub id: String,
    pub address: String,
    /// The value of the `instance` metric label (the id, or a constant when
    /// the client is built without per-instance series).
    pub label: Arc<str>,
    /// The connection: opened on first use, closed when idle.
    pub conn: super::conn::Conn,
    pub breaker: Box<dyn Breaker>,
    pub load: Arc<Load>,
    /// Why the endpoint may not take calls, if anything.
    pub state: EndpointState,
    pub counters: Arc<InstanceCounters>,
    pub health_task: OnceLock<AbortHandle>,
    pub handles: LazyHandles,
    /// A reachability check is running (after a broken connection).
    pub checking: AtomicBool,
}

impl EndpointCore {
    pub(crate) fn new(
        instance: &Instance,
        connect: super::connect::LazyConnect,
        breaker: Box<dyn Breaker>,
        counters: Arc<InstanceCounters>,
        service: Arc<str>,
        label: Arc<str>,
    ) -> Self {
        Self {
            id: instance.id().to_owned(),
            address: instance.address().to_owned(),
            handles: LazyHandles {
                service,
                label: Arc::clone(&label),
                handles: OnceLock::new(),
            },
            label,
            conn: super::conn::Conn::new(connect),
            breaker,
            load: Arc::new(Load::new()),
            state: EndpointState::default(),
            counters,
            health_task: OnceLock::new(),
            checking: AtomicBool::new(false),
        }
    }

    /// The instance's connection as a service (for health checks and
    /// probes), dialed on first use. Must be called within a tokio runtime.
    pub(crate) fn service(&self) -> super::conn::ConnService {
        self.conn.service()
    }

    /// Whether the last active health check verdict is healthy (true
    /// without checks).
    pub(crate) fn is_healthy(&self) -> bool {
        !self.state.has(super::eligibility::UNHEALTHY)
    }

    /// Whether `inst` (a new registry entry with this endpoint's id) can keep
    /// this endpoint: same address and same transport metadata. Otherwise
    /// it needs a new endpoint (channel, breaker, load).
    pub(crate) fn same_connection(&self, inst: &Instance) -> bool {
        self.address == inst.address() && self.conn.same_transport(inst)
    }

    /// Whether the endpoint can be connected to, as far as the client knows.
    pub(crate) fn is_reachable(&self) -> bool {
        !self.state.has(super::eligibility::UNREACHABLE)
    }
}

impl Drop for EndpointCore {
    fn drop(&mut self) {
        if let Some(task) = self.health_task.get() {
            task.abort();
        }
    }
}

/// The per-instance metric handles, registered on the first attempt: an
/// instance that takes no calls holds two pointers for them.
#[derive(Debug)]
pub(crate) struct LazyHandles {
    service: Arc<str>,
    label: Arc<str>,
    handles: OnceLock<Box<InstanceHandles>>,
}

impl LazyHandles {
    /// Counts an attempt on the instance.
    pub(crate) fn attempt(&self, outcome: Outcome) {
        self.handles
            .get_or_init(|| Box::new(InstanceHandles::new(Arc::clone(&self.service), &self.label)))
            .attempt(outcome);
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
