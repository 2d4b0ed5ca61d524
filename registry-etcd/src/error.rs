//! Errors: [`EtcdError`] for setting up, and the mapping of etcd client errors
//! onto the registry's [`RegistryError`].

use std::path::PathBuf;

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
}
