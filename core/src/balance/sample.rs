//! Eligible-endpoint sampling shared by the policies: linear scans and
//! uniform random draws that skip ineligible endpoints without allocating.

use super::PickContext;

/// Turns of a round-robin sequence tried before scanning for an eligible
/// endpoint.
const TURNS: usize = 8;

/// Random draws tried before falling back to a scan from a random start.
/// Draws keep the choice uniform among eligible endpoints; the scan, which
/// favours endpoints that follow ineligible ones, only runs when most
/// endpoints are ineligible (with half of them ineligible, once in 65,536
/// picks), and bounds the cost then.
pub(super) const RANDOM_DRAWS: usize = 16;

/// The first eligible endpoint among `start, start + 1, ...`, wrapping
/// around `n` endpoints (`start` may be `>= n`).
pub(super) fn scan_from(ctx: &PickContext<'_>, start: usize, n: usize) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let start = start % n;
    (start..n).chain(0..start).find(|&i| ctx.is_eligible(i))
}

/// The first eligible endpoint among the next few turns of a shared
/// round-robin sequence (`next` advances it), else the first eligible one
/// after the last turn. An ineligible endpoint's turn is used up, so the
/// eligible endpoints keep their shares of the sequence.
pub(super) fn follow(
    ctx: &PickContext<'_>,
    n: usize,
    mut next: impl FnMut() -> usize,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let mut last = 0;
    for _ in 0..TURNS {
        last = next();
        if ctx.is_eligible(last) {
            return Some(last);
        }
    }
    scan_from(ctx, last + 1, n)
}

/// A uniformly random eligible endpoint among `n`.
pub(super) fn random_eligible(ctx: &PickContext<'_>, n: usize) -> Option<usize> {
    if n == 0 {
        return None;
    }
    for _ in 0..RANDOM_DRAWS {
        let i = fastrand::usize(..n);
        if ctx.is_eligible(i) {
            return Some(i);
        }
    }
    scan_from(ctx, fastrand::usize(..n), n)
}

/// A uniformly random eligible endpoint among `n`, other than `not`.
pub(super) fn random_other(ctx: &PickContext<'_>, n: usize, not: usize) -> Option<usize> {
    if n < 2 {
        return None;
    }
    // Draw among the n - 1 others: skip over `not`.
    let draw = || {
        let i = fastrand::usize(..n - 1);
        if i >= not {
            i + 1
        } else {
            i
        }
    };
    for _ in 0..RANDOM_DRAWS {
        let i = draw();
        if ctx.is_eligible(i) {
            return Some(i);
        }
    }
    let start = draw();
    (start..n)
        .chain(0..start)
        .find(|&i| i != not && ctx.is_eligible(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_wraps_and_skips() {
        let odd = |i: usize| i % 2 == 1;
        let ctx = PickContext::new("/S/M").with_eligible(&odd);
        assert_eq!(scan_from(&ctx, 0, 4), Some(1));
        assert_eq!(scan_from(&ctx, 2, 4), Some(3));
        assert_eq!(scan_from(&ctx, 4, 4), Some(1), "start is taken modulo n");
        assert_eq!(scan_from(&ctx, 0, 1), None);
        assert_eq!(scan_from(&ctx, 0, 0), None);
    }

    #[test]
    fn random_draws_only_eligible() {
        let only_7 = |i: usize| i == 7;
        let ctx = PickContext::new("/S/M").with_eligible(&only_7);
        for _ in 0..200 {
            assert_eq!(random_eligible(&ctx, 10), Some(7));
            assert_eq!(random_other(&ctx, 10, 3), Some(7));
            assert_eq!(random_other(&ctx, 10, 7), None);
        }
        assert_eq!(random_eligible(&ctx, 0), None);
        assert_eq!(random_other(&PickContext::new("/S/M"), 1, 0), None);
    }

    #[test]
    fn random_other_is_uniform_over_the_others() {
        let ctx = PickContext::new("/S/M");
        let mut counts = [0u32; 4];
        for _ in 0..30_000 {
            let i = random_other(&ctx, 4, 2).unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts[2], 0);
        for (i, c) in counts.iter().enumerate().filter(|(i, _)| *i != 2) {
            assert!((9_000..11_000).contains(c), "endpoint {i}: {c}");
        }
    }
}
