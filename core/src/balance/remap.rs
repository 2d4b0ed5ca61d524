//! [`Remapped`]: a table-based picker (ring hash, Maglev) kept in use after
//! the endpoint list changed, until the table is built again.
//!
//! Building a consistent-hashing table costs time in proportion to the table
//! (a million ring nodes at 10,000 instances), far more than one instance
//! joining or leaving should. So a change is applied by mapping indices: the
//! table still names endpoints by their index in the list it was built for
//! (the *base* list), and two index maps translate between base and current
//! indices. Keys of an endpoint that left walk on to the next eligible one,
//! as they do for an ejected endpoint; an endpoint that joined has no table
//! entries and takes only calls without a hash key until the table is built
//! again (the client does that in the background once the set is quiet).

use std::sync::Arc;

use super::sample::random_eligible;
use super::{Chunked, Edit, Feedback, PickContext, Picker};

/// In `fwd`: the base endpoint left. In `back`: the endpoint is not in the
/// base list.
const NONE: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub(super) struct Remapped {
    base: Arc<dyn Picker>,
    /// Base index -> current index, or [`NONE`].
    fwd: Chunked<u32>,
    /// Current index -> base index, or [`NONE`].
    back: Chunked<u32>,
}

impl Remapped {
    /// Starts mapping `base` (built for `base_len` endpoints) through `edits`.
    pub(super) fn start(base: Arc<dyn Picker>, base_len: usize, edits: &[Edit]) -> Arc<dyn Picker> {
        let ids = || (0..base_len).map(|i| u32::try_from(i).unwrap_or(NONE));
        let mut r = Self {
            base,
            fwd: ids().collect(),
            back: ids().collect(),
        };
        r.edit(edits);
        Arc::new(r)
    }

    fn edit(&mut self, edits: &[Edit]) {
        for e in edits {
            match e {
                Edit::SwapRemove(i) => {
                    let i = *i;
                    let n = self.back.len();
                    if i >= n {
                        continue;
                    }
                    if let Some(&b) = self.back.get(i).filter(|&&b| b != NONE) {
                        self.fwd.set(b as usize, NONE);
                    }
                    let last = self.back.pop().unwrap_or(NONE);
                    if i < n - 1 {
                        self.back.set(i, last);
                        if last != NONE {
                            self.fwd
                                .set(last as usize, u32::try_from(i).unwrap_or(NONE));
                        }
                    }
                }
                Edit::Push(_) => self.back.push(NONE),
                // The table keeps the old weight until it is built again.
                Edit::Replace(..) => {}
            }
        }
    }

    #[inline]
    fn current(&self, base: usize) -> Option<usize> {
        self.fwd
            .get(base)
            .filter(|&&c| c != NONE)
            .map(|&c| c as usize)
    }
}

impl Picker for Remapped {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        if ctx.hash.is_some() {
            let eligible = |b: usize| self.current(b).is_some_and(|c| ctx.is_eligible(c));
            let inner = PickContext {
                eligible: &eligible,
                ..*ctx
            };
            if let Some(c) = self.base.pick(&inner).and_then(|b| self.current(b)) {
                return Some(c);
            }
        }
        // No key, or no base endpoint is eligible: maybe one that joined is.
        random_eligible(ctx, self.back.len())
    }

    fn feedback(&self, index: usize, feedback: &Feedback) {
        if let Some(&b) = self.back.get(index).filter(|&&b| b != NONE) {
            self.base.feedback(b as usize, feedback);
        }
    }

    fn apply(self: Arc<Self>, edits: &[Edit]) -> Option<Arc<dyn Picker>> {
        let mut next = (*self).clone();
        next.edit(edits);
        Some(Arc::new(next))
    }

    fn is_stale(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{hash_key, weighted_candidates, Balancer, RingHash};

    #[test]
    fn keys_follow_their_instance_through_removals_and_joins() {
        let list = weighted_candidates("i", &[100; 8]);
        let fresh = RingHash::new().build(&list);
        // Remove i2 (i7 moves into index 2), add one.
        let extra = weighted_candidates("x", &[100]).remove(0);
        let edits = [Edit::SwapRemove(2), Edit::Push(extra)];
        let stale = Arc::clone(&fresh)
            .apply(&edits)
            .expect("ring hash follows edits");
        assert!(stale.is_stale());
        let mut now = list.clone();
        now.swap_remove(2);
        for k in 0..500u32 {
            let ctx = PickContext::new("/S/M").with_hash(hash_key(&k.to_le_bytes()));
            let before = fresh.pick(&ctx).map(|i| list[i].instance().id().to_owned());
            let after = stale
                .pick(&ctx)
                .map(|i| now.get(i).map_or("x0", |c| c.instance().id()).to_owned());
            let (Some(before), Some(after)) = (before, after) else {
                panic!("every key finds an instance");
            };
            if before != "i2" {
                assert_eq!(before, after, "a key of an instance that stays stays");
            } else {
                assert!(after != "i2" && after != "x0");
            }
        }
        // Unkeyed calls reach the new instance too.
        let ctx = PickContext::new("/S/M");
        assert!((0..2_000).any(|_| stale.pick(&ctx) == Some(7)));
    }
}
