//! Errors: [`EtcdError`] for setting up, and the mapping of etcd client errors
//! onto the registry's [`RegistryError`].

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::Error as ClientError;
use fyerrpc::RegistryError;
use tonic::Code;

/// Why an [`EtcdRegistry`](crate::EtcdRegistry) could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A setting is missing or contradicts another.
    #[error("invalid etcd configuration: {0}")]
    InvalidConfig(String),
    /// An endpoint is not a `http(s)://host:port` URL.
    #[error("invalid etcd endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The rejected endpoint.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A TLS file could not be read.
    #[error("cannot read {path:?}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The client could not be built, or etcd did not answer the first request.
    #[error("cannot connect to etcd at {endpoints}: {source}")]
    Connect {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// What went wrong.
        #[source]
        source: RegistryError,
    },
}

/// Maps an etcd client error onto a registry error.
pub(crate) fn registry_error(e: ClientError) -> RegistryError {
    match e {
        ClientError::GRpcStatus(status) if is_refusal(&status) => {
            RegistryError::Refused(status.message().to_owned())
        }
        ClientError::GRpcStatus(status) => match status.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                RegistryError::InvalidArgument(status.message().to_owned())
            }
            _ => RegistryError::Unavailable(format!("etcd: {status}")),
        },
        ClientError::TransportError(_) | ClientError::IoError(_) => {
            RegistryError::Unavailable(format!("etcd: {e}"))
        }
        ClientError::InvalidArgs(msg) => RegistryError::InvalidArgument(msg),
        other => RegistryError::Other(format!("etcd: {other}")),
    }
}

/// Whether etcd refused the request for authentication or permission. etcd
/// reports some of these (bad password, unknown user) as invalid arguments or
/// failed preconditions, told apart by their message.
fn is_refusal(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => true,
        Code::InvalidArgument | Code::FailedPrecondition => {
            let message = status.message();
            ["authentication", "user name", "auth token"]
                .iter()
                .any(|m| message.contains(m))
        }
        _ => false,
    }
}

/// Shortest pause between two attempts of one request.
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Longest pause between two attempts of one request.
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// A request may be abandoned for another attempt after this share of the
/// request timeout without an answer.
const ATTEMPTS_PER_TIMEOUT: u32 = 4;
/// ... but not sooner than this.
const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(200);

/// The error of an attempt that got no answer in time.
fn unanswered(patience: Duration) -> ClientError {
    ClientError::GRpcStatus(tonic::Status::unavailable(format!(
        "no answer within {patience:?}"
    )))
}

/// Whether the request failed because no member could serve it (connection
/// refused, closed or broken, no leader, leader changed), so that another
/// attempt may reach a member that can. A broken connection shows as
/// `Cancelled` or `Unknown` (an HTTP/2 protocol error).
pub(crate) fn is_unavailable(e: &ClientError) -> bool {
    match e {
        ClientError::TransportError(_) | ClientError::IoError(_) => true,
        ClientError::GRpcStatus(status) => matches!(
            status.code(),
            Code::Unavailable | Code::Cancelled | Code::Unknown
        ),
        _ => false,
    }
}

/// Runs one etcd request, made by `attempt`, until it succeeds, fails for
/// another reason than [availability](is_unavailable), or `timeout` passes.
///
/// The client balances requests over all endpoints and keeps sending some to
/// a member that is down or hung, so a request that found no member able to
/// serve it, or got no answer within a quarter of `timeout`, is sent again
/// (every request this crate makes may be repeated safely).
pub(crate) async fn call<T, Fut>(
    timeout: Duration,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, RegistryError>
where
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut last = None;
    let attempts = async {
        let mut pause = RETRY_PAUSE;
        let patience = (timeout / ATTEMPTS_PER_TIMEOUT).max(MIN_ATTEMPT_TIMEOUT);
        loop {
            let answer = tokio::time::timeout(patience, attempt()).await;
            let answer = answer.unwrap_or_else(|_| Err(unanswered(patience)));
            match answer {
                Err(e) if is_unavailable(&e) => {
                    tracing::trace!(error = %e, "etcd request failed; retrying");
                    last = Some(e);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_RETRY_PAUSE);
                }
                result => return result,
            }
        }
    };
    match tokio::time::timeout(timeout, attempts).await {
        Ok(result) => result.map_err(registry_error),
        Err(_) => Err(match last {
            Some(e) => registry_error(e),
            None => RegistryError::Unavailable(format!("etcd did not answer within {timeout:?}")),
        }),
    }
}

/// Whether etcd answered "not found" (an expired or revoked lease).
pub(crate) fn is_not_found(e: &ClientError) -> bool {
    matches!(e, ClientError::GRpcStatus(s) if s.code() == Code::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_status_codes() {
        let e = registry_error(ClientError::GRpcStatus(tonic::Status::unavailable("down")));
        assert!(matches!(e, RegistryError::Unavailable(_)));
        let e = registry_error(ClientError::GRpcStatus(tonic::Status::permission_denied(
            "no",
        )));
        assert!(matches!(e, RegistryError::Refused(_)));
        let bad_password = tonic::Status::invalid_argument(
            "etcdserver: authentication failed, invalid user ID or password",
        );
        let e = registry_error(ClientError::GRpcStatus(bad_password));
        assert!(matches!(e, RegistryError::Refused(_)));
        let e = registry_error(ClientError::InvalidArgs("x".into()));
        assert!(matches!(e, RegistryError::InvalidArgument(_)));
    }

    #[tokio::test]
    async fn times_out() {
        let never = std::future::pending::<Result<(), ClientError>>;
        let e = call(Duration::from_millis(10), never).await.unwrap_err();
        assert!(matches!(e, RegistryError::Unavailable(_)));
    }

    #[tokio::test]
    async fn retries_while_unavailable_only() {
        let mut n = 0;
        let r = call(Duration::from_secs(5), || {
            n += 1;
            let result = if n < 3 {
                Err(ClientError::GRpcStatus(tonic::Status::unavailable("down")))
            } else {
                Ok(n)
            };
            std::future::ready(result)
        })
        .await;
        assert_eq!(r.unwrap(), 3);

        let mut n = 0;
        let r: Result<(), _> = call(Duration::from_secs(5), || {
            n += 1;
            std::future::ready(Err(ClientError::InvalidArgs("no".into())))
        })
        .await;
        assert!(matches!(r, Err(RegistryError::InvalidArgument(_))));
        assert_eq!(n, 1, "no retry for other errors");
    }

    #[tokio::test]
    async fn reports_the_last_error_on_timeout() {
        let r: Result<(), _> = call(Duration::from_millis(100), || {
            std::future::ready(Err(ClientError::GRpcStatus(tonic::Status::unavailable(
                "gone",
            ))))
        })
        .await;
        assert!(matches!(r, Err(RegistryError::Unavailable(m)) if m.contains("gone")));
    }
}
