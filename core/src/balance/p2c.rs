//! Power of two choices: draw two distinct eligible endpoints at random and
//! keep the cheaper. Shared by the load-aware policies, which differ only in
//! their cost function.

use super::sample::{random_eligible, random_other};
use std::sync::Arc;

use super::{Candidate, Chunked, Edit, Load, PickContext};

/// The endpoints of a load-aware picker: the load of each and `1 / weight`,
/// so that weighted costs multiply instead of divide on the pick path. Kept
/// in a persistent vector so that a change of the set is an edit, not a copy.
#[derive(Debug)]
pub(super) struct WeightedLoads {
    endpoints: Chunked<(Arc<Load>, f64)>,
}

fn entry(c: &Candidate) -> (Arc<Load>, f64) {
    (Arc::clone(&c.load), 1.0 / f64::from(c.weight().max(1)))
}

impl WeightedLoads {
    pub(super) fn new(endpoints: &[Candidate]) -> Self {
        Self {
            endpoints: endpoints.iter().map(entry).collect(),
        }
    }

    /// The loads after `edits`, sharing what they do not touch.
    pub(super) fn edited(&self, edits: &[Edit]) -> Self {
        let mut endpoints = self.endpoints.clone();
        for e in edits {
            match e {
                Edit::SwapRemove(i) => {
                    endpoints.swap_remove(*i);
                }
                Edit::Push(c) => endpoints.push(entry(c)),
                Edit::Replace(i, c) => endpoints.set(*i, entry(c)),
            }
        }
        Self { endpoints }
    }

    /// [`pick_cheaper`] by `cost(load) / weight`.
    pub(super) fn pick_cheaper(
        &self,
        ctx: &PickContext<'_>,
        cost: impl Fn(&Load) -> f64,
    ) -> Option<usize> {
        pick_cheaper(ctx, self.endpoints.len(), |i| {
            let (load, inv_weight) = &self.endpoints[i];
            cost(load) * inv_weight
        })
    }
}

/// Picks among `n` endpoints the cheaper of two distinct random eligible ones
/// (ties keep the first draw, itself random). With one eligible endpoint,
/// that one.
pub(super) fn pick_cheaper(
    ctx: &PickContext<'_>,
    n: usize,
    cost: impl Fn(usize) -> f64,
) -> Option<usize> {
    let a = random_eligible(ctx, n)?;
    let Some(b) = random_other(ctx, n, a) else {
        return Some(a);
    };
    if cost(b) < cost(a) {
        Some(b)
    } else {
        Some(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheaper_of_two_wins() {
        let ctx = PickContext::new("/S/M");
        // Endpoint i costs i: endpoint 0 wins whenever drawn, and the most
        // expensive endpoint never wins against anyone.
        let mut counts = [0u32; 3];
        for _ in 0..3_000 {
            counts[pick_cheaper(&ctx, 3, |i| i as f64).unwrap()] += 1;
        }
        assert_eq!(counts[2], 0);
        // 0 is in 2 of the 3 possible pairs.
        assert!((1_800..2_200).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn one_or_none_eligible() {
        let only_1 = |i: usize| i == 1;
        let ctx = PickContext::new("/S/M").with_eligible(&only_1);
        assert_eq!(pick_cheaper(&ctx, 3, |_| 0.0), Some(1));
        let none = |_: usize| false;
        let ctx = PickContext::new("/S/M").with_eligible(&none);
        assert_eq!(pick_cheaper(&ctx, 3, |_| 0.0), None);
        assert_eq!(pick_cheaper(&PickContext::new("/S/M"), 0, |_| 0.0), None);
    }
}
