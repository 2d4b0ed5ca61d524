//! Metric handles registered once and reused, so that the call path builds
//! no label strings. Handles are registered with the recorder installed when
//! they are first used: install the recorder before the first call.
//!
//! Methods are interned: the first call of a method makes its
//! [`MethodEntry`] (its metric handles and whether it is idempotent), and
//! later calls find it without a lock or an allocation. The table is an
//! immutable map swapped whole when a method is added; lookups first compare
//! the address of the request's path, which tonic-generated clients take
//! from one static string per method, and only then hash it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use metrics::{Counter, Histogram};
use tonic::Code;

use crate::failover::classify::{code_name, Outcome};
use crate::metrics as m;

/// Distinct outcome labels: the 17 gRPC codes and four transport outcomes.
const OUTCOMES: usize = 21;

fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Status(code) => code_index(code),
        Outcome::NotSent => 17,
        Outcome::TransportError => 18,
        Outcome::TimedOut => 19,
        Outcome::Unreachable => 20,
    }
}

fn code_index(code: Code) -> usize {
    usize::try_from(code as i32).unwrap_or(2).min(16)
}

/// Attempt counters of one instance, by outcome.
#[derive(Debug)]
pub(crate) struct InstanceHandles {
    service: Arc<str>,
    instance: Arc<str>,
    attempts: [OnceLock<Counter>; OUTCOMES],
}

impl InstanceHandles {
    pub(crate) fn new(service: Arc<str>, instance: &str) -> Self {
        Self {
            service,
            instance: Arc::from(instance),
            attempts: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    pub(crate) fn attempt(&self, outcome: Outcome) {
        self.attempts[outcome_index(outcome)]
            .get_or_init(|| {
                metrics::counter!(m::CLIENT_ATTEMPTS, "service" => self.service.to_string(),
                    "instance" => self.instance.to_string(), "outcome" => outcome.label())
            })
            .increment(1);
    }
}

/// One method of one client: its path, whether it may be sent more than
/// once, and its request counters (by code), duration histogram and retry
/// counter.
#[derive(Debug)]
pub(crate) struct MethodEntry {
    path: Box<str>,
    service: Arc<str>,
    idempotent: bool,
    requests: [OnceLock<Counter>; 17],
    duration: Histogram,
    retries: Counter,
}

impl MethodEntry {
    /// The method's path (`/package.Service/Method`).
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// Whether the method is configured as idempotent.
    pub(crate) fn idempotent(&self) -> bool {
        self.idempotent
    }

    /// Counts a finished call and records its duration.
    pub(crate) fn call(&self, code: Code, seconds: f64) {
        self.requests[code_index(code)]
            .get_or_init(|| {
                metrics::counter!(m::CLIENT_REQUESTS, "service" => self.service.to_string(),
                    "method" => self.path.to_string(), "code" => code_name(code))
            })
            .increment(1);
        self.duration.record(seconds);
    }

    /// Counts a retry.
    pub(crate) fn retry(&self) {
        self.retries.increment(1);
    }
}

/// At most this many path addresses are remembered; paths built anew for
/// every call (not from a static string) are then found by hashing.
const ADDRESSES: usize = 32;

/// One version of the interned methods.
#[derive(Debug, Default)]
struct Interned {
    /// `(address, length, index)` of paths seen.
    by_address: Vec<(usize, usize, usize)>,
    by_path: HashMap<Box<str>, usize>,
    entries: Vec<Arc<MethodEntry>>,
}

impl Interned {
    fn find(&self, path: &str) -> Option<&Arc<MethodEntry>> {
        let key = (path.as_ptr() as usize, path.len());
        let by_address = self
            .by_address
            .iter()
            .find(|&&(a, l, _)| (a, l) == key)
            .map(|&(_, _, i)| i)
            // The address may have been reused for another path since.
            .filter(|&i| self.entries.get(i).is_some_and(|e| &*e.path == path));
        by_address
            .or_else(|| self.by_path.get(path).copied())
            .and_then(|i| self.entries.get(i))
    }

    fn knows_address(&self, path: &str) -> bool {
        let key = (path.as_ptr() as usize, path.len());
        self.by_address.iter().any(|&(a, l, _)| (a, l) == key)
    }
}

/// Client-wide counters of rare events (labelled by service only).
#[derive(Debug, Default)]
struct ClientHandles {
    panic_picks: OnceLock<Counter>,
    transparent_retries: OnceLock<Counter>,
    budget_exhausted: OnceLock<Counter>,
}

/// Per-method handles of one client, and its client-wide event counters.
#[derive(Debug)]
pub(crate) struct MethodTable {
    service: Arc<str>,
    interned: ArcSwap<Interned>,
    /// Serializes additions (lookups never take it).
    adding: Mutex<()>,
    client: ClientHandles,
}

impl MethodTable {
    pub(crate) fn new(service: Arc<str>) -> Self {
        Self {
            service,
            interned: ArcSwap::from_pointee(Interned::default()),
            adding: Mutex::new(()),
            client: ClientHandles::default(),
        }
    }

    /// The entry of `path`, made on first use (`idempotent` is asked then).
    /// No lock and no allocation once the method has been seen.
    pub(crate) fn entry(&self, path: &str, idempotent: impl Fn(&str) -> bool) -> Arc<MethodEntry> {
        {
            let interned = self.interned.load();
            if let Some(entry) = interned.find(path) {
                if interned.knows_address(path) || interned.by_address.len() >= ADDRESSES {
                    return Arc::clone(entry);
                }
            }
        }
        self.add(path, idempotent)
    }

    #[cold]
    fn add(&self, path: &str, idempotent: impl Fn(&str) -> bool) -> Arc<MethodEntry> {
        let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.interned.load_full();
        let mut next = Interned {
            by_address: current.by_address.clone(),
            by_path: current.by_path.clone(),
            entries: current.entries.clone(),
        };
        let index = match next.by_path.get(path) {
            Some(&i) => i,
            None => {
                let service = self.service.to_string();
                next.entries.push(Arc::new(MethodEntry {
                    path: path.into(),
                    service: Arc::clone(&self.service),
                    idempotent: idempotent(path),
                    requests: std::array::from_fn(|_| OnceLock::new()),
                    duration: metrics::histogram!(m::CLIENT_REQUEST_DURATION,
                        "service" => service.clone(), "method" => path.to_owned()),
                    retries: metrics::counter!(m::CLIENT_RETRIES,
                        "service" => service, "method" => path.to_owned()),
                }));
                let i = next.entries.len() - 1;
                next.by_path.insert(path.into(), i);
                i
            }
        };
        if next.by_address.len() < ADDRESSES && !next.knows_address(path) {
            next.by_address
                .push((path.as_ptr() as usize, path.len(), index));
        }
        let entry = Arc::clone(&next.entries[index]);
        self.interned.store(Arc::new(next));
        entry
    }

    fn client_counter(&self, cell: &OnceLock<Counter>, name: &'static str) {
        cell.get_or_init(|| metrics::counter!(name, "service" => self.service.to_string()))
            .increment(1);
    }

    /// Counts a pick made in panic mode.
    pub(crate) fn panic_pick(&self) {
        self.client_counter(&self.client.panic_picks, m::CLIENT_PANIC_PICKS);
    }

    /// Counts a transparent retry.
    pub(crate) fn transparent_retry(&self) {
        self.client_counter(
            &self.client.transparent_retries,
            m::CLIENT_TRANSPARENT_RETRIES,
        );
    }

    /// Counts a retry refused by the budget.
    pub(crate) fn budget_exhausted(&self) {
        self.client_counter(&self.client.budget_exhausted, m::CLIENT_BUDGET_EXHAUSTED);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_interned_by_path_whatever_the_address() {
        let table = MethodTable::new(Arc::from("S"));
        let a = table.entry("/S/A", |p| p == "/S/A");
        let again = table.entry("/S/A", |_| panic!("asked once"));
        assert!(Arc::ptr_eq(&a, &again));
        assert!(a.idempotent());
        // The same path from another string (another address).
        let owned = String::from("/S/A");
        assert!(Arc::ptr_eq(&a, &table.entry(&owned, |_| false)));
        let b = table.entry("/S/B", |_| false);
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!((a.path(), b.path()), ("/S/A", "/S/B"));
        assert!(!b.idempotent());
    }

    #[test]
    fn paths_built_per_call_do_not_grow_the_address_list_forever() {
        let table = MethodTable::new(Arc::from("S"));
        for _ in 0..200 {
            let path = String::from("/S/Dynamic");
            assert_eq!(table.entry(&path, |_| false).path(), "/S/Dynamic");
        }
        let interned = table.interned.load();
        assert!(interned.by_address.len() <= ADDRESSES);
        assert_eq!(interned.entries.len(), 1);
    }
}
