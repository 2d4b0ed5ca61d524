//! [`register_in_background`]: a registration that does not need the
//! registry to be up when the process starts.
//!
//! ```text
//!   start --> Trying --register fails (unavailable)--> wait (backoff 1 s .. 30 s) --+
//!               ^                                                                   |
//!               +-------------------------------------------------------------------+
//!               |
//!               +--register succeeds--> Registered (the backend's keeper runs)
//!               +--argument refused---> Failed (the task ends with the error)
//!   stop while Trying:     the attempt in progress ends first; a success is undone
//!   stop while Registered: the backend's registration is shut down (or abandoned)
//! ```

use std::sync::Arc;
use std::time::Duration;

use super::{RegisterOptions, Registration, Registry, RegistryError, RetryBackoff, StopMode};
use crate::instance::Instance;

/// First delay between attempts.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest delay between attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Registers `instance` in a background task that retries with backoff
/// (1 s doubling to 30 s, jittered) while the registry cannot be reached,
/// logging each failure, and then keeps the registration as
/// [`Registry::register`] would.
///
/// Returns at once. Options are checked first: a TTL outside the accepted
/// range is refused here, not retried. A registry that refuses the instance
/// itself ([`RegistryError::InvalidArgument`]) ends the task with that error,
/// which [`Registration::shutdown`] reports; other errors (unavailable,
/// refused credentials that an operator may fix) are retried.
///
/// ```
/// use std::sync::Arc;
/// use fyerrpc::registry::{register_in_background, MemoryRegistry, RegisterOptions, Registry};
/// use fyerrpc::Instance;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
/// let me = Instance::new("server-A", "GreetService", "127.0.0.1:8001")?;
/// let registration = register_in_background(registry.clone(), me, RegisterOptions::default())?;
/// while registry.discover("GreetService", None).await?.is_empty() {
///     tokio::task::yield_now().await;
/// }
/// registration.shutdown().await?;
/// # Ok(())
/// # }
/// ```
pub fn register_in_background(
    registry: Arc<dyn Registry>,
    instance: Instance,
    options: RegisterOptions,
) -> Result<Registration, RegistryError> {
    options.checked_ttl()?;
    let inst = instance.clone();
    Ok(Registration::spawn(instance, move |mut stop| async move {
        let mut backoff = RetryBackoff::new(FIRST_RETRY, MAX_RETRY);
        let mut failures = 0u32;
        let registration = loop {
            // An attempt is not cut short by a stop: a registration that
            // succeeded at the registry must be undone below, not leaked.
            let attempt = registry.register(inst.clone(), options.clone()).await;
            match attempt {
                Ok(registration) => {
                    if failures > 0 {
                        tracing::info!(instance = %inst, failures, "registered in the background");
                    } else {
                        tracing::info!(instance = %inst, "registered");
                    }
                    break registration;
                }
                Err(RegistryError::InvalidArgument(reason)) => {
                    tracing::error!(instance = %inst, %reason, "the registry refused the instance; not retrying");
                    return Err(RegistryError::InvalidArgument(reason));
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay = backoff.next_delay();
                    tracing::warn!(instance = %inst, %error, failures, retry_in = ?delay,
                        "cannot register yet; retrying in the background");
                    tokio::select! {
                        biased;
                        _ = stop.stopped() => return Ok(()),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        match stop.stopped().await {
            StopMode::Deregister => registration.shutdown().await,
            StopMode::Abandon => registration.abandon().await,
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::registry::{MemoryRegistry, WatchStream};

    /// A memory registry that is down for its first `down` register calls.
    struct Flaky {
        inner: MemoryRegistry,
        down: u32,
        calls: AtomicU32,
    }

    #[async_trait]
    impl Registry for Flaky {
        async fn register(
            &self,
            instance: Instance,
            options: RegisterOptions,
        ) -> Result<Registration, RegistryError> {
            if self.calls.fetch_add(1, Ordering::SeqCst) < self.down {
                return Err(RegistryError::Unavailable("down".into()));
            }
            self.inner.register(instance, options).await
        }
        async fn deregister(&self, instance: &Instance) -> Result<(), RegistryError> {
            self.inner.deregister(instance).await
        }
        async fn discover(
            &self,
            service: &str,
            version: Option<&str>,
        ) -> Result<Vec<Instance>, RegistryError> {
            self.inner.discover(service, version).await
        }
        async fn watch(
            &self,
            service: &str,
            version: Option<&str>,
        ) -> Result<WatchStream, RegistryError> {
            self.inner.watch(service, version).await
        }
    }

    fn flaky(down: u32) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: MemoryRegistry::new(),
            down,
            calls: AtomicU32::new(0),
        })
    }

    fn inst() -> Instance {
        Instance::new("a", "S", "127.0.0.1:1").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_the_registry_is_up() {
        let registry = flaky(3);
        let r =
            register_in_background(registry.clone(), inst(), RegisterOptions::default()).unwrap();
        while registry.discover("S", None).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(registry.calls.load(Ordering::SeqCst), 4);
        assert!(r.is_active());
        r.shutdown().await.unwrap();
        assert!(registry.discover("S", None).await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_while_trying_ends_quietly() {
        let registry = flaky(u32::MAX);
        let r =
            register_in_background(registry.clone(), inst(), RegisterOptions::default()).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        let calls = registry.calls.load(Ordering::SeqCst);
        assert!(
            (2..=10).contains(&calls),
            "backed off: {calls} attempts in 60 s"
        );
        r.shutdown().await.unwrap();
        assert!(registry.discover("S", None).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn absurd_options_are_refused_at_once() {
        let err = register_in_background(
            flaky(0),
            inst(),
            RegisterOptions::default().with_ttl(Duration::MAX),
        )
        .unwrap_err();
        assert!(matches!(err, RegistryError::InvalidArgument(_)));
    }
}
