//! The client's view of the instance set: snapshots updated from registry
//! watch events, swapped in atomically.
//!
//! A registry event carries the whole set, or, from a backend that learns
//! of changes one by one, only what changed ([`WatchEvent::Delta`]). The
//! discovery task keeps an index of the current snapshot by instance id
//! (updated in place, never rebuilt) and turns each event into the
//! instances added, removed and changed; the
//! next snapshot is the current one with those edits: its endpoint list is a
//! persistent vector (an edit copies one chunk of it), a removal moves the
//! last endpoint into the freed place, and the picker follows the same edits
//! ([`Picker::apply`]). Applying an event costs one id lookup per instance in
//! it plus time in proportion to the change; nothing is rebuilt for the
//! instances that stay. (With a selector, which may narrow by the whole set,
//! a delta is turned into the whole set first.)
//!
//! ```text
//!   registry event: whole set, or delta (upserted, removed ids)
//!        | sorted against the id index: added / removed / changed
//!        v
//!   edits: SwapRemove(i) | Replace(i, c) | Push(c)
//!        |--> endpoint list (copy on write)     --+
//!        |--> picker.apply(edits)                 +--> next snapshot, swapped in
//!        |     (or build, for policies that must) |    removed cores retired
//!        '--> id index, counters book            -+    gauges published
//!
//!   picker stale (ring hash, Maglev follow edits through their old table)
//!        --> rebuilt in the background once no event came for
//!            REBUILD_QUIET (at most REBUILD_MAX_DELAY after the first edit)
//! ```

use foldhash::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::connect;
use super::endpoint::{Endpoint, EndpointCore};
use super::Shared;
use crate::balance::{Candidate, Chunked, Edit, Picker};
use crate::health::{self, CheckResult};
use crate::instance::Instance;
use crate::metrics as m;
use crate::registry::WatchEvent;

/// A stale picker is rebuilt once the set has not changed for this long ...
const REBUILD_QUIET: Duration = Duration::from_millis(250);
/// ... or at the latest this long after it became stale.
const REBUILD_MAX_DELAY: Duration = Duration::from_secs(3);

/// One immutable view of the instance set and its picker.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub endpoints: Chunked<Endpoint>,
    pub picker: Arc<dyn Picker>,
}

impl Snapshot {
    pub(crate) fn empty(shared_balancer: &dyn crate::balance::Balancer) -> Self {
        Self {
            endpoints: Chunked::default(),
            picker: shared_balancer.build(&[]),
        }
    }
}

/// Where one instance id is in the current snapshot.
#[derive(Debug)]
struct Slot {
    index: usize,
    /// The event that last listed the id (to find those that left).
    seen: u64,
    /// A 64-bit hash of the registry entry: an unchanged entry is told
    /// without reading the stored one (which, in a set of 10,000, is far
    /// from the cache), at a 2^-64 chance of missing a change.
    print: u64,
}

/// The [`Slot::print`] of an entry.
fn print(inst: &Instance) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6679_6572_7270_6321).hash_one(inst)
}

/// The discovery task's index of the current snapshot by instance id. Only
/// that task changes the snapshot, so the index is its own, updated with
/// every edit.
#[derive(Debug, Default)]
pub(crate) struct Index {
    slots: HashMap<String, Slot>,
    event: u64,
    /// Ids the registry lists as disabled.
    disabled: HashSet<String>,
    /// With a selector, which may narrow by the whole set: every instance
    /// the registry lists, so that a delta can be turned into a whole set.
    all: Option<HashMap<String, Instance>>,
}

/// What one event changes.
#[derive(Default)]
struct Diff {
    removed: Vec<String>,
    changed: Vec<Instance>,
    added: Vec<Instance>,
}

impl Index {
    /// Sorts a registry event against the snapshot.
    fn event(&mut self, shared: &Shared, endpoints: &Chunked<Endpoint>, event: WatchEvent) -> Diff {
        let selector = shared.config.selector.as_deref();
        match event {
            WatchEvent::Full(set) => {
                if selector.is_some() {
                    self.all = Some(set.iter().map(|i| (i.id().to_owned(), i.clone())).collect());
                }
                self.whole(selector, endpoints, set)
            }
            WatchEvent::Delta { upserted, removed } => match self.all.as_mut() {
                Some(all) => {
                    for id in &removed {
                        all.remove(id);
                    }
                    for inst in upserted {
                        all.insert(inst.id().to_owned(), inst);
                    }
                    let set = all.values().cloned().collect();
                    self.whole(selector, endpoints, set)
                }
                None => self.delta(endpoints, upserted, removed),
            },
        }
    }

    /// Sorts a whole set against the snapshot: disabled instances and those
    /// the selector rejects are left out.
    fn whole(
        &mut self,
        selector: Option<&dyn crate::discovery::Selector>,
        endpoints: &Chunked<Endpoint>,
        set: Vec<Instance>,
    ) -> Diff {
        // Disabled instances take no new traffic (in-flight calls keep their
        // endpoint until they end); the selector narrows the rest.
        self.disabled = set
            .iter()
            .filter(|i| !i.is_enabled())
            .map(|i| i.id().to_owned())
            .collect();
        let mut set: Vec<Instance> = if self.disabled.is_empty() {
            set
        } else {
            set.into_iter().filter(Instance::is_enabled).collect()
        };
        if let Some(selector) = selector {
            set = crate::discovery::apply(selector, &set);
        }
        self.diff(endpoints, set)
    }

    /// Sorts a delta against the snapshot.
    fn delta(
        &mut self,
        endpoints: &Chunked<Endpoint>,
        upserted: Vec<Instance>,
        removed: Vec<String>,
    ) -> Diff {
        let mut diff = Diff::default();
        for id in removed {
            self.disabled.remove(&id);
            if self.slots.contains_key(&id) {
                diff.removed.push(id);
            }
        }
        // Several entries for one id in one delta: the last one counts.
        let last: HashMap<String, usize> = if upserted.len() > 1 {
            upserted
                .iter()
                .enumerate()
                .map(|(k, i)| (i.id().to_owned(), k))
                .collect()
        } else {
            HashMap::default()
        };
        for (k, inst) in upserted.into_iter().enumerate() {
            if last.get(inst.id()).is_some_and(|&l| l != k) {
                continue;
            }
            let slot = self.slots.get(inst.id());
            if !inst.is_enabled() {
                self.disabled.insert(inst.id().to_owned());
                if slot.is_some() {
                    diff.removed.push(inst.id().to_owned());
                }
                continue;
            }
            self.disabled.remove(inst.id());
            if slot.is_some_and(|s| s.print == print(&inst)) {
                continue;
            }
            match slot.and_then(|s| endpoints.get(s.index)) {
                None => diff.added.push(inst),
                Some(current) if current.core.same_connection(&inst) => diff.changed.push(inst),
                Some(current) => {
                    diff.removed.push(current.core.id.clone());
                    diff.added.push(inst);
                }
            }
        }
        diff
    }

    /// Sorts a new (enabled, selected) instance set against the snapshot.
    fn diff(&mut self, endpoints: &Chunked<Endpoint>, set: Vec<Instance>) -> Diff {
        self.event += 1;
        let event = self.event;
        let mut diff = Diff::default();
        let mut listed = 0usize;
        for inst in set {
            let Some(slot) = self.slots.get_mut(inst.id()) else {
                diff.added.push(inst);
                continue;
            };
            if slot.seen == event {
                // A duplicate id in one event: the first one wins.
                continue;
            }
            slot.seen = event;
            listed += 1;
            if slot.print == print(&inst) {
                continue;
            }
            let Some(current) = endpoints.get(slot.index) else {
                continue;
            };
            if current.core.same_connection(&inst) {
                diff.changed.push(inst);
            } else {
                // A new address or transport is a new endpoint (channel,
                // breaker, load).
                diff.removed.push(current.core.id.clone());
                diff.added.push(inst);
            }
        }
        if listed < self.slots.len() {
            diff.removed.extend(
                self.slots
                    .iter()
                    .filter(|(_, slot)| slot.seen != event)
                    .map(|(id, _)| id.clone()),
            );
        }
        diff
    }
}

/// Applies one registry event: the next snapshot, the removed cores retired,
/// counters marked, gauges published.
fn apply(shared: &Arc<Shared>, index: &mut Index, event: WatchEvent) {
    let current = shared.snapshot.load_full();
    let diff = index.event(shared, &current.endpoints, event);
    shared
        .disabled
        .store(index.disabled.len(), std::sync::atomic::Ordering::Relaxed);
    let mut endpoints = current.endpoints.clone();
    let mut edits = Vec::new();
    let mut removed = Vec::with_capacity(diff.removed.len());
    for id in &diff.removed {
        let Some(slot) = index.slots.remove(id) else {
            continue;
        };
        let Some(gone) = endpoints.swap_remove(slot.index) else {
            continue;
        };
        edits.push(Edit::SwapRemove(slot.index));
        removed.push(gone.core);
        if let Some(moved) = endpoints.get(slot.index) {
            if let Some(s) = index.slots.get_mut(moved.core.id.as_str()) {
                s.index = slot.index;
            }
        }
    }
    for inst in diff.changed {
        let Some(i) = index.slots.get_mut(inst.id()).map(|s| {
            s.print = print(&inst);
            s.index
        }) else {
            continue;
        };
        let Some(core) = endpoints.get(i).map(|e| Arc::clone(&e.core)) else {
            continue;
        };
        let endpoint = Endpoint {
            instance: Arc::new(inst),
            core,
        };
        edits.push(Edit::Replace(i, endpoint.candidate()));
        endpoints.set(i, endpoint);
    }
    for inst in diff.added {
        if index.slots.contains_key(inst.id()) {
            // A duplicate id in one event: the first one wins.
            continue;
        }
        let Some(core) = new_core(shared, &inst) else {
            continue;
        };
        let i = endpoints.len();
        index.slots.insert(
            core.id.clone(),
            Slot {
                index: i,
                seen: index.event,
                print: print(&inst),
            },
        );
        let endpoint = Endpoint {
            instance: Arc::new(inst),
            core,
        };
        edits.push(Edit::Push(endpoint.candidate()));
        endpoints.push(endpoint);
    }
    let n = endpoints.len();
    if !edits.is_empty() {
        // A change of more than a quarter of the set (the first event, a
        // bulk replacement) is cheaper and better served by a fresh build.
        let bulk = edits.len().saturating_mul(4) > n;
        let picker = if bulk {
            build_picker(shared, &endpoints)
        } else {
            Arc::clone(&current.picker)
                .apply(&edits)
                .unwrap_or_else(|| build_picker(shared, &endpoints))
        };
        tracing::debug!(service = %shared.service, endpoints = n, edits = edits.len(),
            removed = removed.len(), "instance set changed");
        shared
            .snapshot
            .store(Arc::new(Snapshot { endpoints, picker }));
    }
    drop(current);
    // Endpoints that left count nowhere any more, even while a call that
    // is still running keeps them alive.
    for core in &removed {
        core.state.retire(&shared.tally);
    }
    shared.sweep_instances(removed.iter().map(|c| c.id.as_str()));
    shared.ready.send_replace(n);
    shared.publish_endpoint_gauges();
    shared.became_eligible.notify_waiters();
}

fn build_picker(shared: &Shared, endpoints: &Chunked<Endpoint>) -> Arc<dyn Picker> {
    let candidates: Vec<Candidate> = endpoints.iter().map(Endpoint::candidate).collect();
    shared.config.balancer.build(&candidates)
}

/// Builds the policy again from the whole current list, off the runtime's
/// worker threads, for a picker that follows edits through an old table.
async fn rebuild(shared: &Weak<Shared>) {
    let Some(s) = shared.upgrade() else { return };
    let snap = s.snapshot.load_full();
    if !snap.picker.is_stale() {
        return;
    }
    let balancer = Arc::clone(&s.config.balancer);
    drop(s);
    let endpoints = snap.endpoints.clone();
    let started = Instant::now();
    let built = tokio::task::spawn_blocking(move || {
        let candidates: Vec<Candidate> = endpoints.iter().map(Endpoint::candidate).collect();
        balancer.build(&candidates)
    })
    .await;
    let (Some(s), Ok(picker)) = (shared.upgrade(), built) else {
        return;
    };
    // Only this task changes the snapshot, and it waited for the build: the
    // list is still the one the picker was built for.
    tracing::debug!(service = %s.service, endpoints = snap.endpoints.len(),
        took = ?started.elapsed(), "balancing table rebuilt");
    s.snapshot.store(Arc::new(Snapshot {
        endpoints: snap.endpoints.clone(),
        picker,
    }));
}

fn new_core(shared: &Arc<Shared>, inst: &Instance) -> Option<Arc<EndpointCore>> {
    let connect = match connect::prepare(
        &shared.config.transport,
        shared.config.connect_timeout,
        inst,
    ) {
        Ok(connect) => connect,
        Err(e) => {
            tracing::warn!(instance = %inst, error = %e, "skipping instance: no channel");
            return None;
        }
    };
    let counters = shared.instance_counters(inst.id(), inst.address());
    let label: Arc<str> = if shared.config.instance_label {
        Arc::from(inst.id())
    } else {
        Arc::from(super::AGGREGATE_INSTANCE_LABEL)
    };
    let core = Arc::new(EndpointCore::new(
        inst,
        connect,
        shared.config.breaker.build(),
        counters,
        Arc::clone(&shared.service),
        label,
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
    let Some((channel, service, id, label)) = core.upgrade().zip(shared.upgrade()).map(|(c, s)| {
        (
            c.service(),
            Arc::clone(&s.service),
            c.id.clone(),
            Arc::clone(&c.label),
        )
    }) else {
        return;
    };
    let checked = config.service.clone();
    let mut warned_unknown = false;
    health::run_checker(channel, config, |result, changed| {
        metrics::counter!(m::CLIENT_HEALTH_CHECKS, "service" => service.to_string(),
            "instance" => label.to_string(), "result" => result.as_str())
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
    let mut index = Index::default();
    // When a stale picker is to be rebuilt, and since when it is stale.
    let mut rebuild_at: Option<(Instant, Instant)> = None;
    loop {
        let Some(s) = shared.upgrade() else { return };
        let registry = Arc::clone(&s.registry);
        let service = Arc::clone(&s.service);
        let version = s.config.version.clone();
        drop(s);
        match registry.watch_changes(&service, version.as_deref()).await {
            Ok(mut stream) => loop {
                let event = match rebuild_at {
                    Some((at, _)) => tokio::select! {
                        event = stream.next() => event,
                        () = tokio::time::sleep_until(at) => {
                            rebuild(&shared).await;
                            rebuild_at = None;
                            continue;
                        }
                    },
                    None => stream.next().await,
                };
                let Some(event) = event else {
                    tracing::warn!(service = %service, "registry watch ended; watching again");
                    break;
                };
                let Some(s) = shared.upgrade() else { return };
                match event {
                    Ok(change) => {
                        delay = Duration::from_millis(100);
                        apply(&s, &mut index, change);
                        if s.snapshot.load().picker.is_stale() {
                            let now = Instant::now();
                            let since = rebuild_at.map_or(now, |(_, since)| since);
                            let at = (now + REBUILD_QUIET).min(since + REBUILD_MAX_DELAY);
                            rebuild_at = Some((at, since));
                        }
                    }
                    Err(e) => {
                        metrics::counter!(m::CLIENT_DISCOVERY_ERRORS, "service" => service.to_string()).increment(1);
                        tracing::warn!(service = %service, error = %e, "registry watch error; keeping the last instance set");
                    }
                }
            },
            Err(e) => {
                metrics::counter!(m::CLIENT_DISCOVERY_ERRORS, "service" => service.to_string())
                    .increment(1);
                tracing::warn!(service = %service, error = %e, retry_in = ?delay, "cannot watch the registry");
            }
        }
        if let Some((_, _)) = rebuild_at.take() {
            rebuild(&shared).await;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::balance::RingHash;
    use crate::{Client, Status};

    fn instance(id: u32, port: u32, weight: u32, enabled: bool) -> Instance {
        let inst = Instance::new(format!("i{id}"), "S", format!("10.0.0.1:{}", 1_000 + port))
            .and_then(|i| i.with_weight(weight))
            .expect("valid test instance");
        if enabled {
            inst
        } else {
            inst.with_status(Status::Disabled)
        }
    }

    /// Random whole sets and deltas; after each, the snapshot holds exactly
    /// the enabled instances of the model, the id index points at them, the
    /// endpoints that left are retired (the tally counts only live ones) and
    /// the disabled count is right.
    #[tokio::test]
    async fn deltas_and_whole_sets_keep_snapshot_index_and_tally_consistent() {
        for balancer in [
            Arc::new(crate::balance::LeastRequest) as Arc<dyn crate::Balancer>,
            Arc::new(RingHash::new()),
        ] {
            let (registry, tx) = crate::registry::feed::FedRegistry::new();
            let client = Client::builder("S", Arc::new(registry))
                .balancer(balancer)
                .build()
                .await
                .expect("client");
            let shared = Arc::clone(&client.shared);
            let mut rng = fastrand::Rng::with_seed(11);
            let mut model: BTreeMap<String, Instance> = BTreeMap::new();
            for step in 0..400u32 {
                let event = if step % 25 == 0 {
                    // A whole set: some kept, some changed, some new.
                    let mut set: Vec<Instance> = model
                        .values()
                        .filter(|_| rng.u8(..10) > 0)
                        .cloned()
                        .collect();
                    for _ in 0..rng.u32(..20) {
                        set.push(instance(
                            rng.u32(..200),
                            rng.u32(..3),
                            1 + rng.u32(..5),
                            rng.u8(..8) > 0,
                        ));
                    }
                    // Registries report each id once (canonical sets).
                    let mut by_id = BTreeMap::new();
                    for i in set {
                        by_id.entry(i.id().to_owned()).or_insert(i);
                    }
                    model = by_id;
                    WatchEvent::Full(model.values().cloned().collect())
                } else {
                    let mut upserted = Vec::new();
                    let mut removed = Vec::new();
                    for _ in 0..rng.u32(1..4) {
                        let id = rng.u32(..200);
                        if rng.bool() {
                            let inst =
                                instance(id, rng.u32(..3), 1 + rng.u32(..5), rng.u8(..8) > 0);
                            model.insert(inst.id().to_owned(), inst.clone());
                            upserted.push(inst);
                        } else {
                            model.remove(&format!("i{id}"));
                            removed.push(format!("i{id}"));
                        }
                    }
                    // Upserts apply after removals within one delta.
                    for id in &removed {
                        if let Some(inst) = upserted.iter().rev().find(|i| i.id() == id) {
                            model.insert(id.clone(), inst.clone());
                        }
                    }
                    WatchEvent::Delta { upserted, removed }
                };
                tx.send(event).expect("client listens");
                let want: BTreeMap<&str, &Instance> = model
                    .iter()
                    .filter(|(_, i)| i.is_enabled())
                    .map(|(id, i)| (id.as_str(), i))
                    .collect();
                let mut settled = false;
                // (A background table rebuild may hold the discovery task
                // for a moment.)
                for _ in 0..5_000 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let have: BTreeMap<String, Instance> = client
                        .instances()
                        .into_iter()
                        .map(|i| (i.id().to_owned(), i))
                        .collect();
                    if have.len() == want.len()
                        && have.iter().all(|(id, i)| want.get(id.as_str()) == Some(&i))
                    {
                        settled = true;
                        break;
                    }
                }
                assert!(settled, "step {step}: the snapshot follows the model");
                // Mark a few live endpoints unhealthy: the tally must count
                // exactly the live ones, those that left being retired.
                let snap = shared.snapshot.load();
                for (i, e) in snap.endpoints.iter().enumerate() {
                    if rng.u8(..10) == 0 {
                        e.core
                            .state
                            .set(super::super::eligibility::UNHEALTHY, true, &shared.tally);
                    }
                    assert_eq!(snap.endpoints[i].core.id, e.instance.id());
                }
                let unhealthy = snap
                    .endpoints
                    .iter()
                    .filter(|e| !e.core.is_healthy())
                    .count();
                assert_eq!(shared.tally.counts().unhealthy, unhealthy, "step {step}");
                let disabled = model.values().filter(|i| !i.is_enabled()).count();
                assert_eq!(
                    shared.disabled.load(std::sync::atomic::Ordering::Relaxed),
                    disabled,
                    "step {step}"
                );
            }
        }
    }
}
