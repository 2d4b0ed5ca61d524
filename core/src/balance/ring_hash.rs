//! Ring hash: consistent hashing of the request's hash key onto a weighted
//! ring of virtual nodes.

use std::fmt;
use std::sync::Arc;

use super::sample::{random_eligible, scan_from};
use super::{hash_key, Balancer, Candidate, PickContext, Picker};

/// Ring entries walked before checking that any endpoint is eligible at all.
const WALK_BEFORE_CHECK: usize = 256;

/// Consistent hashing on [`PickContext::hash`]: requests with the same hash
/// key go to the same endpoint for as long as it stays in the set and
/// eligible, and when an endpoint joins or leaves, only about `1/n` of the
/// keys move (to or from that endpoint).
///
/// [`build`](Balancer::build) places virtual nodes for every endpoint on a
/// ring of 64-bit hashes: `vnodes` per endpoint on average (default
/// [`DEFAULT_VNODES`](Self::DEFAULT_VNODES)), the ring size clamped to
/// `min_ring_size..=max_ring_size`, and each endpoint's share of the ring
/// proportional to its weight (at least one node). A node's position
/// depends only on the instance id and the node's number, so it is the same
/// in every client and every snapshot. A pick binary-searches the key's
/// position (O(log ring)) and walks clockwise to the first node of an
/// eligible endpoint: when an endpoint is ineligible, its keys spread over
/// the others and come back when it recovers. Requests without a hash key
/// go to a random eligible endpoint.
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
    vnodes: usize,
    min_ring_size: usize,
    max_ring_size: usize,
}

impl Default for RingHash {
    fn default() -> Self {
        Self {
            vnodes: Self::DEFAULT_VNODES,
            min_ring_size: Self::DEFAULT_MIN_RING_SIZE,
            max_ring_size: Self::DEFAULT_MAX_RING_SIZE,
        }
    }
}

impl RingHash {
    /// Default [`with_vnodes`](Self::with_vnodes).
    pub const DEFAULT_VNODES: usize = 160;
    /// Default [`with_min_ring_size`](Self::with_min_ring_size) (as Envoy).
    pub const DEFAULT_MIN_RING_SIZE: usize = 1024;
    /// Default [`with_max_ring_size`](Self::with_max_ring_size): 2^20
    /// virtual nodes, 12 MiB.
    pub const DEFAULT_MAX_RING_SIZE: usize = 1 << 20;

    /// A ring hash with the default sizes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Virtual nodes for an endpoint of average weight. More nodes spread
    /// keys more evenly (the load of an endpoint deviates from its share by
    /// about `1/sqrt(vnodes)`) at the cost of memory (12 bytes per node) and
    /// build time.
    pub fn with_vnodes(mut self, vnodes: usize) -> Self {
        self.vnodes = vnodes.max(1);
        self
    }

    /// The smallest ring, whatever the number of endpoints.
    pub fn with_min_ring_size(mut self, size: usize) -> Self {
        self.min_ring_size = size.max(1);
        self
    }

    /// The largest ring, whatever the number of endpoints (each endpoint
    /// still gets at least one node).
    pub fn with_max_ring_size(mut self, size: usize) -> Self {
        self.max_ring_size = size.max(1);
        self
    }

    /// The number of ring nodes for `n` endpoints.
    fn ring_size(&self, n: usize) -> usize {
        n.saturating_mul(self.vnodes)
            .min(self.max_ring_size)
            .max(self.min_ring_size)
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
        let mut ring = place_nodes(endpoints, self.ring_size(endpoints.len()));
        ring.sort_unstable();
        Arc::new(RingHashPicker {
            n: endpoints.len(),
            hashes: ring.iter().map(|&(h, _)| h).collect(),
            owners: ring.iter().map(|&(_, i)| i).collect(),
        })
    }
}

/// `(position, endpoint)` of every virtual node: a ring of about `size`
/// nodes shared in proportion to the weights, at least one per endpoint.
fn place_nodes(endpoints: &[Candidate], size: usize) -> Vec<(u64, u32)> {
    let total: u128 = endpoints
        .iter()
        .map(|c| u128::from(c.weight().max(1)))
        .sum();
    let mut ring = Vec::with_capacity(size + endpoints.len());
    // Endpoint i's nodes end where its cumulative weight does, so rounding
    // does not add up; integer arithmetic keeps equal weights exactly equal.
    let (mut cumulative, mut placed) = (0u128, 0u64);
    for (i, c) in endpoints.iter().enumerate() {
        cumulative += u128::from(c.weight().max(1));
        let end = u64::try_from(size as u128 * cumulative / total).unwrap_or(u64::MAX);
        let count = end.saturating_sub(placed).max(1);
        let seed = hash_key(c.instance().id().as_bytes());
        ring.extend((0..count).map(|j| (node_hash(seed, j), i as u32)));
        placed += count;
    }
    ring
}

/// The ring position of node `j` of the endpoint whose id hashes to `seed`.
pub(super) fn node_hash(seed: u64, j: u64) -> u64 {
    mix64(seed.wrapping_add(j.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// The splitmix64 finalizer: a bijective, well-spread 64-bit mix.
pub(super) fn mix64(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[derive(Default)]
struct RingHashPicker {
    n: usize,
    /// Node positions, ascending.
    hashes: Box<[u64]>,
    /// The endpoint of each node.
    owners: Box<[u32]>,
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
        let from = self.hashes.partition_point(|&h| h < hash);
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
    use crate::Instance;

    fn candidates(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let inst = Instance::new(format!("i{i}"), "S", format!("10.0.0.{i}:80"))
                    .unwrap()
                    .with_weight(w)
                    .unwrap();
                Candidate::new(Arc::new(inst))
            })
            .collect()
    }

    fn nodes_per_endpoint(weights: &[u32], rh: RingHash) -> Vec<usize> {
        let ring = place_nodes(&candidates(weights), rh.ring_size(weights.len()));
        let mut counts = vec![0; weights.len()];
        for (_, i) in ring {
            counts[i as usize] += 1;
        }
        counts
    }

    #[test]
    fn nodes_follow_weights_and_sizes() {
        assert_eq!(
            nodes_per_endpoint(&[100; 10], RingHash::new()),
            vec![160; 10]
        );
        // Small sets are padded up to the minimum ring size.
        assert_eq!(
            nodes_per_endpoint(&[100, 300], RingHash::new()),
            vec![256, 768]
        );
        // Large sets are capped; everyone keeps a node.
        let rh = RingHash::new()
            .with_max_ring_size(100)
            .with_min_ring_size(1);
        let counts = nodes_per_endpoint(&[1, 10_000, 10_000], rh);
        assert_eq!(counts[0], 1);
        assert!(counts.iter().sum::<usize>() <= 101);
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
