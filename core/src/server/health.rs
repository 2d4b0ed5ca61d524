//! [`HealthFlag`]: one switch for "this server takes traffic", mirrored into
//! the `grpc.health.v1` service.

use std::sync::Arc;

use tokio::sync::watch;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// A shared serving/not-serving switch.
///
/// Application code (a fault detector, a dependency check) flips it;
/// [`Lifecycle`](super::Lifecycle) copies every change into the gRPC health
/// service while the server runs. Cloning shares the switch.
///
/// ```
/// use fyerrpc::server::HealthFlag;
///
/// let flag = HealthFlag::default();
/// assert!(flag.is_serving());
/// let mut changes = flag.subscribe();
/// flag.set(false);
/// assert!(changes.has_changed().unwrap());
/// assert!(!*changes.borrow_and_update());
/// ```
#[derive(Debug, Clone)]
pub struct HealthFlag {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for HealthFlag {
    /// A flag that starts serving.
    fn default() -> Self {
        Self::new(true)
    }
}

impl HealthFlag {
    /// A flag with the given initial state.
    pub fn new(serving: bool) -> Self {
        Self {
            tx: Arc::new(watch::channel(serving).0),
        }
    }

    /// Sets the state; subscribers are woken only if it changed.
    pub fn set(&self, serving: bool) {
        self.tx
            .send_if_modified(|s| std::mem::replace(s, serving) != serving);
    }

    /// The current state.
    pub fn is_serving(&self) -> bool {
        *self.tx.borrow()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

/// The gRPC status for a flag value.
fn status(serving: bool) -> ServingStatus {
    if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// Sets every service in `services` to `serving`.
pub(super) async fn report(reporter: &HealthReporter, services: &[String], serving: bool) {
    for name in services {
        reporter.set_service_status(name, status(serving)).await;
    }
}

/// Copies the flag into the reporter now and after every change, until the
/// flag is dropped.
pub(super) async fn mirror(
    mut changes: watch::Receiver<bool>,
    reporter: HealthReporter,
    services: Vec<String>,
) {
    loop {
        let serving = *changes.borrow_and_update();
        tracing::debug!(serving, "health status changed");
        report(&reporter, &services, serving).await;
        if changes.changed().await.is_err() {
            return;
        }
    }
}
