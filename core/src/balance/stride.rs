//! The lock-free static stride scheduler (after gRPC's weighted round robin),
//! for weight sets whose smooth schedule would be too long to precompute.
//!
//! A sequence number (one per thread, striped so that threads picking at
//! once do not contend) walks the slots in order, one generation after
//! another; slot `s` with scaled weight `w` (at most [`SCALE`]) is accepted
//! in generation `g` when `(w·g + SCALE/2) mod SCALE >= SCALE - w`, that is
//! in `w` of every `SCALE` generations, evenly spaced. Picking is one atomic
//! increment per probe and allocation-free.
//!
//! The expected number of probes per pick is `slots · max(w) / Σw`. To keep
//! it small (at most about 2) whatever the weights, an endpoint heavier than
//! the mean weight is split into `ceil(weight / mean)` slots, spread evenly
//! over the slot order.

use std::fmt;

use super::striped::StripedCounter;

/// The largest scaled slot weight.
const SCALE: u64 = u16::MAX as u64;

/// Stride scheduler over a fixed weight set.
pub(super) struct Stride {
    /// The endpoint owning each slot.
    owners: Box<[u32]>,
    /// Each slot's weight, scaled so the heaviest is [`SCALE`].
    weights: Box<[u16]>,
    seq: StripedCounter,
}

impl Stride {
    /// A scheduler over endpoints with `weights` (each at least 1; at least
    /// one endpoint), starting at a random point of its sequence.
    pub(super) fn new(weights: &[u64]) -> Self {
        let slots = split(weights);
        let max = slots.iter().map(|s| s.weight).fold(0.0, f64::max);
        let scaled = |w: f64| (w / max * SCALE as f64).round().clamp(1.0, SCALE as f64) as u16;
        let len = slots.len() as u64;
        Self {
            owners: slots.iter().map(|s| s.owner).collect(),
            weights: slots.iter().map(|s| scaled(s.weight)).collect(),
            seq: StripedCounter::new(fastrand::u64(..len.max(1) * SCALE), len * SCALE),
        }
    }

    /// The next endpoint in the weighted sequence.
    pub(super) fn next(&self) -> usize {
        let len = self.owners.len() as u64;
        if len == 0 {
            return 0;
        }
        let mut slot = 0;
        // The heaviest slot accepts in every generation, so one pass over
        // the slots always ends the loop.
        for _ in 0..=len {
            let seq = self.seq.next();
            slot = (seq % len) as usize;
            let generation = (seq / len) % SCALE;
            let w = u64::from(self.weights[slot]);
            if (w * generation + SCALE / 2) % SCALE >= SCALE - w {
                break;
            }
        }
        self.owners[slot] as usize
    }
}

impl fmt::Debug for Stride {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stride")
            .field("slots", &self.owners.len())
            .finish_non_exhaustive()
    }
}

struct Slot {
    owner: u32,
    weight: f64,
    /// Where in the slot order, in `[0, 1)`.
    position: f64,
}

/// Splits endpoints heavier than the mean into several slots; an endpoint's
/// slots are evenly spaced over the order, with a phase set by its index.
fn split(weights: &[u64]) -> Vec<Slot> {
    let n = weights.len() as f64;
    let mean = weights.iter().sum::<u64>() as f64 / n;
    let mut slots = Vec::with_capacity(weights.len() * 2);
    for (i, &w) in weights.iter().enumerate() {
        let w = w as f64;
        let k = (w / mean).ceil().max(1.0);
        let phase = (i as f64 + 0.5) / n;
        for j in 0..k as u64 {
            slots.push(Slot {
                owner: i as u32,
                weight: w / k,
                position: (j as f64 + phase) / k,
            });
        }
    }
    slots.sort_by(|a, b| {
        a.position
            .total_cmp(&b.position)
            .then(a.owner.cmp(&b.owner))
    });
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(weights: &[u64], picks: usize) -> Vec<f64> {
        let s = Stride::new(weights);
        let mut counts = vec![0usize; weights.len()];
        for _ in 0..picks {
            counts[s.next()] += 1;
        }
        counts.iter().map(|&c| c as f64 / picks as f64).collect()
    }

    fn assert_shares(weights: &[u64], picks: usize, tolerance: f64) {
        let total: u64 = weights.iter().sum();
        for (i, got) in shares(weights, picks).into_iter().enumerate() {
            let want = weights[i] as f64 / total as f64;
            assert!(
                (got - want).abs() <= tolerance,
                "endpoint {i}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn shares_follow_weights() {
        assert_shares(&[1, 2, 3, 4], 100_000, 0.005);
        assert_shares(&[1], 10, 0.0);
    }

    #[test]
    fn skewed_weights_stay_proportional_and_cheap() {
        // One heavy endpoint and many light ones: the heavy one is split.
        let mut weights = vec![1u64; 999];
        weights.push(10_000);
        let s = split(&weights);
        assert!(s.len() <= 2 * weights.len(), "{}", s.len());
        let heavy: f64 = s.iter().filter(|s| s.owner == 999).map(|s| s.weight).sum();
        assert!((heavy - 10_000.0).abs() < 1e-6);
        assert_shares(&weights, 200_000, 0.01);
    }

    #[test]
    fn probes_stay_few() {
        let mut weights = vec![3u64; 500];
        weights.push(10_000);
        let s = Stride::new(&weights);
        let before = s.seq.peek();
        for _ in 0..10_000 {
            s.next();
        }
        let probes = s.seq.peek().wrapping_sub(before);
        assert!(probes < 30_000, "{probes} probes for 10000 picks");
    }
}
