//! An in-process registry with TTL leases, for tests and single-process setups.

use std::collections::{BTreeMap, HashMap};
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
/// keeper task renews every TTL/3; watchers see additions, removals and
/// expiries. Useful in tests and when client and servers share a process.
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
        self.shared.put(instance, None);
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

    fn put(&self, instance: Instance, ttl: Option<Duration>) {
        let key = (instance.version().to_owned(), instance.id().to_owned());
        let expires = ttl.map(|ttl| Instant::now() + ttl);
        self.lock()
            .services
            .entry(instance.service().to_owned())
            .or_default()
            .insert(key, Entry { instance, expires });
        self.notify();
    }

    fn remove(&self, instance: &Instance) -> bool {
        let key = (instance.version().to_owned(), instance.id().to_owned());
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

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(
        &self,
        instance: Instance,
        options: RegisterOptions,
    ) -> Result<Registration, RegistryError> {
        let ttl = options.checked_ttl()?;
        self.shared.put(instance.clone(), Some(ttl));
        let shared = Arc::clone(&self.shared);
        let inst = instance.clone();
        Ok(Registration::spawn(instance, move |mut stop| async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.tick().await;
            loop {
                tokio::select! {
                    mode = stop.stopped() => {
                        if mode == StopMode::Deregister {
                            shared.remove(&inst);
                        }
                        return Ok(());
                    }
                    _ = tick.tick() => shared.put(inst.clone(), Some(ttl)),
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
}
