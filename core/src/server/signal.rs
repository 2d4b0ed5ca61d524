//! The process signals that ask a server to shut down.

use std::fmt;
use std::future::Future;
use std::io;

/// The signal that asked for shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT, or Ctrl-C on a console.
    Interrupt,
    /// SIGTERM (Unix only).
    Terminate,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        })
    }
}

/// Installs handlers for SIGINT and SIGTERM (Ctrl-C elsewhere) and returns a
/// future that resolves with the first of them to arrive.
///
/// The handlers are installed when this function is called, not when the
/// future is first polled, so a signal that arrives in between is not lost
/// (and does not kill the process with the default disposition). Must be
/// called inside a tokio runtime.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let stop = fyerrpc::server::shutdown_signal()?;
/// let signal = stop.await;
/// println!("stopping on {signal}");
/// # Ok(())
/// # }
/// ```
#[cfg(unix)]
pub fn shutdown_signal() -> io::Result<impl Future<Output = Signal> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        // `recv` yields `None` only when the runtime is going away: treat that
        // as a request to stop too.
        tokio::select! {
            _ = interrupt.recv() => Signal::Interrupt,
            _ = terminate.recv() => Signal::Terminate,
        }
    })
}

/// Installs a Ctrl-C handler and returns a future that resolves when it fires.
/// See the Unix variant for details.
#[cfg(not(unix))]
pub fn shutdown_signal() -> io::Result<impl Future<Output = Signal> + Send + 'static> {
    Ok(async {
        // If the handler cannot be installed, never resolve rather than
        // shutting down at once.
        match tokio::signal::ctrl_c().await {
            Ok(()) => Signal::Interrupt,
            Err(_) => std::future::pending().await,
        }
    })
}
