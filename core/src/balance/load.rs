//! [`Load`]: the live load of one endpoint, shared by the client and pickers.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Decay time of the peak-EWMA latency estimate (as in Finagle and linkerd).
pub const EWMA_DECAY: Duration = Duration::from_secs(10);

/// The cost assumed for an endpoint with no latency sample yet: 1 ms,
/// neutral between a fast local instance and a slow remote one.
const DEFAULT_RTT_NANOS: f64 = 1_000_000.0;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process epoch, the clock of [`Load`].
pub(super) fn now_nanos() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Live load of one endpoint: requests in flight and a peak-EWMA latency
/// estimate. Updated with atomics only; never locks.
#[derive(Debug)]
pub struct Load {
    in_flight: AtomicU32,
    /// f64 bits: the EWMA of latency in nanoseconds.
    ewma: AtomicU64,
    /// When `ewma` was last updated, nanoseconds since the process epoch.
    stamp: AtomicU64,
}

impl Default for Load {
    fn default() -> Self {
        Self::new()
    }
}

impl Load {
    /// A load with nothing in flight and no latency sample.
    pub fn new() -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            ewma: AtomicU64::new(0f64.to_bits()),
            stamp: AtomicU64::new(0),
        }
    }

    /// A call starts on the endpoint.
    #[inline]
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A call on the endpoint ends after `latency`.
    pub fn end(&self, latency: Duration) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        self.observe(latency);
    }

    /// A call on the endpoint ends without a latency sample (cancelled by
    /// the caller before it completed).
    pub fn cancel(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Requests in flight now.
    #[inline]
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records a latency sample into the peak-EWMA: a sample above the
    /// current estimate replaces it at once (peak), a lower one decays into it
    /// with time constant [`EWMA_DECAY`].
    pub fn observe(&self, latency: Duration) {
        let rtt = latency.as_nanos() as f64;
        let now = now_nanos();
        let prev_stamp = self.stamp.swap(now, Ordering::Relaxed);
        let _ = self
            .ewma
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let cur = f64::from_bits(bits);
                let next = if cur == 0.0 || rtt > cur {
                    rtt
                } else {
                    let dt = now.saturating_sub(prev_stamp) as f64;
                    let w = (-dt / EWMA_DECAY.as_nanos() as f64).exp();
                    cur * w + rtt * (1.0 - w)
                };
                Some(next.to_bits())
            });
    }

    /// The latency estimate in nanoseconds (a neutral 1 ms before any sample).
    pub fn ewma_nanos(&self) -> f64 {
        let v = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        if v == 0.0 {
            DEFAULT_RTT_NANOS
        } else {
            v
        }
    }

    /// The latency estimate in nanoseconds decayed towards zero for the time
    /// since the last sample (a neutral 1 ms before any sample). Reading
    /// does not change the estimate.
    ///
    /// Without this decay an endpoint that once turned slow would never be
    /// picked again by a latency-aware policy, so its estimate would never
    /// improve; with it, an idle endpoint is probed again after a while.
    pub fn decayed_ewma_nanos(&self) -> f64 {
        self.decayed_ewma_at(now_nanos())
    }

    fn decayed_ewma_at(&self, now: u64) -> f64 {
        let v = f64::from_bits(self.ewma.load(Ordering::Relaxed));
        if v == 0.0 {
            return DEFAULT_RTT_NANOS;
        }
        let idle = now.saturating_sub(self.stamp.load(Ordering::Relaxed)) as f64;
        v * (-idle / EWMA_DECAY.as_nanos() as f64).exp()
    }

    /// The peak-EWMA cost: the decayed latency estimate
    /// ([`decayed_ewma_nanos`](Self::decayed_ewma_nanos)) × (in-flight + 1).
    pub fn peak_ewma_cost(&self) -> f64 {
        self.peak_ewma_cost_at(now_nanos())
    }

    /// [`peak_ewma_cost`](Self::peak_ewma_cost) at `now` (from
    /// [`now_nanos`]), so that a picker comparing endpoints reads the clock
    /// once.
    pub(super) fn peak_ewma_cost_at(&self, now: u64) -> f64 {
        self.decayed_ewma_at(now) * f64::from(self.in_flight() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracks_in_flight_and_peaks() {
        let l = Load::new();
        l.start();
        l.start();
        assert_eq!(l.in_flight(), 2);
        l.end(Duration::from_millis(5));
        assert_eq!(l.in_flight(), 1);
        assert!((l.ewma_nanos() - 5e6).abs() < 1.0);
        l.end(Duration::from_millis(50));
        assert_eq!(l.in_flight(), 0);
        assert!(
            (l.ewma_nanos() - 5e7).abs() < 1.0,
            "a peak replaces the estimate"
        );
        l.end(Duration::from_millis(1));
        assert_eq!(l.in_flight(), 0, "never below zero");
        assert!(l.ewma_nanos() > 1e6, "a low sample decays in slowly");
    }

    #[test]
    fn cost_counts_in_flight_and_decays_when_idle() {
        let l = Load::new();
        assert_eq!(l.peak_ewma_cost(), DEFAULT_RTT_NANOS);
        l.observe(Duration::from_millis(10));
        let idle = l.peak_ewma_cost();
        assert!(idle <= 1e7 && idle > 0.99e7, "{idle}");
        l.start();
        let busy = l.peak_ewma_cost();
        assert!(busy > 1.9 * idle, "{busy} vs {idle}");
        // One decay period after the sample, the estimate read back has
        // decayed by 1/e; the stored estimate has not.
        let decay = u64::try_from(EWMA_DECAY.as_nanos()).unwrap();
        let decayed = l.decayed_ewma_at(l.stamp.load(Ordering::Relaxed) + decay);
        assert!(decayed < 1e7 * 0.37 && decayed > 1e7 * 0.36, "{decayed}");
        assert!((l.ewma_nanos() - 1e7).abs() < 1.0);
    }
}
