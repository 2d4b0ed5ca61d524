//! Weighted random: a random endpoint, each with probability proportional to
//! its weight.

use std::sync::Arc;

use super::sample::{scan_from, RANDOM_DRAWS};
use super::{Balancer, Candidate, PickContext, Picker};

/// Picks a random eligible endpoint with probability proportional to its
/// weight.
///
/// [`build`](Balancer::build) computes the prefix sums of the weights; a pick
/// draws a number below the total and binary-searches it (O(log n), no
/// allocation, no shared state). When the drawn endpoint is ineligible the
/// picker draws again, so shares among the eligible endpoints stay
/// proportional to their weights; only when 16 draws in a row miss
/// (most endpoints are ineligible) does it scan onwards from the last draw.
///
/// ```
/// use std::sync::Arc;
/// use fyerrpc::balance::{Balancer, Candidate, PickContext, WeightedRandom};
/// use fyerrpc::Instance;
///
/// let heavy = Instance::new("a", "Greet", "127.0.0.1:8001").unwrap().with_weight(900).unwrap();
/// let light = Instance::new("b", "Greet", "127.0.0.1:8002").unwrap().with_weight(100).unwrap();
/// let picker = WeightedRandom.build(&[
///     Candidate::new(Arc::new(heavy)),
///     Candidate::new(Arc::new(light)),
/// ]);
/// let ctx = PickContext::new("/GreetService/SayHello");
/// let heavy_picks = (0..1000).filter(|_| picker.pick(&ctx) == Some(0)).count();
/// assert!(heavy_picks > 800); // about 900
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedRandom;

impl Balancer for WeightedRandom {
    fn name(&self) -> &'static str {
        "weighted_random"
    }

    fn build(&self, endpoints: &[Candidate]) -> Arc<dyn Picker> {
        let ends = endpoints
            .iter()
            .scan(0u64, |sum, c| {
                *sum += u64::from(c.weight().max(1));
                Some(*sum)
            })
            .collect();
        Arc::new(WeightedRandomPicker { ends })
    }
}

#[derive(Debug)]
struct WeightedRandomPicker {
    /// `ends[i]`: the sum of the weights of endpoints `0..=i`; endpoint `i`
    /// owns the draws in `ends[i - 1]..ends[i]`.
    ends: Box<[u64]>,
}

impl WeightedRandomPicker {
    fn draw(&self, total: u64) -> usize {
        let r = fastrand::u64(..total);
        self.ends.partition_point(|&end| end <= r)
    }
}

impl Picker for WeightedRandomPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let total = *self.ends.last()?;
        let mut i = 0;
        for _ in 0..RANDOM_DRAWS {
            i = self.draw(total);
            if ctx.is_eligible(i) {
                return Some(i);
            }
        }
        scan_from(ctx, i + 1, self.ends.len())
    }
}
