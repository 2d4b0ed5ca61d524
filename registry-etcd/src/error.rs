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
        ClientError::GRpcStatus(status) => match status.code() {
            Code::Unauthenticated | Code::PermissionDenied => {
                RegistryError::Refused(status.message().to_owned())
            }
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

/// Runs one etcd request with a deadline, mapping its errors.
pub(crate) async fn call<T>(
    timeout: Duration,
    request: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, RegistryError> {
    deadline(timeout, request).await?.map_err(registry_error)
}

/// Runs one etcd request with a deadline, leaving its own errors to the caller.
pub(crate) async fn deadline<T>(
    timeout: Duration,
    request: impl Future<Output = Result<T, ClientError>>,
) -> Result<Result<T, ClientError>, RegistryError> {
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| RegistryError::Unavailable(format!("etcd did not answer within {timeout:?}")))
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
        let e = registry_error(ClientError::GRpcStatus(tonic::Status::permission_denied("no")));
        assert!(matches!(e, RegistryError::Refused(_)));
        let e = registry_error(ClientError::InvalidArgs("x".into()));
        assert!(matches!(e, RegistryError::InvalidArgument(_)));
    }

    #[tokio::test]
    async fn times_out() {
        let never = std::future::pending::<Result<(), ClientError>>();
        let e = call(Duration::from_millis(10), never).await.unwrap_err();
        assert!(matches!(e, RegistryError::Unavailable(_)));
    }
}
