//! The retry budget: retries as a fraction of recent requests, kept in a
//! lock-free token bucket.
//!
//! Every request deposits `ratio` of a retry; every retry withdraws a whole
//! one. Tokens are counted in thousandths of a retry, so a ratio is applied
//! exactly to three decimals (0.3 allows 3 retries per 10 requests, 0.75
//! allows 3 per 4). The window is a ring of ten slots of `ttl / 10`, each one
//! atomic word holding the slot's epoch tag and its balance, so a deposit or
//! a withdrawal is one compare-and-swap on the current slot and no call ever
//! waits for a lock. A slot is reused (its old balance forgotten) when its
//! epoch comes round again, so what was deposited or withdrawn counts for
//! between 0.9 × `ttl` and `ttl`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Tokens per retry: ratios are exact to a thousandth.
const UNIT: i64 = 1_000;
/// Slots in the window.
const SLOTS: u64 = 10;
/// Bits of a slot word holding the balance (two's complement).
const VALUE_BITS: u32 = 40;
/// Bits of a slot word holding the epoch tag.
const TAG_BITS: u32 = 64 - VALUE_BITS;
const VALUE_MASK: u64 = (1 << VALUE_BITS) - 1;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
/// Largest balance a slot holds; sums beyond it saturate.
const VALUE_MAX: i64 = (1 << (VALUE_BITS - 1)) - 1;

fn pack(tag: u64, value: i64) -> u64 {
    ((tag & TAG_MASK) << VALUE_BITS) | (value.clamp(-VALUE_MAX, VALUE_MAX) as u64 & VALUE_MASK)
}

fn unpack(word: u64) -> (u64, i64) {
    // Sign-extend the low VALUE_BITS bits.
    let value = ((word << TAG_BITS) as i64) >> TAG_BITS;
    (word >> VALUE_BITS, value)
}

/// How many epochs `tag` is behind `current` (negative: ahead, which only a
/// caller that read the clock a little late sees).
fn age(current: u64, tag: u64) -> i64 {
    let diff = current.wrapping_sub(tag) & TAG_MASK;
    if diff >= 1 << (TAG_BITS - 1) {
        diff as i64 - (1 << TAG_BITS)
    } else {
        diff as i64
    }
}

/// Limits retries to `ratio` × requests over a sliding `ttl`, plus
/// `min_per_sec` retries per second always allowed (a token bucket, as in
/// Finagle and linkerd). Every request deposits; every retry withdraws.
/// Lock-free: each operation is a clock read and a compare-and-swap.
///
/// The ratio is applied exactly (to a thousandth): 0.2 allows 2 retries per
/// 10 requests, 0.3 allows 3, 0.75 allows 3 per 4, 1.0 one per request, and
/// 0 none beyond the `min_per_sec` floor.
///
/// ```
/// use std::time::Duration;
/// use fyerrpc::failover::RetryBudget;
///
/// let budget = RetryBudget::new(0.2, 0, Duration::from_secs(10));
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// assert!(budget.withdraw());
/// assert!(budget.withdraw());
/// assert!(!budget.withdraw()); // 20% of 10 requests
/// ```
pub struct RetryBudget {
    ratio: f32,
    /// Tokens one request deposits.
    deposit: i64,
    /// Tokens always available over a window (the `min_per_sec` floor).
    reserve: i64,
    /// Length of one slot, in nanoseconds (at least 1).
    slot_nanos: u128,
    start: Instant,
    slots: [AtomicU64; SLOTS as usize],
}

impl RetryBudget {
    /// A budget of `ratio` retries per request (clamped to `0..=1000`; not a
    /// number counts as 0) plus `min_per_sec`, over `ttl` (clamped to
    /// `1s..=60s`).
    pub fn new(ratio: f32, min_per_sec: u32, ttl: Duration) -> Self {
        let ratio = if ratio.is_finite() {
            ratio.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        // ratio <= 1000, so the product fits easily.
        let deposit = (f64::from(ratio) * UNIT as f64).round() as i64;
        // min_per_sec retries per second over the window, in tokens:
        // min_per_sec × ttl in milliseconds (UNIT is 1000).
        let reserve = i64::from(min_per_sec)
            .saturating_mul(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
            .min(VALUE_MAX);
        Self {
            ratio,
            deposit,
            reserve,
            slot_nanos: (ttl.as_nanos() / u128::from(SLOTS)).max(1),
            start: Instant::now(),
            slots: std::array::from_fn(|_| AtomicU64::new(pack(0, 0))),
        }
    }

    /// The ratio in use (after clamping).
    pub fn ratio(&self) -> f32 {
        self.ratio
    }

    /// The current epoch: slots of time since the budget was made.
    fn epoch(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.start);
        u64::try_from(elapsed.as_nanos() / self.slot_nanos).unwrap_or(u64::MAX)
    }

    /// Adds `delta` tokens to the slot of `epoch`.
    fn add(&self, epoch: u64, delta: i64) {
        let slot = &self.slots[(epoch % SLOTS) as usize];
        let tag = epoch & TAG_MASK;
        let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            let (t, v) = unpack(word);
            let a = age(tag, t);
            let (t, v) = if a > 0 {
                // The slot holds an old epoch: forget it.
                (tag, 0)
            } else {
                // This epoch (or, read late, a newer one: count it there).
                (t, v)
            };
            Some(pack(t, v.saturating_add(delta)))
        });
    }

    /// Tokens in the window of `epoch`, plus the reserve.
    fn balance(&self, epoch: u64) -> i64 {
        let tag = epoch & TAG_MASK;
        let window = self
            .slots
            .iter()
            .map(|s| unpack(s.load(Ordering::Acquire)))
            .filter(|&(t, _)| age(tag, t) < SLOTS as i64)
            .fold(0i64, |sum, (_, v)| sum.saturating_add(v));
        window.saturating_add(self.reserve)
    }

    /// Records a request.
    pub fn deposit(&self) {
        if self.deposit > 0 {
            self.add(self.epoch(), self.deposit);
        }
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        let epoch = self.epoch();
        // Take first, then check: concurrent withdrawals can never
        // overdraw the budget together (at worst one is refused that a
        // moment later would have been granted).
        self.add(epoch, -UNIT);
        if self.balance(epoch) >= 0 {
            true
        } else {
            self.add(epoch, UNIT);
            false
        }
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("ratio", &self.ratio)
            .field("reserve", &(self.reserve / UNIT))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retries granted after `requests` requests, withdrawing until refused.
    fn granted(budget: &RetryBudget, requests: u32) -> u32 {
        for _ in 0..requests {
            budget.deposit();
        }
        let mut n = 0;
        while budget.withdraw() {
            n += 1;
            assert!(n < 1_000_000, "the budget never ran out");
        }
        n
    }

    const TTL: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn ratios_are_exact() {
        for (ratio, requests, expected) in [
            (0.2, 10, 2),
            (0.2, 100, 20),
            (0.3, 10, 3),
            (0.3, 100, 30),
            (0.75, 4, 3),
            (0.75, 100, 75),
            (1.0, 10, 10),
            (1.0, 1, 1),
            (0.0, 100, 0),
            (2.5, 4, 10),
        ] {
            let budget = RetryBudget::new(ratio, 0, TTL);
            assert_eq!(
                granted(&budget, requests),
                expected,
                "ratio {ratio} after {requests} requests"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn fractions_accumulate_across_requests() {
        let budget = RetryBudget::new(0.3, 0, TTL);
        for _ in 0..3 {
            budget.deposit();
        }
        assert!(!budget.withdraw(), "0.9 of a retry is not one");
        budget.deposit();
        assert!(budget.withdraw(), "1.2 is");
        assert!(!budget.withdraw(), "0.2 left");
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_allows_min_per_sec_over_the_window() {
        // 2 per second over 10 s: 20 retries with no requests at all.
        let budget = RetryBudget::new(0.0, 2, TTL);
        assert_eq!(granted(&budget, 0), 20);
        // With a ratio, the floor comes on top.
        let budget = RetryBudget::new(0.5, 1, TTL);
        assert_eq!(granted(&budget, 10), 15);
        // Withdrawals expire with the window: the floor is back.
        let budget = RetryBudget::new(0.0, 1, TTL);
        assert_eq!(granted(&budget, 0), 10);
        tokio::time::advance(TTL).await;
        assert_eq!(granted(&budget, 0), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_ttl() {
        let budget = RetryBudget::new(0.2, 0, TTL);
        for _ in 0..10 {
            budget.deposit();
        }
        // Still in the window at 0.85 of the ttl.
        tokio::time::advance(TTL.mul_f64(0.85)).await;
        assert!(budget.withdraw());
        // Gone once a whole ttl has passed since they were made.
        tokio::time::advance(TTL.mul_f64(0.15)).await;
        assert!(!budget.withdraw());
        // New requests count again, less the retry taken at 0.85 of the
        // ttl (still in the window).
        assert_eq!(granted(&budget, 10), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_sliding_window_forgets_slot_by_slot() {
        let budget = RetryBudget::new(1.0, 0, TTL);
        // 5 requests at t = 0, 5 at t = 5 s.
        for _ in 0..5 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..5 {
            budget.deposit();
        }
        // At t = 10 s the first five have left the window.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(granted(&budget, 0), 5);
        // A long idle time (many laps of the ring) forgets everything,
        // withdrawals included.
        tokio::time::advance(Duration::from_secs(3_600)).await;
        assert_eq!(granted(&budget, 2), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn bad_settings_are_clamped() {
        assert_eq!(RetryBudget::new(f32::NAN, 0, TTL).ratio(), 0.0);
        assert_eq!(RetryBudget::new(-1.0, 0, TTL).ratio(), 0.0);
        assert_eq!(RetryBudget::new(5000.0, 0, TTL).ratio(), 1000.0);
        // A ttl below a second counts as one second: 3 per second, 3 in all.
        let budget = RetryBudget::new(0.0, 3, Duration::from_millis(10));
        assert_eq!(granted(&budget, 0), 3);
    }

    #[test]
    fn slot_words_round_trip() {
        for (tag, value) in [(0, 0), (1, -1), (TAG_MASK, VALUE_MAX), (7, -VALUE_MAX)] {
            assert_eq!(unpack(pack(tag, value)), (tag, value));
        }
        assert_eq!(unpack(pack(3, i64::MAX)).1, VALUE_MAX, "saturates");
        assert_eq!(age(0, TAG_MASK), 1, "wraps");
        assert_eq!(age(TAG_MASK, 0), -1);
    }

    #[test]
    fn concurrent_withdrawals_never_overdraw() {
        let budget = std::sync::Arc::new(RetryBudget::new(1.0, 0, Duration::from_secs(60)));
        for _ in 0..1_000 {
            budget.deposit();
        }
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = std::sync::Arc::clone(&budget);
                std::thread::spawn(move || (0..600).filter(|_| b.withdraw()).count())
            })
            .collect();
        let total: usize = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
        assert!(total <= 1_000, "granted {total} of 1000");
        // A refusal under contention gives its token back: what is left is
        // still there to take.
        let rest = granted(&budget, 0) as usize;
        assert_eq!(total + rest, 1_000);
    }
}
