//! Maglev: consistent hashing of the request's hash key through a lookup
//! table (Google's Maglev, weighted as in Envoy).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::Arc;

use super::remap::Remapped;
use super::sample::{random_eligible, scan_from};
use super::{hash_key, mix64, Balancer, Candidate, Edit, PickContext, Picker};

/// Alternative table slots tried (by rehashing the key) when the key's
/// endpoint is ineligible, before scanning.
const REHASHES: u64 = 16;

/// Consistent hashing on [`PickContext::hash`] with a Maglev lookup table: a
/// pick is a single table read (O(1), against O(log n) for
/// [`RingHash`](super::RingHash)), and endpoints get table slots in
/// proportion to their weights, evenly (within a few slots) rather than
/// within a few percent.
///
/// [`build`](Balancer::build) fills a table of `table_size` slots (a prime,
/// default [`DEFAULT_TABLE_SIZE`](Self::DEFAULT_TABLE_SIZE)): every endpoint
/// walks its own permutation of the slots, derived from its instance id, and
/// claims the next free one in turn, heavier endpoints more often. When an
/// endpoint joins or leaves, about `1/n` of the keys move, and only a small
/// fraction more than that (unlike the ring, a few keys also move between
/// endpoints that stayed). The table must be much larger than the set:
/// keep `table_size` above 100 × the number of endpoints, and keep it the
/// same in every client so that they agree.
///
/// A key whose endpoint is ineligible is rehashed to another slot, the same
/// for every pick of that key, so its calls still stick to one endpoint.
/// Requests without a hash key go to a random eligible endpoint.
///
/// A change of the set is followed as by [`RingHash`](super::RingHash): the
/// old table stays in use, mapped to the new endpoint list, until the client
/// builds it again in the background once the set is quiet.
///
/// ```
/// use std::sync::Arc;
/// use fyerrpc::balance::{hash_key, Balancer, Candidate, Maglev, PickContext};
/// use fyerrpc::Instance;
///
/// let endpoints: Vec<Candidate> = (1..=3)
///     .map(|i| Candidate::new(Arc::new(
///         Instance::new(format!("s{i}"), "Greet", format!("127.0.0.1:800{i}")).unwrap(),
///     )))
///     .collect();
/// let picker = Maglev::default().build(&endpoints);
/// let ctx = PickContext::new("/GreetService/SayHello").with_hash(hash_key(b"user-42"));
/// let first = picker.pick(&ctx);
/// assert!(first.is_some());
/// assert!((0..100).all(|_| picker.pick(&ctx) == first)); // sticky
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Maglev {
    table_size: u64,
}

impl Default for Maglev {
    fn default() -> Self {
        Self {
            table_size: Self::DEFAULT_TABLE_SIZE,
        }
    }
}

impl Maglev {
    /// The default table size (as Envoy): 65,537 slots, 256 KiB, for sets of
    /// up to about 650 endpoints.
    pub const DEFAULT_TABLE_SIZE: u64 = 65_537;

    /// A Maglev table of the default size.
    pub fn new() -> Self {
        Self::default()
    }

    /// The largest table size accepted: 2^24 slots (64 MiB).
    pub const MAX_TABLE_SIZE: u64 = 1 << 24;

    /// A table of at least `size` slots: the smallest prime `>= size`,
    /// with `size` clamped to `2..=MAX_TABLE_SIZE`.
    pub fn with_table_size(mut self, size: u64) -> Self {
        self.table_size = next_prime(size.clamp(2, Self::MAX_TABLE_SIZE));
        self
    }

    /// The number of slots of the table.
    pub fn table_size(&self) -> u64 {
        self.table_size
    }
}

impl Balancer for Maglev {
    fn name(&self) -> &'static str {
        "maglev"
    }

    fn build(&self, endpoints: &[Candidate]) -> Arc<dyn Picker> {
        let table = if endpoints.is_empty() {
            Box::default()
        } else {
            fill_table(endpoints, self.table_size)
        };
        Arc::new(MaglevPicker {
            n: endpoints.len(),
            table,
        })
    }
}

/// One endpoint's walk through the table.
struct Walk {
    endpoint: u32,
    weight: u64,
    offset: u64,
    skip: u64,
    /// Steps taken along the permutation.
    next: u64,
    /// Slots claimed.
    claimed: u64,
}

/// Fills a table of `size` slots (a prime): endpoints claim slots in rounds;
/// in round `r` an endpoint claims its next free slot while
/// `claimed · max_weight <= r · weight`, so the heaviest claims every round
/// and the others in proportion. A heap ordered by the round of each
/// endpoint's next claim keeps this O(size · log n) whatever the weights.
fn fill_table(endpoints: &[Candidate], size: u64) -> Box<[u32]> {
    let mut walks = walks(endpoints, size);
    let max_weight = walks.iter().map(|w| w.weight).max().unwrap_or(1);
    let mut table = vec![u32::MAX; size as usize];
    // (round of the next claim, position in id order)
    let mut due: BinaryHeap<Reverse<(u64, usize)>> =
        (0..walks.len()).map(|k| Reverse((0, k))).collect();
    let mut filled = 0;
    while filled < size {
        let Some(Reverse((_, k))) = due.pop() else {
            break;
        };
        let walk = &mut walks[k];
        let slot = loop {
            let c = ((walk.offset + walk.next * walk.skip) % size) as usize;
            walk.next += 1;
            if table[c] == u32::MAX {
                break c;
            }
        };
        table[slot] = walk.endpoint;
        walk.claimed += 1;
        filled += 1;
        due.push(Reverse((
            (walk.claimed * max_weight).div_ceil(walk.weight),
            k,
        )));
    }
    table.into()
}

/// The endpoints' walks, in instance id order so that every client builds
/// the same table whatever the order of its snapshot.
fn walks(endpoints: &[Candidate], size: u64) -> Vec<Walk> {
    let mut walks: Vec<Walk> = endpoints
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let h = hash_key(c.instance().id().as_bytes());
            Walk {
                endpoint: i as u32,
                weight: u64::from(c.weight().max(1)),
                offset: h % size,
                skip: mix64(h ^ 0x5bd1_e995_5bd1_e995) % (size - 1) + 1,
                next: 0,
                claimed: 0,
            }
        })
        .collect();
    walks.sort_by(|a, b| {
        let id = |w: &Walk| endpoints[w.endpoint as usize].instance().id();
        id(a).cmp(id(b))
    });
    walks
}

/// The smallest prime `>= n` (`n >= 2`).
fn next_prime(n: u64) -> u64 {
    let is_prime = |p: u64| p >= 2 && (2..).take_while(|d| d * d <= p).all(|d| p % d != 0);
    (n..).find(|&p| is_prime(p)).unwrap_or(n)
}

struct MaglevPicker {
    n: usize,
    /// The endpoint of each slot.
    table: Box<[u32]>,
}

impl MaglevPicker {
    fn slot(&self, hash: u64) -> usize {
        self.table
            .get((hash % self.table.len() as u64) as usize)
            .map_or(0, |&i| i as usize)
    }
}

impl Picker for MaglevPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let Some(hash) = ctx.hash else {
            return random_eligible(ctx, self.n);
        };
        if self.n == 0 {
            return None;
        }
        let mut i = self.slot(hash);
        for k in 1..=REHASHES {
            if ctx.is_eligible(i) {
                return Some(i);
            }
            i = self.slot(mix64(
                hash.wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            ));
        }
        scan_from(ctx, i, self.n)
    }

    fn apply(self: Arc<Self>, edits: &[Edit]) -> Option<Arc<dyn Picker>> {
        let n = self.n;
        Some(Remapped::start(self, n, edits))
    }
}

impl fmt::Debug for MaglevPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaglevPicker")
            .field("endpoints", &self.n)
            .field("table_size", &self.table.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::weighted_candidates;

    fn candidates(weights: &[u32]) -> Vec<Candidate> {
        weighted_candidates("m", weights)
    }

    fn slots_per_endpoint(weights: &[u32], size: u64) -> Vec<u64> {
        let table = fill_table(&candidates(weights), size);
        let mut counts = vec![0; weights.len()];
        for &i in table.iter() {
            counts[i as usize] += 1;
        }
        counts
    }

    #[test]
    fn primes() {
        assert_eq!(next_prime(2), 2);
        assert_eq!(next_prime(65_536), 65_537);
        assert_eq!(next_prime(100), 101);
        assert_eq!(
            Maglev::new().with_table_size(1_000_000).table_size(),
            1_000_003
        );
    }

    #[test]
    fn slots_follow_weights_within_a_few() {
        let counts = slots_per_endpoint(&[100; 7], 65_537);
        assert_eq!(counts.iter().sum::<u64>(), 65_537);
        for c in &counts {
            assert!(c.abs_diff(65_537 / 7) <= 1, "{counts:?}");
        }
        let weights = [1, 10, 100, 1_000, 10_000];
        let counts = slots_per_endpoint(&weights, 65_537);
        let total: u32 = weights.iter().sum();
        for (c, w) in counts.iter().zip(weights) {
            let want = 65_537.0 * f64::from(w) / f64::from(total);
            assert!((*c as f64 - want).abs() <= 2.0, "{counts:?}");
        }
    }

    #[test]
    fn same_table_whatever_the_snapshot_order() {
        let endpoints = candidates(&[100, 200, 300, 100]);
        let a = fill_table(&endpoints, 1_009);
        let reversed: Vec<Candidate> = endpoints.iter().rev().cloned().collect();
        let b = fill_table(&reversed, 1_009);
        let id = |e: &[Candidate], i: u32| e[i as usize].instance().id().to_owned();
        for (x, y) in a.iter().zip(b.iter()) {
            assert_eq!(id(&endpoints, *x), id(&reversed, *y));
        }
    }
}
