//! The client's view of the instance set: snapshots built from registry
//! watch events, swapped in atomically.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;

use super::connect;
use super::endpoint::{Endpoint, EndpointCore};
use super::Shared;
use crate::balance::{Candidate, Picker};
use crate::health;
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
/// (channel, breaker, load) of every instance that stays.
pub(crate) fn next_snapshot(shared: &Arc<Shared>, set: Vec<Instance>) -> Snapshot {
    let current = shared.snapshot.load();
    let mut old: HashMap<&str, &Arc<EndpointCore>> = current
        .endpoints
        .iter()
        .map(|e| (e.core.id.as_str(), &e.core))
        .collect();
    // Disabled instances take no new traffic (in-flight calls keep their
    // endpoint until they end); the selector narrows the rest.
    let mut set: Vec<Instance> = set.into_iter().filter(Instance::is_enabled).collect();
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
    Snapshot { endpoints, picker }
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
        Arc::clone(&shared.ejections),
        Arc::clone(&shared.service),
    ));
    if let Some(hc) = &shared.config.health_check {
        let task = tokio::spawn(health_task(
            Arc::downgrade(&core),
            hc.clone(),
            Arc::clone(&shared.service),
        ));
        let _ = core.health_task.set(task.abort_handle());
    }
    Some(core)
}

async fn health_task(
    core: Weak<EndpointCore>,
    config: health::HealthCheckConfig,
    service: Arc<str>,
) {
    let Some((channel, healthy, id)) = core
        .upgrade()
        .map(|c| (c.channel.clone(), Arc::clone(&c.healthy), c.id.clone()))
    else {
        return;
    };
    health::run_checker(channel, config, healthy, |result, changed| {
        metrics::counter!(m::CLIENT_HEALTH_CHECKS, "service" => service.to_string(),
            "instance" => id.clone(), "result" => result.as_str())
        .increment(1);
        if let Some(now_healthy) = changed {
            if let Some(core) = core.upgrade() {
                core.count_health(now_healthy);
            }
            if now_healthy {
                tracing::info!(service = %service, instance = %id, "instance passes health checks again");
            } else {
                tracing::warn!(service = %service, instance = %id, ?result, "instance ejected: failing health checks");
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
    let next = next_snapshot(shared, set);
    let n = next.endpoints.len();
    tracing::debug!(service = %shared.service, endpoints = n, "instance set changed");
    shared.snapshot.store(Arc::new(next));
    shared.ready.send_replace(n);
    let ejected_open = shared.ejections.open.load(Ordering::Relaxed);
    let unhealthy = shared.ejections.unhealthy.load(Ordering::Relaxed);
    let svc = shared.service.to_string();
    metrics::gauge!(m::CLIENT_ENDPOINTS, "service" => svc.clone(), "state" => "known")
        .set(n as f64);
    metrics::gauge!(m::CLIENT_ENDPOINTS, "service" => svc.clone(), "state" => "ejected")
        .set(ejected_open as f64);
    metrics::gauge!(m::CLIENT_ENDPOINTS, "service" => svc, "state" => "unhealthy")
        .set(unhealthy as f64);
}
