//! Bringing an unreachable endpoint back: a timer-driven probe, so that no
//! caller's call is spent finding out whether the instance is back.
//!
//! ```text
//!              attempt or check cannot connect
//!              (or, after a connection broke under a call, an
//!               immediate check cannot connect)
//!   Reachable ----------------------------------> Unreachable
//!       ^                                           |    ^
//!       |                                 backoff   |    | no answer:
//!       |                                 elapsed   v    | backoff x1.6 (jittered,
//!       |             any gRPC answer          Probing --+  capped)
//!       +-------------------------------------------+
//!         (a call, a health check, or this probe: whichever answers first)
//! ```
//!
//! The probe is one `grpc.health.v1.Health/Check` over the endpoint's own
//! channel (so it goes through the same TLS and connection settings as
//! calls). Any answer, `UNIMPLEMENTED` and `NOT_FOUND` included, proves the
//! instance reachable; only a failure to connect keeps it unreachable. One
//! probe task runs per unreachable endpoint, and it ends when the endpoint
//! is reachable again or has left the client.

use std::sync::Weak;
use std::time::Duration;

use super::endpoint::EndpointCore;
use super::Shared;
use crate::failover::Backoff;
use crate::health;

/// First wait before probing an unreachable instance.
pub const DEFAULT_RECONNECT_BASE: Duration = Duration::from_millis(200);
/// Longest wait between two probes of an unreachable instance.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The probe backoff: ×1.6 per probe, 20 % jitter (gRPC's connection backoff
/// shape, with a shorter start and cap for a client that has other
/// instances to use meanwhile).
pub(crate) fn backoff(base: Duration, max: Duration) -> Backoff {
    Backoff::new(base, 1.6, max.max(base), 0.2)
}

/// Starts the probe task of an endpoint that has just become unreachable.
pub(crate) fn spawn(shared: Weak<Shared>, core: Weak<EndpointCore>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            let (delay, timeout) = {
                let Some(s) = shared.upgrade() else { return };
                (s.reconnect.delay(attempt), s.config.connect_timeout)
            };
            tokio::time::sleep(delay).await;
            let (Some(s), Some(c)) = (shared.upgrade(), core.upgrade()) else {
                return;
            };
            if c.is_reachable() {
                // A call or a health check found it answering meanwhile.
                return;
            }
            let channel = c.service();
            drop(c);
            // Generous: a reconnect includes the TCP (and TLS) handshake.
            let result = health::check(channel, "", timeout.saturating_mul(2)).await;
            let Some(c) = core.upgrade() else { return };
            if result.reached_server() {
                s.mark_reachable(&c);
                return;
            }
            // No connection, or connected but no answer in time: no
            // evidence of reachability yet.
            tracing::debug!(service = %s.service, instance = %c.id, attempt,
                result = result.as_str(), "instance still unreachable");
        }
    });
}
