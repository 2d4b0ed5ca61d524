//! Balancer fixtures: instance sets, request keys, and timed pick loops.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use fyerrpc::balance::{self, Balancer, Candidate, PickContext, Picker};
use fyerrpc::Instance;

use crate::cpu;

/// Instance-set sizes the pick benchmarks run at.
pub const SIZES: [usize; 3] = [3, 100, 10_000];

/// The method every benchmark pick is for.
pub const METHOD: &str = "/GreetService/SayHello";

/// Every policy the crate offers, by its flag name.
pub fn policies() -> Vec<(&'static str, Arc<dyn Balancer>)> {
    balance::POLICY_NAMES
        .iter()
        .filter_map(|name| balance::by_name(name).ok().map(|b| (*name, b)))
        .collect()
}

/// The `k`th instance of a set: a distinct id and address per `k`.
pub fn instance(k: usize, weight: u32) -> Instance {
    let address = format!("10.{}.{}.{}:50051", k >> 16 & 0xff, k >> 8 & 0xff, k & 0xff);
    Instance::new(format!("greet-{k}"), "GreetService", address)
        .and_then(|i| i.with_weight(weight))
        .unwrap_or_else(|e| panic!("fixture instance {k} is invalid: {e}"))
}

/// `n` instances of equal weight.
pub fn candidates(n: usize) -> Vec<Candidate> {
    (0..n)
        .map(|k| Candidate::new(Arc::new(instance(k, 1))))
        .collect()
}

/// One instance per weight, in order.
pub fn weighted_candidates(weights: &[u32]) -> Vec<Candidate> {
    weights
        .iter()
        .enumerate()
        .map(|(k, w)| Candidate::new(Arc::new(instance(k, *w))))
        .collect()
}

/// Hashes of `n` distinct request keys (`user-0`, `user-1` ...), as the
/// client computes them from the hash header.
pub fn keys(n: usize) -> Vec<u64> {
    (0..n)
        .map(|i| balance::hash_key(format!("user-{i}").as_bytes()))
        .collect()
}

/// Picks `iters` times, cycling through `keys`, and returns the CPU time
/// the thread spent (see [`cpu::thread`]).
///
/// # Panics
/// When `keys` is empty.
pub fn pick_loop(picker: &dyn Picker, keys: &[u64], iters: u64) -> Duration {
    assert!(!keys.is_empty(), "pick_loop needs at least one key");
    let started = cpu::thread();
    let mut k = 0;
    for _ in 0..iters {
        let ctx = PickContext::new(METHOD).with_hash(keys[k]);
        black_box(picker.pick(black_box(&ctx)));
        k += 1;
        if k == keys.len() {
            k = 0;
        }
    }
    cpu::thread().saturating_sub(started)
}

/// Two threads pick `iters` times each from the same picker, starting
/// together; returns the larger of the two threads' CPU times.
///
/// Both threads are fresh and started one after the other, as a runtime
/// starts its workers, so that per-thread state in a picker (such as striped
/// counters) sees two distinct threads.
pub fn pick_two_threads(picker: &Arc<dyn Picker>, keys: &[u64], iters: u64) -> Duration {
    let barrier = Barrier::new(2);
    std::thread::scope(|s| {
        let run = || {
            barrier.wait();
            pick_loop(&**picker, keys, iters)
        };
        let threads = [s.spawn(run), s.spawn(run)];
        threads
            .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .into_iter()
            .max()
            .unwrap_or_default()
    })
}
