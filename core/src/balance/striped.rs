//! A sequence number that many threads advance without contending: one
//! counter per stripe, each on its own cache line, a thread always using
//! the same stripe.
//!
//! With a single shared counter, every pick of a round-robin policy moves
//! the counter's cache line between cores, so two threads picking at once
//! are slower together than one alone. With stripes, each thread walks the
//! sequence on its own counter: picks from one thread follow the sequence
//! exactly, and every stripe starts at a different point of the period so
//! that threads do not pick in lockstep.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Stripes per counter: more than the worker threads of a typical runtime.
const STRIPES: usize = 8;

/// One stripe, alone on its cache line (128 bytes: adjacent-line prefetch).
#[derive(Debug)]
#[repr(align(128))]
struct Stripe(AtomicU64);

/// A striped sequence counter (see the [module docs](self)).
#[derive(Debug)]
pub(super) struct StripedCounter {
    stripes: [Stripe; STRIPES],
}

impl StripedCounter {
    /// A counter over a sequence of `period` values: stripe `k` starts at
    /// `start + k·period/STRIPES`.
    pub(super) fn new(start: u64, period: u64) -> Self {
        let offset = |k: u64| start.wrapping_add(k.wrapping_mul(period) / STRIPES as u64);
        Self {
            stripes: std::array::from_fn(|k| Stripe(AtomicU64::new(offset(k as u64)))),
        }
    }

    /// The calling thread's next sequence number.
    #[inline]
    pub(super) fn next(&self) -> u64 {
        self.stripes[stripe()].0.fetch_add(1, Ordering::Relaxed)
    }

    /// The calling thread's next sequence number, without taking it.
    #[cfg(test)]
    pub(super) fn peek(&self) -> u64 {
        self.stripes[stripe()].0.load(Ordering::Relaxed)
    }
}

/// The calling thread's stripe: threads take stripes in turn, on first use.
#[inline]
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE
        .try_with(|s| {
            let mut k = s.get();
            if k == usize::MAX {
                k = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
                s.set(k);
            }
            k
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_follows_the_sequence() {
        let c = StripedCounter::new(5, 100);
        let first = c.next();
        for i in 1..10 {
            assert_eq!(c.next(), first + i);
        }
    }

    #[test]
    fn stripes_start_spread_over_the_period() {
        let c = StripedCounter::new(3, 80);
        let starts: Vec<u64> = c
            .stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .collect();
        assert_eq!(starts, vec![3, 13, 23, 33, 43, 53, 63, 73]);
    }

    #[test]
    fn threads_use_distinct_stripes() {
        let c = StripedCounter::new(0, 1 << 20);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.next();
                    }
                });
            }
        });
        let used: Vec<u64> = c
            .stripes
            .iter()
            .enumerate()
            .map(|(k, s)| s.0.load(Ordering::Relaxed) - (k as u64 * (1 << 20) / 8))
            .collect();
        assert_eq!(used.iter().sum::<u64>(), 2000);
        assert!(used.iter().all(|&u| u == 0 || u % 1000 == 0), "{used:?}");
    }
}
