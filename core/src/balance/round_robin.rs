//! Round robin: each eligible endpoint in turn.

use std::sync::Arc;

use super::sample::follow;
use super::striped::StripedCounter;
use super::{len_after, Balancer, Candidate, Edit, PickContext, Picker};

/// Round robin over the endpoints, skipping ineligible ones. Weights are
/// ignored (see [`WeightedRoundRobin`](super::WeightedRoundRobin)).
///
/// A pick is one atomic increment, of a counter per thread: threads picking
/// at once do not contend, one thread's picks go strictly in turn, and each
/// thread starts at a different endpoint. An ineligible endpoint's turn is
/// skipped (used up, so the eligible endpoints keep equal shares); after a
/// few ineligible turns in a row the picker scans for any eligible endpoint.
/// Each picker starts at a random offset so that many clients do not hit the
/// same instance first.
///
/// ```
/// use std::sync::Arc;
/// use fyerrpc::balance::{Balancer, Candidate, PickContext, RoundRobin};
/// use fyerrpc::Instance;
///
/// let endpoints: Vec<Candidate> = (1..=3)
///     .map(|i| Candidate::new(Arc::new(
///         Instance::new(format!("s{i}"), "Greet", format!("127.0.0.1:800{i}")).unwrap(),
///     )))
///     .collect();
/// let picker = RoundRobin.build(&endpoints);
/// let ctx = PickContext::new("/GreetService/SayHello");
/// let first = picker.pick(&ctx).unwrap();
/// assert_eq!(picker.pick(&ctx), Some((first + 1) % 3));
/// ```
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
            next: StripedCounter::new(fastrand::u64(..n.max(1) as u64), n as u64),
        })
    }
}

#[derive(Debug)]
struct RoundRobinPicker {
    n: usize,
    next: StripedCounter,
}

impl Picker for RoundRobinPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        follow(ctx, self.n, || (self.next.next() % self.n as u64) as usize)
    }

    fn apply(self: Arc<Self>, edits: &[Edit]) -> Option<Arc<dyn Picker>> {
        let n = len_after(self.n, edits);
        Some(Arc::new(RoundRobinPicker {
            n,
            next: StripedCounter::new(fastrand::u64(..n.max(1) as u64), n as u64),
        }))
    }
}
