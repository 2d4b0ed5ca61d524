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

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text format (version 0.0.4): every line is blank,
/// a `# HELP`/`# TYPE` comment, or `name{label="value",...} value
/// [timestamp]`. Errors name the offending line.
pub fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    let mut typed = std::collections::HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let fail = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match parts.next() {
                Some("HELP") => {
                    let name = parts.next().ok_or_else(|| fail("HELP without a name"))?;
                    check_name(name).map_err(|e| fail(&e))?;
                }
                Some("TYPE") => {
                    let name = parts.next().ok_or_else(|| fail("TYPE without a name"))?;
                    check_name(name).map_err(|e| fail(&e))?;
                    let kind = parts.next().ok_or_else(|| fail("TYPE without a type"))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(fail("unknown metric type"));
                    }
                    if typed.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(fail("second TYPE line for a metric"));
                    }
                }
                _ => {} // other comments are allowed
            }
            continue;
        }
        samples.push(parse_sample(line).map_err(|e| fail(&e))?);
    }
    Ok(samples)
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v
            .parse::<f64>()
            .map_err(|_| format!("invalid value {v:?}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("invalid timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Label pairs of a sample.
type Labels = Vec<(String, String)>;

/// Parses `k="v",...}` and returns the labels and the text after `}`.
fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without '='")?;
        let key = s[..eq].trim();
        check_name(key).map_err(|_| format!("invalid label name {key:?}"))?;
        s = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("invalid escape in a label value".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.push((key.to_owned(), value));
        s = &s[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
}
