//! Load balancing: which instance of the current snapshot takes a call.
//!
//! ```
//! use std::sync::Arc;
//! use fyerrpc::balance::{Balancer, Candidate, PickContext, RoundRobin};
//! use fyerrpc::Instance;
//!
//! let endpoints: Vec<Candidate> = (1..=3)
//!     .map(|i| Candidate::new(Arc::new(
//!         Instance::new(format!("s{i}"), "Greet", format!("127.0.0.1:800{i}")).unwrap(),
//!     )))
//!     .collect();
//! // A picker is built once per snapshot of the instance set ...
//! let picker = RoundRobin::default().build(&endpoints);
//! // ... and picks without locks or allocation; `eligible` excludes tried or
//! // ejected endpoints.
//! let ctx = PickContext::new("/GreetService/SayHello").with_eligible(&|i| i != 1);
//! let picks: Vec<usize> = (0..4).filter_map(|_| picker.pick(&ctx)).collect();
//! assert_eq!(picks.len(), 4);
//! assert!(!picks.contains(&1));
//! ```
//!
//! A [`Balancer`] is a policy: it turns a list of [`Candidate`]s (a snapshot of
//! the instance set) into a [`Picker`]. The client builds a new picker each
//! time the set changes, off the call path, and swaps it in atomically; calls
//! use whichever picker was current when they started. Per-instance state
//! that must survive set changes (in-flight requests, latency) lives in the
//! candidate's [`Load`], which the client keeps for as long as the instance
//! stays registered.
//!
//! The built-in policies, by the name [`by_name`] takes (flags, config):
//!
//! | name (alias) | policy | pick cost |
//! |---|---|---|
//! | `round_robin` (`rr`) | [`RoundRobin`]: each in turn, weights ignored | O(1) |
//! | `weighted_round_robin` (`wrr`) | [`WeightedRoundRobin`]: smooth, interleaved, by weight | O(1) |
//! | `random` | [`Random`]: uniform | O(1) |
//! | `weighted_random` | [`WeightedRandom`]: by weight | O(log n) |
//! | `least_request` (`p2c`) | [`LeastRequest`]: power of two choices on requests in flight | O(1) |
//! | `peak_ewma` | [`PeakEwma`]: power of two choices on peak-EWMA latency | O(1) |
//! | `ring_hash` (`consistent_hash`) | [`RingHash`]: consistent hashing on the hash key, weighted ring | O(log n) |
//! | `maglev` | [`Maglev`]: consistent hashing on the hash key, lookup table | O(1) |
//!
//! Every picker is lock-free and allocation-free, never returns an
//! ineligible endpoint, and returns `None` only when no endpoint is eligible.

mod chunked;
mod load;
mod remap;

pub(crate) use chunked::Chunked;
pub use load::{Load, EWMA_DECAY};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::instance::Instance;

/// One instance as a balancer sees it: the instance and its shared load.
#[derive(Debug, Clone)]
pub struct Candidate {
    instance: Arc<Instance>,
    load: Arc<Load>,
}

impl Candidate {
    /// A candidate with a fresh [`Load`].
    pub fn new(instance: Arc<Instance>) -> Self {
        Self {
            instance,
            load: Arc::new(Load::new()),
        }
    }
    /// A candidate sharing an existing load record.
    pub fn with_load(instance: Arc<Instance>, load: Arc<Load>) -> Self {
        Self { instance, load }
    }
    /// The instance.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }
    /// The instance's balancing weight.
    pub fn weight(&self) -> u32 {
        self.instance.weight()
    }
    /// The live load of the instance.
    pub fn load(&self) -> &Load {
        &self.load
    }
}

/// What a picker knows about the call it places.
#[derive(Clone, Copy)]
pub struct PickContext<'a> {
    /// The gRPC method path, `/Service/Method`.
    pub method: &'a str,
    /// A hash of the request's hash key (the value of the configured metadata
    /// header), for consistent hashing. See [`hash_key`].
    pub hash: Option<u64>,
    /// Which attempt this is (0 for the first).
    pub attempt: u32,
    /// Whether an endpoint (by index into the snapshot) may be picked: false
    /// for endpoints already tried by this call or ejected by their breaker
    /// or health check.
    pub eligible: &'a (dyn Fn(usize) -> bool + Sync),
}

fn always(_: usize) -> bool {
    true
}

impl<'a> PickContext<'a> {
    /// A context for `method` where every endpoint is eligible.
    pub fn new(method: &'a str) -> Self {
        Self {
            method,
            hash: None,
            attempt: 0,
            eligible: &always,
        }
    }
    /// Sets the hash of the request's key.
    pub fn with_hash(mut self, hash: u64) -> Self {
        self.hash = Some(hash);
        self
    }
    /// Sets the eligibility predicate.
    pub fn with_eligible(mut self, eligible: &'a (dyn Fn(usize) -> bool + Sync)) -> Self {
        self.eligible = eligible;
        self
    }
    /// Sets the attempt number.
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }
    /// Whether endpoint `i` may be picked.
    #[inline]
    pub fn is_eligible(&self, i: usize) -> bool {
        (self.eligible)(i)
    }
}

impl fmt::Debug for PickContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickContext")
            .field("method", &self.method)
            .field("hash", &self.hash)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// How a call placed on an endpoint ended, as reported to the picker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feedback {
    /// Time from sending the request to the end of the response.
    pub latency: Duration,
    /// Whether the call succeeded (by the client's failure classification).
    pub success: bool,
}

/// A load-balancing policy.
///
/// ```
/// use std::sync::Arc;
/// use fyerrpc::balance::{Balancer, Candidate, PickContext, Picker};
///
/// /// Always the first eligible endpoint: a "primary, then backups" policy.
/// #[derive(Debug)]
/// struct FirstAvailable;
///
/// #[derive(Debug)]
/// struct FirstPicker(usize);
///
/// impl Picker for FirstPicker {
///     fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
///         (0..self.0).find(|&i| ctx.is_eligible(i))
///     }
/// }
///
/// impl Balancer for FirstAvailable {
///     fn name(&self) -> &'static str { "first" }
///     fn build(&self, endpoints: &[Candidate]) -> Arc<dyn Picker> {
///         Arc::new(FirstPicker(endpoints.len()))
///     }
/// }
///
/// let picker = FirstAvailable.build(&[]);
/// assert_eq!(picker.pick(&PickContext::new("/S/M")), None);
/// ```
pub trait Balancer: Send + Sync + fmt::Debug + 'static {
    /// The policy's name, as used in flags and metrics (`round_robin` ...).
    fn name(&self) -> &'static str;
    /// Builds the picker for one snapshot of the instance set. Called off the
    /// call path whenever the set changes; may precompute (rings, schedules).
    fn build(&self, endpoints: &[Candidate]) -> Arc<dyn Picker>;
}

/// One change of the endpoint list a picker was built for. A list of edits
/// is applied in order; indices refer to the list as the edits before left it.
#[derive(Debug, Clone)]
pub enum Edit {
    /// The endpoint at this index left the set, and the last endpoint moved
    /// into its place (nothing else moves).
    SwapRemove(usize),
    /// A new endpoint joined, at the end of the list.
    Push(Candidate),
    /// The endpoint at this index stays, with a new registry entry (same id,
    /// another weight or metadata).
    Replace(usize, Candidate),
}

/// The length of a list of `n` endpoints after `edits`.
pub fn len_after(n: usize, edits: &[Edit]) -> usize {
    edits.iter().fold(n, |n, e| match e {
        Edit::SwapRemove(i) if *i < n => n - 1,
        Edit::Push(_) => n + 1,
        _ => n,
    })
}

/// Picks an endpoint for one call from one snapshot. Must not block, lock
/// against other pickers for long, or allocate.
pub trait Picker: Send + Sync + fmt::Debug + 'static {
    /// The index (into the snapshot given to [`Balancer::build`]) of an
    /// eligible endpoint, or `None` when no endpoint is eligible.
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize>;
    /// Called when a call placed on endpoint `index` ends. The endpoint's
    /// [`Load`] is already updated; policies with state of their own use this.
    fn feedback(&self, index: usize, feedback: &Feedback) {
        let _ = (index, feedback);
    }
    /// The picker for the endpoint list after `edits`, in time proportional
    /// to the edits rather than to the list, or `None` when the policy must
    /// be [built](Balancer::build) again from the whole list (the default).
    /// The picker itself stays valid for the list it was built for.
    fn apply(self: Arc<Self>, edits: &[Edit]) -> Option<Arc<dyn Picker>> {
        let _ = edits;
        None
    }
    /// Whether this picker serves from a table built for an earlier list
    /// (see [`RingHash`]): correct, but endpoints that joined since take no
    /// keyed traffic until the client builds the policy again, which it
    /// does off the call path soon after the set stops changing.
    fn is_stale(&self) -> bool {
        false
    }
}

/// Hashes a request key (metadata header value) for [`PickContext::hash`],
/// with a fixed, process-independent hash (64-bit FNV-1a).
pub fn hash_key(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Finalize so that similar keys spread over the ring.
    mix64(h)
}

/// The splitmix64 finalizer: a bijective, well-spread 64-bit mix.
fn mix64(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Test fixture: one candidate per weight, with ids `{prefix}0`, `{prefix}1` ...
#[cfg(test)]
pub(crate) fn weighted_candidates(prefix: &str, weights: &[u32]) -> Vec<Candidate> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let inst = Instance::new(format!("{prefix}{i}"), "S", format!("10.0.0.{i}:80"))
                .and_then(|inst| inst.with_weight(w))
                .expect("valid test instance");
            Candidate::new(Arc::new(inst))
        })
        .collect()
}

mod least_request;
mod maglev;
mod p2c;
mod peak_ewma;
mod policy;
mod random;
mod ring_hash;
mod round_robin;
mod sample;
mod smooth;
mod stride;
mod striped;
mod weighted_random;
mod weighted_round_robin;

pub use least_request::LeastRequest;
pub use maglev::Maglev;
pub use peak_ewma::PeakEwma;
pub use policy::{by_name, UnknownPolicy, POLICY_ALIASES, POLICY_NAMES};
pub use random::Random;
pub use ring_hash::RingHash;
pub use round_robin::RoundRobin;
pub use weighted_random::WeightedRandom;
pub use weighted_round_robin::WeightedRoundRobin;
