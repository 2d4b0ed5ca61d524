//! Test hooks: points in the registry's background tasks where a test can
//! look on or hold the task, to make races deterministic.
//!
//! Only with the `testing` feature; without it the hooks compile to nothing.
//!
//! ```
//! use std::sync::Arc;
//! use fyerrpc_registry_etcd::testing::{Hook, Hooks};
//!
//! #[derive(Debug, Default)]
//! struct Log(std::sync::Mutex<Vec<String>>);
//!
//! #[async_trait::async_trait]
//! impl Hooks for Log {
//!     async fn reached(&self, hook: Hook<'_>) {
//!         self.0.lock().unwrap().push(format!("{hook:?}"));
//!     }
//! }
//! let hooks: Arc<dyn Hooks> = Arc::new(Log::default());
//! # let _ = hooks;
//! ```

#![cfg_attr(not(feature = "testing"), allow(dead_code))]

use async_trait::async_trait;

/// A point in a background task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hook<'a> {
    /// A registration's keep-alive stream is open on `endpoint` (and the
    /// lease renewed once).
    KeepAliveOpened {
        /// The member carrying the stream.
        endpoint: &'a str,
        /// The lease.
        lease: i64,
    },
    /// A registration whose lease was lost has a new lease and its key is
    /// written again; the keeper resumes renewing after this hook returns.
    Reregistered {
        /// The new lease.
        lease: i64,
    },
    /// A watch read its range at `revision` and is about to watch from the
    /// next revision.
    WatchRead {
        /// The revision of the read.
        revision: i64,
    },
}

/// Called at every [`Hook`]; the task waits until `reached` returns.
#[async_trait]
pub trait Hooks: Send + Sync + std::fmt::Debug {
    /// The task reached `hook`.
    async fn reached(&self, hook: Hook<'_>);
}

/// The hooks a registry's tasks call, if any.
#[derive(Debug, Clone, Default)]
pub(crate) struct Probe {
    #[cfg(feature = "testing")]
    pub(crate) hooks: Option<std::sync::Arc<dyn Hooks>>,
}

impl Probe {
    /// Calls the hooks at `hook` and waits for them.
    #[cfg_attr(not(feature = "testing"), allow(unused_variables))]
    pub(crate) async fn reached(&self, hook: Hook<'_>) {
        #[cfg(feature = "testing")]
        if let Some(hooks) = &self.hooks {
            hooks.reached(hook).await;
        }
    }
}
