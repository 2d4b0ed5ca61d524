//! Ring hash: consistent hashing of the request's hash key onto a weighted
//! ring of virtual nodes.

use std::fmt;
use std::sync::Arc;

use super::remap::Remapped;
use super::sample::{random_eligible, scan_from};
use super::{hash_key, mix64, Balancer, Candidate, Edit, PickContext, Picker};

/// Ring entries walked before checking that any endpoint is eligible at all.
const WALK_BEFORE_CHECK: usize = 256;

/// Consistent hashing on [`PickContext::hash`]: requests with the same hash
/// key go to the same endpoint for as long as it stays in the set and
/// eligible, and when an endpoint joins or leaves, only about `1/n` of the
/// keys move (to or from that endpoint).
///
/// [`build`](Balancer::build) places virtual nodes for every endpoint on a
/// ring of 64-bit hashes: `vnodes` nodes (default
/// [`DEFAULT_VNODES`](Self::DEFAULT_VNODES)) for an endpoint of the largest
/// weight in the set, proportionally fewer for lighter ones (at least one).
/// A node's position depends only on the instance id and the node's number,
/// and an endpoint's node count only on its weight relative to the largest,
/// so the ring is the same in every client whatever the order of its
/// snapshot, and an instance joining or leaving leaves the other instances'
/// nodes in place. Only when the ring would exceed `max_ring_size` nodes are
/// the counts scaled down (to `max_ring_size · weight / total weight`).
///
/// Envoy also has a minimum ring size, scaling node counts up for small
/// sets; it is left out here because it makes every endpoint's node count
/// depend on the size of the set, so that a join or leave also moves keys
/// between the endpoints that stay (a third of the keys, not a quarter, when
/// a fourth instance joins three).
///
/// A pick finds the key's position through a bucket index and a short
/// binary search (O(log ring), a couple of cache misses) and walks clockwise
/// to the first node of an eligible endpoint: the keys of an ineligible
/// endpoint spread over the others and come back when it recovers. Requests
/// without a hash key go to a random eligible endpoint.
///
/// When the set changes, the ring is not built again at once (that costs
/// time in proportion to the ring, about 100 ms for a million nodes, and a
/// rollout changes instances one at a time): the old ring stays in use with
/// its endpoints mapped to their new places, keys of an instance that left
/// move on as from an ejected one, and an instance that joined takes only
/// calls without a key. The client builds the ring again in the background
/// once the set has been quiet for a moment (see [`Picker::is_stale`]).
///
/// ```
/// use std::sync::Arc;
/// use fyerrpc::balance::{hash_key, Balancer, Candidate, PickContext, RingHash};
/// use fyerrpc::Instance;
///
/// let endpoints: Vec<Candidate> = (1..=3)
///     .map(|i| Candidate::new(Arc::new(
///         Instance::new(format!("s{i}"), "Greet", format!("127.0.0.1:800{i}")).unwrap(),
///     )))
///     .collect();
/// let picker = RingHash::default().build(&endpoints);
/// let ctx = PickContext::new("/GreetService/SayHello").with_hash(hash_key(b"user-42"));
/// let first = picker.pick(&ctx);
/// assert!(first.is_some());
/// assert!((0..100).all(|_| picker.pick(&ctx) == first)); // sticky
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RingHash {
    vnodes: u64,
    max_ring_size: u64,
}

impl Default for RingHash {
    fn default() -> Self {
        Self {
            vnodes: Self::DEFAULT_VNODES,
            max_ring_size: Self::DEFAULT_MAX_RING_SIZE,
        }
    }
}

impl RingHash {
    /// Default [`with_vnodes`](Self::with_vnodes).
    pub const DEFAULT_VNODES: u64 = 160;
    /// Default [`with_max_ring_size`](Self::with_max_ring_size): 2^20
    /// virtual nodes, 12 MiB (enough for 6,500 instances of equal weight at
    /// the default `vnodes`).
    pub const DEFAULT_MAX_RING_SIZE: u64 = 1 << 20;

    /// A ring hash with the default sizes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Virtual nodes for an endpoint of the largest weight in the set. More
    /// nodes spread keys more evenly (an endpoint's share deviates from its
    /// weight's by about `1/sqrt(vnodes)`, relative) at the cost of memory
    /// (12 bytes per node) and build time.
    pub fn with_vnodes(mut self, vnodes: u64) -> Self {
        self.vnodes = vnodes.max(1);
        self
    }

    /// The largest ring, whatever the number of endpoints (each endpoint
    /// still gets at least one node).
    pub fn with_max_ring_size(mut self, size: u64) -> Self {
        self.max_ring_size = size.max(1);
        self
    }

    /// How many nodes each endpoint gets.
    fn node_counts<'a>(&self, endpoints: &'a [Candidate]) -> impl Iterator<Item = u64> + 'a {
        let weight = |c: &Candidate| u128::from(c.weight().max(1));
        let max = endpoints.iter().map(weight).max().unwrap_or(1);
        let total: u128 = endpoints.iter().map(weight).sum();
        let (vnodes, cap) = (u128::from(self.vnodes), u128::from(self.max_ring_size));
        // count(w) = numerator · w / denominator, at least 1.
        let (numerator, denominator) = if vnodes * total / max <= cap {
            (vnodes, max)
        } else {
            (cap, total)
        };
        endpoints.iter().map(move |c| {
            u64::try_from(numerator * weight(c) / denominator)
                .unwrap_or(u64::MAX)
                .max(1)
        })
    }
}

impl Balancer for RingHash {
    fn name(&self) -> &'static str {
        "ring_hash"
    }

    fn build(&self, endpoints: &[Candidate]) -> Arc<dyn Picker> {
        if endpoints.is_empty() {
            return Arc::new(RingHashPicker::default());
        }
        let mut ring = place_nodes(endpoints, self.node_counts(endpoints));
        ring.sort_unstable();
        let hashes: Box<[u64]> = ring.iter().map(|&(h, _)| h).collect();
        Arc::new(RingHashPicker {
            n: endpoints.len(),
            index: BucketIndex::new(&hashes),
            hashes,
            owners: ring.iter().map(|&(_, i)| i).collect(),
        })
    }
}

/// `(position, endpoint)` of every virtual node, given each endpoint's
/// node count.
fn place_nodes(endpoints: &[Candidate], counts: impl Iterator<Item = u64>) -> Vec<(u64, u32)> {
    let mut ring = Vec::new();
    for ((i, c), count) in endpoints.iter().enumerate().zip(counts) {
        let seed = hash_key(c.instance().id().as_bytes());
        ring.extend((0..count).map(|j| (node_hash(seed, j), i as u32)));
    }
    ring
}

/// The ring position of node `j` of the endpoint whose id hashes to `seed`.
fn node_hash(seed: u64, j: u64) -> u64 {
    mix64(seed.wrapping_add(j.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// Where each range of hashes starts on the ring, by their top bits: a
/// lookup narrows the binary search to a few nodes in one or two cache
/// lines instead of ~20 scattered reads over a ring of megabytes.
#[derive(Default)]
struct BucketIndex {
    /// `starts[b]`: the first node whose hash has top bits `>= b`;
    /// `starts[buckets]` is the ring length.
    starts: Box<[u32]>,
    shift: u32,
}

impl BucketIndex {
    /// About four nodes per bucket.
    fn new(hashes: &[u64]) -> Self {
        let bits = (hashes.len() / 4).max(2).ilog2().min(24);
        let shift = 64 - bits;
        let buckets = 1u64 << bits;
        let mut starts = Vec::with_capacity(buckets as usize + 1);
        let mut k = 0;
        for b in 0..buckets {
            while k < hashes.len() && hashes[k] >> shift < b {
                k += 1;
            }
            starts.push(k as u32);
        }
        starts.push(hashes.len() as u32);
        Self {
            starts: starts.into(),
            shift,
        }
    }

    /// The index of the first of `hashes` (those the index was built from)
    /// that is `>= hash`, or `hashes.len()`.
    fn position(&self, hashes: &[u64], hash: u64) -> usize {
        let b = (hash >> self.shift) as usize;
        let (Some(&lo), Some(&hi)) = (self.starts.get(b), self.starts.get(b + 1)) else {
            return hashes.partition_point(|&h| h < hash);
        };
        let (lo, hi) = (lo as usize, hi as usize);
        lo + hashes[lo..hi].partition_point(|&h| h < hash)
    }
}

#[derive(Default)]
struct RingHashPicker {
    n: usize,
    /// Node positions, ascending.
    hashes: Box<[u64]>,
    /// The endpoint of each node.
    owners: Box<[u32]>,
    index: BucketIndex,
}

impl RingHashPicker {
    /// The endpoints of the nodes from ring index `from`, clockwise, once
    /// round the ring.
    fn clockwise(&self, from: usize) -> impl Iterator<Item = usize> + '_ {
        let (wrapped, onwards) = self.owners.split_at(from.min(self.owners.len()));
        onwards.iter().chain(wrapped).map(|&i| i as usize)
    }
}

impl Picker for RingHashPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        let Some(hash) = ctx.hash else {
            return random_eligible(ctx, self.n);
        };
        let from = self.index.position(&self.hashes, hash);
        let mut walk = self.clockwise(from);
        if let Some(i) = walk
            .by_ref()
            .take(WALK_BEFORE_CHECK)
            .find(|&i| ctx.is_eligible(i))
        {
            return Some(i);
        }
        // A long walk: avoid going round the whole ring when nothing is
        // eligible, otherwise finish the walk.
        scan_from(ctx, 0, self.n)?;
        walk.find(|&i| ctx.is_eligible(i))
    }

    fn apply(self: Arc<Self>, edits: &[Edit]) -> Option<Arc<dyn Picker>> {
        let n = self.n;
        Some(Remapped::start(self, n, edits))
    }
}

impl fmt::Debug for RingHashPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingHashPicker")
            .field("endpoints", &self.n)
            .field("nodes", &self.hashes.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::weighted_candidates;

    fn candidates(weights: &[u32]) -> Vec<Candidate> {
        weighted_candidates("i", weights)
    }

    fn nodes_per_endpoint(weights: &[u32], rh: RingHash) -> Vec<u64> {
        rh.node_counts(&candidates(weights)).collect()
    }

    #[test]
    fn nodes_follow_weights_and_sizes() {
        assert_eq!(nodes_per_endpoint(&[100; 3], RingHash::new()), vec![160; 3]);
        assert_eq!(nodes_per_endpoint(&[1; 3], RingHash::new()), vec![160; 3]);
        assert_eq!(
            nodes_per_endpoint(&[100, 300, 1], RingHash::new()),
            vec![53, 160, 1]
        );
        // Large sets are capped; everyone keeps a node.
        let rh = RingHash::new().with_max_ring_size(100);
        assert_eq!(
            nodes_per_endpoint(&[1, 10_000, 10_000], rh),
            vec![1, 49, 49]
        );
        let ring = place_nodes(&candidates(&[100, 200]), [3, 5].into_iter());
        assert_eq!(ring.len(), 8);
    }

    #[test]
    fn bucket_index_agrees_with_binary_search() {
        let mut rng = fastrand::Rng::with_seed(3);
        for len in [0, 1, 2, 7, 100, 5_000] {
            let mut hashes: Vec<u64> = (0..len).map(|_| rng.u64(..)).collect();
            hashes.sort_unstable();
            let index = BucketIndex::new(&hashes);
            let probes = hashes
                .iter()
                .flat_map(|&h| [h, h.wrapping_add(1), h.wrapping_sub(1)]);
            for hash in probes
                .chain([0, u64::MAX])
                .chain((0..1_000).map(|_| rng.u64(..)))
            {
                let want = hashes.partition_point(|&h| h < hash);
                assert_eq!(
                    index.position(&hashes, hash),
                    want,
                    "len {len}, hash {hash}"
                );
            }
        }
    }

    #[test]
    fn walks_past_ineligible_and_gives_up_when_none() {
        let picker = RingHash::new().build(&candidates(&[100; 4]));
        let none = |_: usize| false;
        let ctx = PickContext::new("/S/M").with_hash(7).with_eligible(&none);
        assert_eq!(picker.pick(&ctx), None);
        let only_3 = |i: usize| i == 3;
        let ctx = PickContext::new("/S/M").with_hash(7).with_eligible(&only_3);
        assert_eq!(picker.pick(&ctx), Some(3));
    }
}
