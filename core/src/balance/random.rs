//! Random: a uniformly random eligible endpoint.

use std::sync::Arc;

use super::sample::random_eligible;
use super::{len_after, Balancer, Candidate, Edit, PickContext, Picker};

/// Picks a uniformly random eligible endpoint. Weights are ignored (see
/// [`WeightedRandom`](super::WeightedRandom)).
///
/// Stateless, so many clients sharing a set spread without coordination.
/// When a drawn endpoint is ineligible the picker draws again, so the choice
/// stays uniform among the eligible endpoints; only when 16 draws in a
/// row miss (most endpoints are ineligible) does it scan from a random
/// start.
///
/// ```
/// use std::sync::Arc;
/// use fyerrpc::balance::{Balancer, Candidate, PickContext, Random};
/// use fyerrpc::Instance;
///
/// let endpoints: Vec<Candidate> = (1..=3)
///     .map(|i| Candidate::new(Arc::new(
///         Instance::new(format!("s{i}"), "Greet", format!("127.0.0.1:800{i}")).unwrap(),
///     )))
///     .collect();
/// let picker = Random.build(&endpoints);
/// let i = picker.pick(&PickContext::new("/GreetService/SayHello")).unwrap();
/// assert!(i < 3);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Random;

impl Balancer for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn build(&self, endpoints: &[Candidate]) -> Arc<dyn Picker> {
        Arc::new(RandomPicker { n: endpoints.len() })
    }
}

#[derive(Debug)]
struct RandomPicker {
    n: usize,
}

impl Picker for RandomPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        random_eligible(ctx, self.n)
    }

    fn apply(self: Arc<Self>, edits: &[Edit]) -> Option<Arc<dyn Picker>> {
        Some(Arc::new(RandomPicker {
            n: len_after(self.n, edits),
        }))
    }
}
