//! TLS for servers run by a [`Lifecycle`].

use tonic::transport::{Server, ServerTlsConfig};

use super::{Lifecycle, ServeError};
use crate::client::TLS_METADATA_KEY;

impl Lifecycle {
    /// Serves over TLS (feature `tls`): the server's identity, and for mutual
    /// TLS the CA that client certificates must chain to
    /// (`ServerTlsConfig::client_ca_root`). Build the router from
    /// [`server_builder`](Self::server_builder) so the settings apply.
    ///
    /// The registered instance gets the metadata
    /// [`TLS_METADATA_KEY`]` = "true"`, from which clients tell before dialing
    /// that they need TLS for it.
    ///
    /// ```no_run
    /// # async fn demo(registry: std::sync::Arc<dyn fyerrpc::Registry>) -> Result<(), Box<dyn std::error::Error>> {
    /// use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    /// use fyerrpc::server::{bind, Lifecycle};
    ///
    /// let listener = bind("127.0.0.1:0".parse()?).await?;
    /// let instance = fyerrpc::Instance::new(
    ///     "server-A", "GreetService", listener.local_addr()?.to_string())?;
    /// let tls = ServerTlsConfig::new()
    ///     .identity(Identity::from_pem(std::fs::read("certs/server.pem")?,
    ///                                  std::fs::read("certs/server.key")?))
    ///     // mutual TLS: clients need a certificate from this CA
    ///     .client_ca_root(Certificate::from_pem(std::fs::read("certs/ca.pem")?));
    /// let lifecycle = Lifecycle::new(registry, instance).tls(tls);
    /// let (_reporter, health) = tonic_health::server::health_reporter();
    /// let router = lifecycle.server_builder()?.add_service(health);
    /// lifecycle.serve(router, listener, fyerrpc::server::shutdown_signal()?).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn tls(mut self, config: ServerTlsConfig) -> Self {
        self.instance = self.instance.with_metadata(TLS_METADATA_KEY, "true");
        self.tls = Some(config);
        self
    }

    /// A tonic server builder with this lifecycle's TLS settings applied (a
    /// plain `Server::builder()` without [`tls`](Self::tls)). Build the router
    /// to [`serve`](Self::serve) from it.
    pub fn server_builder(&self) -> Result<Server, ServeError> {
        let builder = Server::builder();
        match &self.tls {
            Some(tls) => builder.tls_config(tls.clone()).map_err(ServeError::Tls),
            None => Ok(builder),
        }
    }
}
