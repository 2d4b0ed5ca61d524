//! The precomputed smooth weighted round-robin schedule: one period of
//! endpoint indices in which each endpoint appears in proportion to its
//! weight, spread evenly.
//!
//! nginx's smooth weighted round robin (SWRR) gives every endpoint a
//! "current weight" that grows by its weight at each step; the endpoint with
//! the largest current weight is picked and pays back the total. Run over
//! many endpoints at once, it can let equally weighted light endpoints bunch
//! up, so the heaviest endpoint gets runs up to twice as long as necessary.
//! This schedule therefore applies SWRR level by level, heaviest weight class
//! first: each level interleaves one class (all endpoints of one weight,
//! taken in turn) with "the rest" by SWRR of two, and the rest's slots go to
//! the next level. The result keeps SWRR's properties (exact shares over a
//! period, every endpoint within about two picks of its share in any window)
//! and gives the heaviest endpoint the shortest possible runs,
//! `ceil(w_max / (total - w_max))`.

use std::collections::BTreeMap;

/// Longest schedule precomputed (entries; 4 bytes each).
pub(super) const MAX_LEN: u64 = 1 << 16;

/// Most steps spent building a schedule (the sum of the level lengths).
pub(super) const MAX_WORK: u64 = 1 << 22;

/// One period of the smooth schedule for `weights` (reduced by their
/// greatest common divisor), or `None` when it would be longer than
/// [`MAX_LEN`] or cost more than [`MAX_WORK`] steps to build.
pub(super) fn schedule(weights: &[u64]) -> Option<Vec<u32>> {
    let g = weights.iter().fold(0, |a, &w| gcd(a, w));
    if g == 0 {
        return Some(Vec::new());
    }
    let classes = weight_classes(weights, g);
    let total: u64 = classes.iter().map(|(w, m)| w * m.len() as u64).sum();
    if total > MAX_LEN || build_work(&classes, total) > MAX_WORK {
        return None;
    }
    let mut out = vec![0u32; usize::try_from(total).ok()?];
    let mut free: Vec<usize> = (0..out.len()).collect();
    let mut rest = Vec::with_capacity(free.len());
    for (weight, members) in &classes {
        let heavy = weight * members.len() as u64;
        rest.clear();
        interleave(&free, heavy, members, &mut out, &mut rest);
        std::mem::swap(&mut free, &mut rest);
    }
    Some(out)
}

/// Endpoint indices grouped by weight (divided by `g`), heaviest first,
/// each group in index order.
fn weight_classes(weights: &[u64], g: u64) -> Vec<(u64, Vec<u32>)> {
    let mut classes: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    for (i, &w) in weights.iter().enumerate() {
        classes.entry(w / g).or_default().push(i as u32);
    }
    classes.into_iter().rev().collect()
}

/// Steps to build: each level walks the slots not taken by heavier levels.
fn build_work(classes: &[(u64, Vec<u32>)], total: u64) -> u64 {
    let mut remaining = total;
    let mut work = 0;
    for (w, members) in classes {
        work += remaining;
        remaining -= w * members.len() as u64;
    }
    work
}

/// Fills the `free` slots of `out`: SWRR of two between the class (total
/// weight `heavy`, its `members` taken in turn) and the rest (weight
/// `free.len() - heavy`), both starting from a centred current weight (minus
/// half their weight) so that the period also wraps around smoothly. Slots
/// left to the rest are appended to `rest`.
fn interleave(free: &[usize], heavy: u64, members: &[u32], out: &mut [u32], rest: &mut Vec<usize>) {
    // Doubled current weights, so that the centring stays integral.
    let total = free.len() as i64;
    let heavy = heavy as i64;
    let light = total - heavy;
    let (mut cur_heavy, mut cur_light) = (-heavy, -light);
    let mut turn = members.iter().cycle();
    for &slot in free {
        cur_heavy += 2 * heavy;
        cur_light += 2 * light;
        if cur_heavy >= cur_light {
            cur_heavy -= 2 * total;
            out[slot] = turn.next().copied().unwrap_or_default();
        } else {
            cur_light -= 2 * total;
            rest.push(slot);
        }
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(s: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in s {
            c[i as usize] += 1;
        }
        c
    }

    /// Longest run of `who` in the schedule repeated (runs may wrap).
    fn max_run(s: &[u32], who: u32) -> usize {
        let mut best = 0;
        let mut run = 0;
        for &i in s.iter().chain(s) {
            run = if i == who { run + 1 } else { 0 };
            best = best.max(run);
        }
        best.min(s.len())
    }

    /// Largest |picks - expected| of any endpoint in any window of the
    /// repeated schedule.
    fn max_window_deviation(s: &[u32], weights: &[u64]) -> f64 {
        let total: u64 = weights.iter().sum();
        let mut worst: f64 = 0.0;
        for (who, &w) in weights.iter().enumerate() {
            let mut prefix = vec![0usize];
            for &i in s.iter().chain(s) {
                prefix.push(prefix.last().unwrap() + usize::from(i as usize == who));
            }
            for len in 1..=s.len() {
                let expected = len as f64 * w as f64 / total as f64;
                for start in 0..s.len() {
                    let got = (prefix[start + len] - prefix[start]) as f64;
                    worst = worst.max((got - expected).abs());
                }
            }
        }
        worst
    }

    #[test]
    fn reduces_by_gcd_and_counts_exactly() {
        let s = schedule(&[500, 100, 100]).unwrap();
        assert_eq!(s.len(), 7);
        assert_eq!(counts(&s, 3), vec![5, 1, 1]);
        assert_eq!(max_run(&s, 0), 3, "{s:?}");
        assert_eq!(schedule(&[100; 4]).unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(schedule(&[]).unwrap(), Vec::<u32>::new());
    }

    #[test]
    fn heaviest_runs_are_shortest_possible_and_windows_fair() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..300 {
            let n = rng.usize(2..9);
            let weights: Vec<u64> = (0..n)
                .map(|_| [1, 2, 3, 5, 7, 10, 50, 100, 200][rng.usize(..9)])
                .collect();
            let s = schedule(&weights).unwrap();
            let g = weights.iter().fold(0, |a, &w| gcd(a, w));
            let reduced: Vec<u64> = weights.iter().map(|w| w / g).collect();
            let c = counts(&s, n);
            for i in 0..n {
                assert_eq!(c[i] as u64, reduced[i], "{weights:?}");
            }
            let total: u64 = reduced.iter().sum();
            let (heaviest, &w_max) = reduced.iter().enumerate().max_by_key(|(_, &w)| w).unwrap();
            if w_max < total {
                let bound = w_max.div_ceil(total - w_max) as usize;
                assert!(max_run(&s, heaviest as u32) <= bound, "{weights:?}: {s:?}");
            }
            if s.len() <= 250 {
                let dev = max_window_deviation(&s, &reduced);
                assert!(dev < 2.5, "{weights:?}: deviation {dev}");
            }
        }
    }

    #[test]
    fn refuses_long_or_costly_schedules() {
        // Coprime weights whose sum exceeds the bound.
        let weights: Vec<u64> = (0..400).map(|i| 1000 + i).collect();
        assert!(schedule(&weights).is_none());
        let weights: Vec<u64> = vec![65_536, 1];
        assert!(schedule(&weights).is_none());
        assert!(schedule(&[65_535, 1]).is_some());
    }
}
