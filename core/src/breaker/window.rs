//! A sliding window of call counts, as a ring of time buckets.

use std::time::Duration;

use tokio::time::Instant;

/// Requests and failures seen in one bucket of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    /// Which bucket of time since `start` the counts belong to.
    index: u64,
    requests: u32,
    failures: u32,
}

/// Counts of requests and failures over the last `window`, kept in `buckets`
/// buckets of `window / buckets` each: the window slides one bucket at a
/// time, and a bucket's counts are forgotten when the window has moved past
/// it.
#[derive(Debug, Clone)]
pub(crate) struct RollingCounts {
    start: Instant,
    width_nanos: u64,
    ring: Vec<Bucket>,
}

impl RollingCounts {
    /// An empty window (at least one bucket, each at least 1 ns wide).
    pub(crate) fn new(window: Duration, buckets: u32) -> Self {
        let buckets = buckets.max(1);
        let width = u64::try_from((window / buckets).as_nanos()).unwrap_or(u64::MAX);
        Self {
            start: Instant::now(),
            width_nanos: width.max(1),
            ring: vec![Bucket::default(); buckets as usize],
        }
    }

    fn index_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        u64::try_from(elapsed / u128::from(self.width_nanos)).unwrap_or(u64::MAX)
    }

    /// Counts one call at `now`.
    pub(crate) fn record(&mut self, now: Instant, failure: bool) {
        let index = self.index_at(now);
        let len = self.ring.len() as u64;
        let bucket = &mut self.ring[(index % len) as usize];
        if bucket.index != index {
            *bucket = Bucket {
                index,
                ..Bucket::default()
            };
        }
        bucket.requests = bucket.requests.saturating_add(1);
        if failure {
            bucket.failures = bucket.failures.saturating_add(1);
        }
    }

    /// `(requests, failures)` within the window ending at `now`.
    pub(crate) fn totals(&self, now: Instant) -> (u64, u64) {
        let index = self.index_at(now);
        let len = self.ring.len() as u64;
        self.ring
            .iter()
            .filter(|b| b.index <= index && index - b.index < len)
            .fold((0, 0), |(r, f), b| {
                (r + u64::from(b.requests), f + u64::from(b.failures))
            })
    }

    /// Forgets every count.
    pub(crate) fn clear(&mut self) {
        self.ring.fill(Bucket::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slides_bucket_by_bucket() {
        let mut w = RollingCounts::new(Duration::from_secs(10), 10);
        let t0 = Instant::now();
        w.record(t0, true);
        w.record(t0 + Duration::from_millis(500), false);
        w.record(t0 + Duration::from_secs(5), true);
        assert_eq!(w.totals(t0 + Duration::from_secs(5)), (3, 2));
        // The first bucket [0 s, 1 s) leaves the window at 10 s.
        assert_eq!(w.totals(t0 + Duration::from_millis(9_999)), (3, 2));
        assert_eq!(w.totals(t0 + Duration::from_secs(10)), (1, 1));
        assert_eq!(w.totals(t0 + Duration::from_secs(15)), (0, 0));
        // A bucket reused for a later index starts from zero.
        w.record(t0 + Duration::from_secs(20), false);
        assert_eq!(w.totals(t0 + Duration::from_secs(20)), (1, 0));
        w.clear();
        assert_eq!(w.totals(t0 + Duration::from_secs(20)), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn degenerate_sizes_do_not_panic() {
        let mut w = RollingCounts::new(Duration::ZERO, 0);
        let now = Instant::now();
        w.record(now, true);
        assert_eq!(w.totals(now), (1, 1));
    }
}
