//! Peak EWMA: the power of two choices on expected latency.

use std::sync::Arc;

use super::load::now_nanos;
use super::p2c::WeightedLoads;
use super::{Balancer, Candidate, Edit, PickContext, Picker};

/// Draws two distinct random eligible endpoints and picks the one with the
/// lower peak-EWMA cost ([`Load::peak_ewma_cost`](super::Load::peak_ewma_cost):
/// the latency estimate times the requests in flight plus one), divided by
/// its weight. Ties keep the first, random, draw.
///
/// The estimate jumps to a latency peak at once and decays slowly (as in
/// Finagle, linkerd and tower), so an endpoint that turns slow loses traffic
/// immediately; an endpoint that no longer gets traffic sees its estimate
/// decay over time, so it is probed again eventually instead of starving.
/// Latencies come from the client through [`Load::end`](super::Load::end).
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use fyerrpc::balance::{Balancer, Candidate, PeakEwma, PickContext};
/// use fyerrpc::Instance;
///
/// let endpoints: Vec<Candidate> = (1..=2)
///     .map(|i| Candidate::new(Arc::new(
///         Instance::new(format!("s{i}"), "Greet", format!("127.0.0.1:800{i}")).unwrap(),
///     )))
///     .collect();
/// endpoints[0].load().observe(Duration::from_millis(40)); // s1 is slow
/// endpoints[1].load().observe(Duration::from_millis(2));
/// let picker = PeakEwma.build(&endpoints);
/// assert_eq!(picker.pick(&PickContext::new("/GreetService/SayHello")), Some(1));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct PeakEwma;

impl Balancer for PeakEwma {
    fn name(&self) -> &'static str {
        "peak_ewma"
    }

    fn build(&self, endpoints: &[Candidate]) -> Arc<dyn Picker> {
        Arc::new(PeakEwmaPicker(WeightedLoads::new(endpoints)))
    }
}

#[derive(Debug)]
struct PeakEwmaPicker(WeightedLoads);

impl Picker for PeakEwmaPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let now = now_nanos();
        self.0.pick_cheaper(ctx, |load| load.peak_ewma_cost_at(now))
    }

    fn apply(self: Arc<Self>, edits: &[Edit]) -> Option<Arc<dyn Picker>> {
        Some(Arc::new(PeakEwmaPicker(self.0.edited(edits))))
    }
}
