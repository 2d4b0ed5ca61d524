//! A registry whose one change stream is fed by hand (feature `testing`):
//! for tests and benchmarks of what a client does with each
//! [`WatchEvent`], without a backend in between.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use fyerrpc::registry::feed::FedRegistry;
//! use fyerrpc::{Client, Instance, WatchEvent};
//!
//! let (registry, feed) = FedRegistry::new();
//! let client = Client::builder("Greet", Arc::new(registry)).build().await?;
//! let a = Instance::new("a", "Greet", "127.0.0.1:7001")?;
//! feed.send(WatchEvent::Full(vec![a]))?;
//! client.ready(std::time::Duration::from_secs(5)).await?;
//! assert_eq!(client.instances().len(), 1);
//! # Ok(())
//! # }
//! ```

use async_trait::async_trait;
use tokio::sync::{mpsc, Mutex};

use super::{
    ChangeStream, RegisterOptions, Registration, Registry, RegistryError, WatchEvent, WatchStream,
};
use crate::instance::Instance;

/// A read-only registry with one change stream, fed through the
/// [`mpsc::UnboundedSender`] that [`FedRegistry::new`] returns. The first
/// call of [`Registry::watch_changes`] takes the stream; later calls get a
/// stream that ends at once. `watch` is not supported, `discover` lists
/// nothing, and `register` fails.
#[derive(Debug)]
pub struct FedRegistry(Mutex<Option<mpsc::UnboundedReceiver<WatchEvent>>>);

impl FedRegistry {
    /// The registry and the sender that feeds its change stream.
    pub fn new() -> (Self, mpsc::UnboundedSender<WatchEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(Mutex::new(Some(rx))), tx)
    }
}

#[async_trait]
impl Registry for FedRegistry {
    async fn register(
        &self,
        _: Instance,
        _: RegisterOptions,
    ) -> Result<Registration, RegistryError> {
        Err(RegistryError::Other("read-only".into()))
    }
    async fn deregister(&self, _: &Instance) -> Result<(), RegistryError> {
        Ok(())
    }
    async fn discover(&self, _: &str, _: Option<&str>) -> Result<Vec<Instance>, RegistryError> {
        Ok(Vec::new())
    }
    async fn watch(&self, _: &str, _: Option<&str>) -> Result<WatchStream, RegistryError> {
        Err(RegistryError::Other("watch_changes only".into()))
    }
    async fn watch_changes(&self, _: &str, _: Option<&str>) -> Result<ChangeStream, RegistryError> {
        let rx = self.0.lock().await.take();
        Ok(Box::pin(futures_util::stream::unfold(
            rx,
            |rx| async move {
                let mut rx = rx?;
                let event = rx.recv().await?;
                Some((Ok(event), Some(rx)))
            },
        )))
    }
}
