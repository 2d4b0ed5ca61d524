//! Smooth weighted round robin: each endpoint in turn, as often as its weight
//! says, spread evenly.

use std::fmt;
use std::sync::Arc;

use super::sample::follow;
use super::stride::Stride;
use super::striped::StripedCounter;
use super::{smooth, Balancer, Candidate, PickContext, Picker};

/// Smooth weighted round robin: over any stretch of calls, each endpoint
/// gets a share proportional to its weight, interleaved with the others
/// rather than in bursts (weights 5, 1, 1 give `a a b a a c a`, not
/// `a a a a a b c`).
///
/// [`build`](Balancer::build) precomputes one period of the smooth schedule
/// (nginx's smooth weighted round robin, refined so that the heaviest
/// endpoint gets the shortest possible runs) when it is at most 65,536
/// entries long, which covers any set whose weights, divided by their common
/// divisor, sum to no more than that (10,000 instances of equal weight
/// included). A pick is then one atomic increment and a table read. Larger or
/// more irregular sets use a lock-free stride scheduler (as gRPC's weighted
/// round robin does), with weights at 16-bit precision and about two atomic
/// increments per pick.
///
/// An ineligible endpoint's turn is skipped (used up, not handed to its
/// neighbour in the sequence), so shares among the eligible endpoints stay
/// proportional to their weights. After a few ineligible turns in a row the
/// picker scans for any eligible endpoint.
/// Each picker starts at a random point of its sequence, so clients do not
/// move in lockstep.
///
/// ```
/// use std::sync::Arc;
/// use fyerrpc::balance::{Balancer, Candidate, PickContext, WeightedRoundRobin};
/// use fyerrpc::Instance;
///
/// let endpoints: Vec<Candidate> = [("a", 500), ("b", 100), ("c", 100)]
///     .into_iter()
///     .enumerate()
///     .map(|(i, (id, weight))| {
///         let addr = format!("127.0.0.1:800{i}");
///         let instance = Instance::new(id, "Greet", addr).unwrap().with_weight(weight).unwrap();
///         Candidate::new(Arc::new(instance))
///     })
///     .collect();
/// let picker = WeightedRoundRobin.build(&endpoints);
/// let ctx = PickContext::new("/GreetService/SayHello");
/// let mut counts = [0; 3];
/// for _ in 0..70 {
///     counts[picker.pick(&ctx).unwrap()] += 1;
/// }
/// assert_eq!(counts, [50, 10, 10]);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct WeightedRoundRobin;

impl Balancer for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "weighted_round_robin"
    }

    fn build(&self, endpoints: &[Candidate]) -> Arc<dyn Picker> {
        let weights: Vec<u64> = endpoints
            .iter()
            .map(|c| u64::from(c.weight().max(1)))
            .collect();
        let sequence = match smooth::schedule(&weights) {
            Some(schedule) => Sequence::Schedule(Schedule::new(schedule)),
            None => Sequence::Stride(Stride::new(&weights)),
        };
        Arc::new(WeightedRoundRobinPicker {
            n: endpoints.len(),
            sequence,
        })
    }
}

#[derive(Debug)]
struct WeightedRoundRobinPicker {
    n: usize,
    sequence: Sequence,
}

impl Picker for WeightedRoundRobinPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        follow(ctx, self.n, || self.sequence.next())
    }
}

/// The weighted sequence of endpoint indices a picker follows.
#[derive(Debug)]
enum Sequence {
    Schedule(Schedule),
    Stride(Stride),
}

impl Sequence {
    fn next(&self) -> usize {
        match self {
            Self::Schedule(s) => s.next(),
            Self::Stride(s) => s.next(),
        }
    }
}

/// A precomputed period of the sequence, walked by a counter per thread
/// (striped, so that threads picking at once do not contend).
struct Schedule {
    order: Box<[u32]>,
    next: StripedCounter,
}

impl Schedule {
    fn new(order: Vec<u32>) -> Self {
        let len = order.len() as u64;
        Self {
            order: order.into(),
            next: StripedCounter::new(fastrand::u64(..len.max(1)), len),
        }
    }

    fn next(&self) -> usize {
        let k = self.next.next() % self.order.len().max(1) as u64;
        self.order.get(k as usize).map_or(0, |&i| i as usize)
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Schedule")
            .field("len", &self.order.len())
            .finish_non_exhaustive()
    }
}
