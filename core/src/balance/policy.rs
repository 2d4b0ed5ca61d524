//! Policies by name, for flags and configuration files.

use std::sync::Arc;

use super::{
    Balancer, LeastRequest, Maglev, PeakEwma, Random, RingHash, RoundRobin, WeightedRandom,
    WeightedRoundRobin,
};

/// The canonical name of every built-in policy, as returned by
/// [`Balancer::name`] and accepted by [`by_name`].
pub const POLICY_NAMES: &[&str] = &[
    "round_robin",
    "weighted_round_robin",
    "random",
    "weighted_random",
    "least_request",
    "peak_ewma",
    "ring_hash",
    "maglev",
];

/// Short names accepted by [`by_name`], with the policy each stands for.
pub const POLICY_ALIASES: &[(&str, &str)] = &[
    ("rr", "round_robin"),
    ("wrr", "weighted_round_robin"),
    ("p2c", "least_request"),
    ("consistent_hash", "ring_hash"),
];

/// [`by_name`] was given a name that is no policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown load-balancing policy {name:?}: expected one of {} (or the aliases {})",
    POLICY_NAMES.join(", "),
    alias_list()
)]
pub struct UnknownPolicy {
    /// The name as given.
    pub name: String,
}

fn alias_list() -> String {
    POLICY_ALIASES
        .iter()
        .map(|(alias, name)| format!("{alias} = {name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The built-in policy called `name` (a canonical name from
/// [`POLICY_NAMES`] or an alias from [`POLICY_ALIASES`]), with its default
/// settings. Case, surrounding blanks and `-` for `_` do not matter.
///
/// ```
/// use fyerrpc::balance::{by_name, POLICY_NAMES};
///
/// assert_eq!(by_name("p2c").unwrap().name(), "least_request");
/// assert_eq!(by_name("Ring-Hash").unwrap().name(), "ring_hash");
/// for name in POLICY_NAMES {
///     assert_eq!(by_name(name).unwrap().name(), *name);
/// }
/// let err = by_name("fastest").unwrap_err();
/// assert!(err.to_string().contains("round_robin"));
/// ```
pub fn by_name(name: &str) -> Result<Arc<dyn Balancer>, UnknownPolicy> {
    let key = name.trim().to_ascii_lowercase().replace('-', "_");
    let canonical = POLICY_ALIASES
        .iter()
        .find(|(alias, _)| *alias == key)
        .map_or(key.as_str(), |(_, canonical)| canonical);
    let policy: Arc<dyn Balancer> = match canonical {
        "round_robin" => Arc::new(RoundRobin),
        "weighted_round_robin" => Arc::new(WeightedRoundRobin),
        "random" => Arc::new(Random),
        "weighted_random" => Arc::new(WeightedRandom),
        "least_request" => Arc::new(LeastRequest),
        "peak_ewma" => Arc::new(PeakEwma),
        "ring_hash" => Arc::new(RingHash::default()),
        "maglev" => Arc::new(Maglev::default()),
        _ => {
            return Err(UnknownPolicy {
                name: name.to_owned(),
            })
        }
    };
    Ok(policy)
}
