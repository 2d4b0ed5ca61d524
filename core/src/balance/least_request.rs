//! Least request: the power of two choices on requests in flight.

use std::sync::Arc;

use super::p2c::WeightedLoads;
use super::{Balancer, Candidate, Edit, PickContext, Picker};

/// Draws two distinct random eligible endpoints and picks the one with fewer
/// requests in flight ([`Load::in_flight`](super::Load::in_flight)), relative
/// to its weight: the cost of an endpoint is `(in_flight + 1) / weight`.
///
/// With equal weights this is plain "fewer in flight"; with unequal weights
/// an endpoint of weight 200 is expected to carry twice the concurrent
/// requests of one of weight 100 (as Envoy's weighted least request with
/// `active_request_bias = 1`). Ties keep the first, random, draw.
///
/// The power of two choices avoids both the herd behaviour of "globally
/// least loaded" (every client rushing to the same idle endpoint) and the
/// O(n) scan it needs, while still steering away from slow or stuck
/// endpoints. A pick is O(1): two draws and two atomic loads.
///
/// ```
/// use std::sync::Arc;
/// use fyerrpc::balance::{Balancer, Candidate, LeastRequest, PickContext};
/// use fyerrpc::Instance;
///
/// let endpoints: Vec<Candidate> = (1..=2)
///     .map(|i| Candidate::new(Arc::new(
///         Instance::new(format!("s{i}"), "Greet", format!("127.0.0.1:800{i}")).unwrap(),
///     )))
///     .collect();
/// endpoints[0].load().start(); // one call in flight on s1
/// let picker = LeastRequest.build(&endpoints);
/// assert_eq!(picker.pick(&PickContext::new("/GreetService/SayHello")), Some(1));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct LeastRequest;

impl Balancer for LeastRequest {
    fn name(&self) -> &'static str {
        "least_request"
    }

    fn build(&self, endpoints: &[Candidate]) -> Arc<dyn Picker> {
        Arc::new(LeastRequestPicker(WeightedLoads::new(endpoints)))
    }
}

#[derive(Debug)]
struct LeastRequestPicker(WeightedLoads);

impl Picker for LeastRequestPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.0
            .pick_cheaper(ctx, |load| f64::from(load.in_flight() + 1))
    }

    fn apply(self: Arc<Self>, edits: &[Edit]) -> Option<Arc<dyn Picker>> {
        Some(Arc::new(LeastRequestPicker(self.0.edited(edits))))
    }
}
