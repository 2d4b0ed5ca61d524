//! An in-process registry with TTL leases, for tests and single-process setups.
//!
//! Each registration owns its entry through a token of its own; its keeper
//! follows the [registry contract](super::Registry#the-life-of-a-registration):
//!
//! ```text
//!              every TTL/3: entry ours -> renew its lease
//!             +----+
//!             v    |
//!   register --> Keeping ---- entry missing (deleted, expired) ----> put it back
//!                  |  ^                                                  |
//!                  |  +--------------------------------------------------+
//!                  |
//!                  +-- entry holds another registration's token --> Superseded
//!                  |                                          (task ends, entry left alone)
//!                  +-- stop(Deregister) --> remove the entry if still ours --> end
//!                  +-- stop(Abandon) -----> leave it to expire --------------> end
//! ```
//!
//! All of it happens under the registry's lock, so a stop never races a
//! renewal: once the keeper returned, nothing puts the entry back.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{
    canonicalize, RegisterOptions, Registration, Registry, RegistryError, StopMode, WatchStream,
};
use crate::instance::Instance;

#[derive(Debug)]
struct Entry {
    instance: Instance,
    /// `None`: never expires.
    expires: Option<Instant>,
    /// The registration that owns the entry; `None` for fixed entries.
    owner: Option<u64>,
}

/// Source of registration tokens, unique in the process.
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// What one keep-alive round found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// The entry was ours; its lease was renewed.
    Renewed,
    /// The entry was gone; it was put back.
    Restored,
    /// Another registration replaced the entry.
    Superseded,
}

#[derive(Debug, Default)]
struct State {
    /// service -> (version, id) -> entry
    services: HashMap<String, BTreeMap<(String, String), Entry>>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

/// An in-process [`Registry`]: registrations hold a lease of their TTL that a
/// keeper task renews every TTL/3 (putting the entry back if it was deleted);
/// watchers see additions, removals and expiries. Useful in tests and when
/// client and servers share a process.
#[derive(Debug, Clone)]
pub struct MemoryRegistry {
    shared: Arc<Shared>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: watch::channel(0).0,
            }),
        }
    }
    /// Adds an instance that never expires and needs no keeper (a fixed
    /// list). Replaces an entry with the same service, version and id.
    pub fn insert(&self, instance: Instance) {
        self.shared.put(instance, None, None);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    fn put(&self, instance: Instance, ttl: Option<Duration>, owner: Option<u64>) {
        let key = key_of(&instance);
        let expires = ttl.map(expiry);
        self.lock()
            .services
            .entry(instance.service().to_owned())
            .or_default()
            .insert(
                key,
                Entry {
                    instance,
                    expires,
                    owner,
                },
            );
        self.notify();
    }

    /// One keep-alive round of registration `owner`: renews its entry, puts
    /// it back when it is gone, or reports that another one replaced it.
    fn renew(&self, instance: &Instance, ttl: Duration, owner: u64) -> Renewal {
        let now = Instant::now();
        let mut state = self.lock();
        let map = state
            .services
            .entry(instance.service().to_owned())
            .or_default();
        let (renewal, changed) = match map.get_mut(&key_of(instance)) {
            Some(e) if e.owner == Some(owner) => {
                let was_expired = e.expires.is_some_and(|t| t <= now);
                e.expires = Some(expiry(ttl));
                let renewal = if was_expired {
                    Renewal::Restored
                } else {
                    Renewal::Renewed
                };
                (renewal, was_expired)
            }
            Some(_) => (Renewal::Superseded, false),
            None => {
                map.insert(
                    key_of(instance),
                    Entry {
                        instance: instance.clone(),
                        expires: Some(expiry(ttl)),
                        owner: Some(owner),
                    },
                );
                (Renewal::Restored, true)
            }
        };
        drop(state);
        if changed {
            self.notify();
        }
        renewal
    }

    /// Removes the entry of registration `owner`, if it still holds it.
    fn remove_owned(&self, instance: &Instance, owner: u64) {
        let removed = {
            let mut state = self.lock();
            let Some(map) = state.services.get_mut(instance.service()) else {
                return;
            };
            let key = key_of(instance);
            if map.get(&key).is_some_and(|e| e.owner == Some(owner)) {
                map.remove(&key);
                true
            } else {
                false
            }
        };
        if removed {
            self.notify();
        }
    }

    fn remove(&self, instance: &Instance) -> bool {
        let key = key_of(instance);
        let removed = self
            .lock()
            .services
            .get_mut(instance.service())
            .and_then(|m| m.remove(&key))
            .is_some();
        if removed {
            self.notify();
        }
        removed
    }

    /// Live instances of a service and the next expiry among them; drops the
    /// expired ones.
    fn snapshot(&self, service: &str, version: Option<&str>) -> (Vec<Instance>, Option<Instant>) {
        let now = Instant::now();
        let mut state = self.lock();
        let Some(map) = state.services.get_mut(service) else {
            return (Vec::new(), None);
        };
        map.retain(|_, e| e.expires.is_none_or(|t| t > now));
        let mut next = None::<Instant>;
        let set = map
            .values()
            .filter(|e| version.is_none_or(|v| e.instance.version() == v))
            .map(|e| {
                if let Some(t) = e.expires {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
                e.instance.clone()
            })
            .collect();
        (canonicalize(set), next)
    }
}

fn key_of(instance: &Instance) -> (String, String) {
    (instance.version().to_owned(), instance.id().to_owned())
}

/// When a lease of `ttl` taken now runs out (far in the future if that
/// cannot be represented; checked TTLs never get there).
fn expiry(ttl: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(ttl).unwrap_or_else(|| now + super::MAX_TTL)
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(
        &self,
        instance: Instance,
        options: RegisterOptions,
    ) -> Result<Registration, RegistryError> {
        let ttl = options.checked_ttl()?;
        let period = options.keepalive_period();
        let owner = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
        self.shared.put(instance.clone(), Some(ttl), Some(owner));
        let shared = Arc::clone(&self.shared);
        let inst = instance.clone();
        Ok(Registration::spawn(instance, move |mut stop| async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tokio::select! {
                    mode = stop.stopped() => {
                        if mode == StopMode::Deregister {
                            shared.remove_owned(&inst, owner);
                        }
                        return Ok(());
                    }
                    _ = tick.tick() => match shared.renew(&inst, ttl, owner) {
                        Renewal::Renewed => {}
                        Renewal::Restored => tracing::info!(
                            instance = %inst, "registration was gone; put it back"
                        ),
                        Renewal::Superseded => {
                            tracing::info!(
                                instance = %inst,
                                "registration replaced by a newer one; no longer keeping it"
                            );
                            return Ok(());
                        }
                    },
                }
            }
        }))
    }

    async fn deregister(&self, instance: &Instance) -> Result<(), RegistryError> {
        self.shared.remove(instance);
        Ok(())
    }

    async fn discover(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<Vec<Instance>, RegistryError> {
        Ok(self.shared.snapshot(service, version).0)
    }

    async fn watch(
        &self,
        service: &str,
        version: Option<&str>,
    ) -> Result<WatchStream, RegistryError> {
        let shared = Arc::clone(&self.shared);
        let service = service.to_owned();
        let version = version.map(str::to_owned);
        let mut changed = shared.changed.subscribe();
        let stream = channel_stream(move |tx| async move {
            let mut last: Option<Vec<Instance>> = None;
            loop {
                changed.borrow_and_update();
                let (set, next_expiry) = shared.snapshot(&service, version.as_deref());
                if last.as_ref() != Some(&set) {
                    last = Some(set.clone());
                    if tx.send(Ok(set)).await.is_err() {
                        return;
                    }
                }
                let expiry = async {
                    match next_expiry {
                        Some(t) => tokio::time::sleep_until(t + Duration::from_millis(1)).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    _ = expiry => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(stream)
    }
}

/// A [`WatchStream`] fed by a task through a bounded channel: `f` gets the
/// sender and runs on the current runtime; `tx.closed()` tells it the stream
/// was dropped. Backends use it to turn a watch loop into a stream.
pub fn channel_stream<F, Fut>(f: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Vec<Instance>, RegistryError>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::conformance;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let registry = MemoryRegistry::new();
        conformance::run(&conformance::Harness::new(Arc::new(registry))).await;
    }

    fn inst(id: &str, port: u16) -> Instance {
        Instance::new(id, "S", format!("127.0.0.1:{port}")).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_live_registration_is_back_within_a_keepalive_period() {
        let registry = MemoryRegistry::new();
        let options = RegisterOptions::default().with_ttl(Duration::from_secs(30));
        let r = registry
            .register(inst("a", 1), options.clone())
            .await
            .unwrap();
        registry.deregister(&inst("a", 1)).await.unwrap();
        assert!(registry.discover("S", None).await.unwrap().is_empty());
        tokio::time::sleep(options.keepalive_period() + Duration::from_millis(10)).await;
        assert_eq!(registry.discover("S", None).await.unwrap().len(), 1);
        r.shutdown().await.unwrap();
        tokio::time::sleep(options.ttl).await;
        assert!(registry.discover("S", None).await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_replaced_registration_stands_down() {
        let registry = MemoryRegistry::new();
        let options = RegisterOptions::default().with_ttl(Duration::from_secs(3));
        let old = registry
            .register(inst("a", 1), options.clone())
            .await
            .unwrap();
        let new = registry
            .register(inst("a", 2), options.clone())
            .await
            .unwrap();
        tokio::time::sleep(options.ttl * 2).await;
        assert!(!old.is_active(), "the old keeper noticed and ended");
        old.shutdown().await.unwrap();
        let set = registry.discover("S", None).await.unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].address(), "127.0.0.1:2", "the newer entry stays");
        new.shutdown().await.unwrap();
        assert!(registry.discover("S", None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn absurd_ttls_are_refused() {
        let registry = MemoryRegistry::new();
        for ttl in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
            let err = registry
                .register(inst("a", 1), RegisterOptions::default().with_ttl(ttl))
                .await
                .unwrap_err();
            assert!(matches!(err, RegistryError::InvalidArgument(_)), "{err}");
        }
        assert!(registry.discover("S", None).await.unwrap().is_empty());
    }
}
