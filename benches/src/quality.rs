//! How well a policy spreads calls: evenness over equal instances, error
//! against weights, and (for consistent hashing) how many keys move when an
//! instance joins.

use std::collections::VecDeque;
use std::time::Duration;

use fyerrpc::balance::{Balancer, Candidate, Feedback, PickContext, Picker};

use crate::picking::METHOD;

/// Policies that ignore weights by design (their weighted counterparts do not).
pub const IGNORES_WEIGHTS: &[&str] = &["round_robin", "random"];

/// Consistent-hashing policies: the pick follows the request's hash key.
pub const HASHING: &[&str] = &["ring_hash", "maglev"];

/// The latency every simulated call takes: instances are equal.
const LATENCY: Duration = Duration::from_millis(1);

/// Evenness of a pick count per instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Most picks of an instance over fewest (1.0 is perfectly even;
    /// infinite when an instance got none).
    pub max_over_min: f64,
    /// Coefficient of variation of the counts: standard deviation over
    /// mean (0.0 is perfectly even).
    pub cv: f64,
}

/// The [`Spread`] of `counts`.
pub fn spread(counts: &[u64]) -> Spread {
    let n = counts.len().max(1) as f64;
    let mean = counts.iter().sum::<u64>() as f64 / n;
    let var = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let max = counts.iter().copied().max().unwrap_or(0) as f64;
    let min = counts.iter().copied().min().unwrap_or(0) as f64;
    Spread {
        max_over_min: if min > 0.0 { max / min } else { f64::INFINITY },
        cv: if mean > 0.0 { var.sqrt() / mean } else { 0.0 },
    }
}

/// The largest relative error of an instance's share of `counts` against
/// its share of `weights`: `max |share / expected - 1|`.
pub fn weight_error(counts: &[u64], weights: &[u32]) -> f64 {
    let total = counts.iter().sum::<u64>() as f64;
    let wsum = weights.iter().map(|&w| f64::from(w)).sum::<f64>();
    if total == 0.0 || wsum == 0.0 {
        return f64::INFINITY;
    }
    counts
        .iter()
        .zip(weights)
        .map(|(&c, &w)| {
            let expected = f64::from(w) / wsum;
            (c as f64 / total / expected - 1.0).abs()
        })
        .fold(0.0, f64::max)
}

/// Runs `picks` calls through `picker` as a closed loop with `concurrency`
/// calls in flight: each pick starts a call on the picked instance (its
/// [`Load`](fyerrpc::balance::Load) goes up) and the oldest call in flight
/// ends after the same latency everywhere, with feedback to the picker.
/// Call `i` carries the request key `keys[i % keys.len()]`. Returns the
/// picks per instance.
pub fn simulate(
    picker: &dyn Picker,
    endpoints: &[Candidate],
    picks: usize,
    concurrency: usize,
    keys: &[u64],
) -> Vec<u64> {
    let mut counts = vec![0u64; endpoints.len()];
    let mut in_flight = VecDeque::with_capacity(concurrency + 1);
    for i in 0..picks {
        let mut ctx = PickContext::new(METHOD);
        if !keys.is_empty() {
            ctx = ctx.with_hash(keys[i % keys.len()]);
        }
        let Some(k) = picker.pick(&ctx) else { continue };
        counts[k] += 1;
        endpoints[k].load().start();
        in_flight.push_back(k);
        if in_flight.len() > concurrency {
            if let Some(done) = in_flight.pop_front() {
                finish(picker, endpoints, done);
            }
        }
    }
    while let Some(done) = in_flight.pop_front() {
        finish(picker, endpoints, done);
    }
    counts
}

fn finish(picker: &dyn Picker, endpoints: &[Candidate], k: usize) {
    endpoints[k].load().end(LATENCY);
    picker.feedback(
        k,
        &Feedback {
            latency: LATENCY,
            success: true,
        },
    );
}

/// The share of `keys` that map to another instance once one instance joins
/// `endpoints` (the first `endpoints.len() - 1` being the set before).
/// Instances are compared by id, not by index.
pub fn moved_on_join(balancer: &dyn Balancer, endpoints: &[Candidate], keys: &[u64]) -> f64 {
    let before = balancer.build(&endpoints[..endpoints.len().saturating_sub(1)]);
    let after = balancer.build(endpoints);
    let owner = |picker: &dyn Picker, key: u64| {
        picker
            .pick(&PickContext::new(METHOD).with_hash(key))
            .map(|i| endpoints[i].instance().id())
    };
    let moved = keys
        .iter()
        .filter(|&&key| owner(&*before, key) != owner(&*after, key))
        .count();
    moved as f64 / keys.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_even_and_skewed_counts() {
        let even = spread(&[10, 10, 10]);
        assert_eq!(even.max_over_min, 1.0);
        assert_eq!(even.cv, 0.0);
        let skewed = spread(&[5, 15]);
        assert_eq!(skewed.max_over_min, 3.0);
        assert!((skewed.cv - 0.5).abs() < 1e-12);
        assert!(spread(&[0, 3]).max_over_min.is_infinite());
    }

    #[test]
    fn weight_error_is_the_worst_relative_share_error() {
        assert_eq!(weight_error(&[10, 20, 30], &[1, 2, 3]), 0.0);
        // Shares 0.5 / 0.5 against 0.25 / 0.75: +100% and -33%.
        assert!((weight_error(&[50, 50], &[1, 3]) - 1.0).abs() < 1e-12);
    }
}
