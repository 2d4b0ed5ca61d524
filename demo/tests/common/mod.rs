//! Helpers shared by the end-to-end tests: in-process greet servers on free
//! ports, plain gRPC and HTTP clients, and a Prometheus text parser.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use fyerrpc::server::Stopped;
use fyerrpc::Registry;
use fyerrpc_demo::proto::{GreetServiceClient, StatsRequest};
use fyerrpc_demo::server::{BoundServer, ServerArgs, ServerError};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Upper bound of any single wait in the tests.
pub const LIMIT: Duration = Duration::from_secs(30);

/// A greet server running in this process on free ports.
pub struct TestServer {
    pub id: String,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<Stopped, ServerError>>>,
}

/// Starts a server with `greet-server` flags `args` (plus `--port 0`), in
/// `registry` if given (else the one the flags choose).
pub async fn start_in(registry: Option<Arc<dyn Registry>>, args: &[&str]) -> TestServer {
    let argv = ["greet-server", "--port", "0"].iter().chain(args);
    let args = ServerArgs::try_parse_from(argv).expect("valid flags");
    let bound = BoundServer::bind(args).await.expect("free ports");
    let (id, grpc, http) = (
        bound.instance().id().to_owned(),
        bound.grpc_addr(),
        bound.http_addr(),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let task = match registry {
        Some(r) => tokio::spawn(bound.serve(r, shutdown)),
        None => tokio::spawn(bound.run(shutdown)),
    };
    TestServer {
        id,
        grpc,
        http,
        stop: Some(stop),
        task: Some(task),
    }
}

/// Starts a server with `args` on the static registry.
pub async fn start(args: &[&str]) -> TestServer {
    start_in(None, args).await
}

impl TestServer {
    /// A plain tonic client of this server (no fyerrpc).
    pub async fn plain_client(&self) -> GreetServiceClient<Channel> {
        GreetServiceClient::new(channel(self.grpc).await)
    }

    /// The server's `total_greets`.
    pub async fn total_greets(&self) -> i64 {
        let mut c = self.plain_client().await;
        c.get_greet_stats(StatsRequest::default())
            .await
            .expect("stats")
            .into_inner()
            .total_greets
    }

    /// Asks the server to stop and waits for its report.
    pub async fn stop(mut self) -> Stopped {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(LIMIT, task)
            .await
            .expect("stops in time")
            .expect("task")
            .expect("clean stop")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A connected plain channel to `addr`.
pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

/// `host:port` list of `servers`, for `--servers`.
pub fn server_list(servers: &[&TestServer]) -> String {
    servers
        .iter()
        .map(|s| s.grpc.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// GET `path` on `addr` over HTTP/1.1: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = tokio::time::timeout(LIMIT, sender.send_request(req))
        .await
        .expect("in time")
        .expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8(body.to_vec()).expect("utf-8"))
}
