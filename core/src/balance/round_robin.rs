//! Round robin: each eligible endpoint in turn.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{Balancer, Candidate, PickContext, Picker};

/// Round robin over the endpoints, skipping ineligible ones. Weights are
/// ignored (see [`WeightedRoundRobin`](super::WeightedRoundRobin)).
///
/// Each picker starts at a random offset so that many clients do not hit the
/// same instance first.
#[derive(Debug, Clone, Copy, Default)]
pub struct RoundRobin;

impl Balancer for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn build(&self, endpoints: &[Candidate]) -> Arc<dyn Picker> {
        let n = endpoints.len();
        Arc::new(RoundRobinPicker {
            n,
            next: AtomicUsize::new(if n == 0 { 0 } else { fastrand::usize(..n) }),
        })
    }
}

#[derive(Debug)]
struct RoundRobinPicker {
    n: usize,
    next: AtomicUsize,
}

impl Picker for RoundRobinPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        if self.n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.n;
        for k in 0..self.n {
            let i = (start + k) % self.n;
            if ctx.is_eligible(i) {
                return Some(i);
            }
        }
        None
    }
}
