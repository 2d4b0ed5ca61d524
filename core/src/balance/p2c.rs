//! Power of two choices: draw two distinct eligible endpoints at random and
//! keep the cheaper. Shared by the load-aware policies, which differ only in
//! their cost function.

use super::sample::{random_eligible, random_other};
use super::{Candidate, Load, PickContext};

/// The endpoints of a load-aware picker, with `1 / weight` of each so that
/// weighted costs multiply instead of divide on the pick path.
#[derive(Debug)]
pub(super) struct WeightedLoads {
    endpoints: Box<[Candidate]>,
    inv_weight: Box<[f64]>,
}

impl WeightedLoads {
    pub(super) fn new(endpoints: &[Candidate]) -> Self {
        Self {
            inv_weight: endpoints
                .iter()
                .map(|c| 1.0 / f64::from(c.weight().max(1)))
                .collect(),
            endpoints: endpoints.into(),
        }
    }

    /// [`pick_cheaper`] by `cost(load) / weight`.
    pub(super) fn pick_cheaper(
        &self,
        ctx: &PickContext<'_>,
        cost: impl Fn(&Load) -> f64,
    ) -> Option<usize> {
        pick_cheaper(ctx, self.endpoints.len(), |i| {
            cost(self.endpoints[i].load()) * self.inv_weight[i]
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
