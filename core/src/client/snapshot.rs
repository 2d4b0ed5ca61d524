//! The client's view of the instance set: snapshots built from registry
//! watch events, swapped in atomically.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;

use super::connect;
use super::endpoint::{Endpoint, EndpointCore};
use super::Shared;
use crate::balance::{Candidate, Picker};
use crate::health::{self, CheckResult};
use crate::instance::Instance;
use crate::metrics as m;

/// One immutable view of the instance set and its picker.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub endpoints: Vec<Endpoint>,
    pub picker: Arc<dyn Picker>,
}

impl Snapshot {
    pub(crate) fn empty(shared_balancer: &dyn crate::balance::Balancer) -> Self {
        Self {
            endpoints: Vec::new(),
            picker: shared_balancer.build(&[]),
        }
    }
}

/// Builds the next snapshot from a new instance set, keeping the core
/// (channel, breaker, load, eligibility) of every instance that stays.
/// Returns the snapshot and the cores of instances that left it.
pub(crate) fn next_snapshot(
    shared: &Arc<Shared>,
    set: Vec<Instance>,
) -> (Snapshot, Vec<Arc<EndpointCore>>) {
    let current = shared.snapshot.load();
    let mut old: HashMap<&str, &Arc<EndpointCore>> = current
        .endpoints
        .iter()
        .map(|e| (e.core.id.as_str(), &e.core))
        .collect();
    // Disabled instances take no new traffic (in-flight calls keep their
    // endpoint until they end); the selector narrows the rest.
    let total = set.len();
    let mut set: Vec<Instance> = set.into_iter().filter(Instance::is_enabled).collect();
    shared
        .disabled
        .store(total - set.len(), std::sync::atomic::Ordering::Relaxed);
    if let Some(selector) = &shared.config.selector {
        set = crate::discovery::apply(&**selector, &set);
    }
    let mut endpoints = Vec::with_capacity(set.len());
    for inst in set {
        // An instance keeps its core while its id and address stay the same.
        let kept = old
            .remove(inst.id())
            .filter(|core| core.address == inst.address());
        let core = match kept {
            Some(core) => Arc::clone(core),
            None => match new_core(shared, &inst) {
                Some(core) => core,
                None => continue,
            },
        };
        endpoints.push(Endpoint {
            instance: Arc::new(inst),
            core,
        });
    }
    let candidates: Vec<Candidate> = endpoints.iter().map(Endpoint::candidate).collect();
    let picker = shared.config.balancer.build(&candidates);
    let removed = old.into_values().map(Arc::clone).collect();
    (Snapshot { endpoints, picker }, removed)
}

fn new_core(shared: &Arc<Shared>, inst: &Instance) -> Option<Arc<EndpointCore>> {
    let channel = match connect::channel(
        &shared.config.transport,
        shared.config.connect_timeout,
        inst,
    ) {
        Ok(channel) => channel,
        Err(e) => {
            tracing::warn!(instance = %inst, error = %e, "skipping instance: no channel");
            return None;
        }
    };
    let counters = shared.instance_counters(inst.id(), inst.address());
    let core = Arc::new(EndpointCore::new(
        inst,
        channel,
        shared.config.breaker.build(),
        counters,
        Arc::clone(&shared.service),
    ));
    if let Some(hc) = &shared.config.health_check {
        let task = tokio::spawn(health_task(
            Arc::downgrade(shared),
            Arc::downgrade(&core),
            hc.clone(),
        ));
        let _ = core.health_task.set(task.abort_handle());
    }
    Some(core)
}

async fn health_task(
    shared: Weak<Shared>,
    core: Weak<EndpointCore>,
    config: health::HealthCheckConfig,
) {
    let Some((channel, service, id)) = core
        .upgrade()
        .zip(shared.upgrade())
        .map(|(c, s)| (c.channel.clone(), Arc::clone(&s.service), c.id.clone()))
    else {
        return;
    };
    let checked = config.service.clone();
    let mut warned_unknown = false;
    health::run_checker(channel, config, |result, changed| {
        metrics::counter!(m::CLIENT_HEALTH_CHECKS, "service" => service.to_string(),
            "instance" => id.clone(), "result" => result.as_str())
        .increment(1);
        let (Some(s), Some(c)) = (shared.upgrade(), core.upgrade()) else {
            return;
        };
        if result.reached_server() {
            s.mark_reachable(&c);
        } else if result == CheckResult::Unreachable {
            s.mark_unreachable(&c);
        }
        match result {
            CheckResult::Unimplemented => {
                tracing::info!(service = %service, instance = %id,
                    "instance has no grpc.health.v1 service: not health-checked, stays eligible");
            }
            CheckResult::UnknownService if !warned_unknown => {
                warned_unknown = true;
                tracing::error!(service = %service, instance = %id, checked = %checked,
                    "health check configuration error: the instance does not know the checked \
                     service name (NOT_FOUND); it counts as not serving");
            }
            _ => {}
        }
        if let Some(now_healthy) = changed {
            s.set_health(&c, now_healthy);
            if now_healthy {
                tracing::info!(service = %service, instance = %id, "instance passes health checks again");
            } else {
                tracing::warn!(service = %service, instance = %id, result = result.as_str(),
                    "instance ejected: failing health checks");
            }
        }
    })
    .await;
}

/// Follows the registry's watch stream for as long as the client lives,
/// re-watching with backoff when the stream fails or ends.
pub(crate) async fn run_discovery(shared: Weak<Shared>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let Some(s) = shared.upgrade() else { return };
        let registry = Arc::clone(&s.registry);
        let service = Arc::clone(&s.service);
        let version = s.config.version.clone();
        drop(s);
        match registry.watch(&service, version.as_deref()).await {
            Ok(mut stream) => {
                while let Some(event) = stream.next().await {
                    let Some(s) = shared.upgrade() else { return };
                    match event {
                        Ok(set) => {
                            delay = Duration::from_millis(100);
                            apply(&s, set);
                        }
                        Err(e) => {
                            metrics::counter!(m::CLIENT_DISCOVERY_ERRORS, "service" => service.to_string()).increment(1);
                            tracing::warn!(service = %service, error = %e, "registry watch error; keeping the last instance set");
                        }
                    }
                }
                tracing::warn!(service = %service, "registry watch ended; watching again");
            }
            Err(e) => {
                metrics::counter!(m::CLIENT_DISCOVERY_ERRORS, "service" => service.to_string())
                    .increment(1);
                tracing::warn!(service = %service, error = %e, retry_in = ?delay, "cannot watch the registry");
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

fn apply(shared: &Arc<Shared>, set: Vec<Instance>) {
    let (next, removed) = next_snapshot(shared, set);
    let n = next.endpoints.len();
    tracing::debug!(service = %shared.service, endpoints = n, removed = removed.len(),
        "instance set changed");
    let present: std::collections::HashSet<&str> =
        next.endpoints.iter().map(|e| e.core.id.as_str()).collect();
    shared.sweep_instances(&|id| present.contains(id));
    drop(present);
    shared.snapshot.store(Arc::new(next));
    // Endpoints that left count nowhere any more, even while a call that
    // is still running keeps them alive.
    for core in &removed {
        core.state.retire(&shared.tally);
    }
    shared.ready.send_replace(n);
    shared.publish_endpoint_gauges();
    shared.became_eligible.notify_waiters();
}
