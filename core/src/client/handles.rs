//! Metric handles registered once and reused, so that the call path builds
//! no label strings. Handles are registered with the recorder installed when
//! they are first used: install the recorder before the first call.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use metrics::{Counter, Histogram};
use tonic::Code;

use crate::failover::classify::{code_name, Outcome};
use crate::metrics as m;

/// Distinct outcome labels: the 17 gRPC codes and four transport outcomes.
const OUTCOMES: usize = 21;

fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Status(code) => usize::try_from(code as i32).unwrap_or(2).min(16),
        Outcome::NotSent => 17,
        Outcome::TransportError => 18,
        Outcome::TimedOut => 19,
        Outcome::Unreachable => 20,
    }
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

/// Request counters (by code), duration histogram and retry counter of one
/// method.
#[derive(Debug)]
struct MethodHandles {
    requests: [OnceLock<Counter>; 17],
    duration: Histogram,
    retries: Counter,
}

/// Per-method handles of one client.
#[derive(Debug)]
pub(crate) struct MethodTable {
    service: Arc<str>,
    methods: RwLock<HashMap<String, Arc<MethodHandles>>>,
}

impl MethodTable {
    pub(crate) fn new(service: Arc<str>) -> Self {
        Self {
            service,
            methods: RwLock::new(HashMap::new()),
        }
    }

    fn get(&self, method: &str) -> Arc<MethodHandles> {
        if let Some(h) = self
            .methods
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(method)
        {
            return Arc::clone(h);
        }
        let mut map = self.methods.write().unwrap_or_else(|e| e.into_inner());
        let service = self.service.to_string();
        let handles = map.entry(method.to_owned()).or_insert_with(|| {
            Arc::new(MethodHandles {
                requests: std::array::from_fn(|_| OnceLock::new()),
                duration: metrics::histogram!(m::CLIENT_REQUEST_DURATION,
                    "service" => service.clone(), "method" => method.to_owned()),
                retries: metrics::counter!(m::CLIENT_RETRIES,
                    "service" => service.clone(), "method" => method.to_owned()),
            })
        });
        Arc::clone(handles)
    }

    /// Counts a finished call and records its duration.
    pub(crate) fn call(&self, method: &str, code: Code, seconds: f64) {
        let h = self.get(method);
        let i = usize::try_from(code as i32).unwrap_or(2).min(16);
        h.requests[i]
            .get_or_init(|| {
                metrics::counter!(m::CLIENT_REQUESTS, "service" => self.service.to_string(),
                    "method" => method.to_owned(), "code" => code_name(code))
            })
            .increment(1);
        h.duration.record(seconds);
    }

    /// Counts a retry.
    pub(crate) fn retry(&self, method: &str) {
        self.get(method).retries.increment(1);
    }
}
