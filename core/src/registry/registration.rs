//! [`Registration`]: the handle that keeps one instance registered.

use std::future::Future;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::RegistryError;
use crate::instance::Instance;

/// How a registration's keeper task is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Remove the entry from the registry (and revoke its lease), then end.
    Deregister,
    /// Stop keeping the entry alive and leave it to expire by its TTL, as
    /// after a crash. Used by tests and by processes that hand over.
    Abandon,
}

/// The receiving side of a stop request, handed to a keeper task.
///
/// A keeper `select!`s on [`StopSignal::stopped`] beside its keep-alive loop.
#[derive(Debug)]
pub struct StopSignal {
    rx: oneshot::Receiver<StopMode>,
}

impl StopSignal {
    /// Resolves when the handle asks the keeper to stop. A dropped handle
    /// counts as [`StopMode::Deregister`].
    pub async fn stopped(&mut self) -> StopMode {
        (&mut self.rx).await.unwrap_or(StopMode::Deregister)
    }
}

/// Keeps one instance registered until [`shutdown`](Registration::shutdown).
///
/// Backends build it with [`Registration::spawn`] from a keeper task that
/// renews the registration (lease keep-alive, TTL check pass, re-register
/// after the backend lost it) until it is told to stop, and then deregisters.
///
/// Dropping the handle without calling `shutdown` still asks the keeper to
/// deregister, on a best-effort basis (the runtime must still be running).
#[derive(Debug)]
pub struct Registration {
    instance: Instance,
    stop: Option<oneshot::Sender<StopMode>>,
    task: Option<JoinHandle<Result<(), RegistryError>>>,
}

impl Registration {
    /// Spawns `keeper` on the current tokio runtime and returns its handle.
    ///
    /// The keeper receives a [`StopSignal`]; when it resolves with
    /// [`StopMode::Deregister`] the keeper removes the entry and returns the
    /// outcome, which [`Registration::shutdown`] reports.
    pub fn spawn<F, Fut>(instance: Instance, keeper: F) -> Self
    where
        F: FnOnce(StopSignal) -> Fut,
        Fut: Future<Output = Result<(), RegistryError>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(keeper(StopSignal { rx }));
        Self {
            instance,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A handle with nothing to keep alive (static registries): shutdown does
    /// nothing.
    pub fn detached(instance: Instance) -> Self {
        Self {
            instance,
            stop: None,
            task: None,
        }
    }

    /// The registered instance.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// Whether the keeper task is still running.
    pub fn is_active(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Deregisters the instance and waits for the keeper to finish.
    pub async fn shutdown(mut self) -> Result<(), RegistryError> {
        self.stop_with(StopMode::Deregister).await
    }

    /// Stops keeping the registration alive without deregistering: the entry
    /// expires after its TTL, as if the process had died.
    pub async fn abandon(mut self) -> Result<(), RegistryError> {
        self.stop_with(StopMode::Abandon).await
    }

    async fn stop_with(&mut self, mode: StopMode) -> Result<(), RegistryError> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(mode);
        }
        match self.task.take() {
            None => Ok(()),
            Some(task) => match task.await {
                Ok(result) => result,
                Err(e) => Err(RegistryError::Other(format!(
                    "registration task failed: {e}"
                ))),
            },
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(StopMode::Deregister);
        }
    }
}
