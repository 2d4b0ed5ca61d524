//! `greet-server --registry consul` against a real Consul agent: a server is
//! passing as soon as it logs "registered", and with
//! `--register-in-background` it starts while the agent is down.

#![cfg(feature = "consul")]

mod common;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

const SERVER: &str = env!("CARGO_BIN_EXE_greet-server");

fn consul_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("FYERRPC_CONSUL_BIN") {
        return PathBuf::from(bin);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("consul"))
            .find(|p| p.is_file())
    });
    on_path.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/services/consul/usr/bin/consul")
    })
}

/// A free TCP port (and UDP too if `udp`).
fn free_port(udp: bool) -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("address").port();
        if !udp || UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A `consul agent -dev` on `http_port`, killed on drop.
struct Agent {
    child: Child,
    dir: PathBuf,
}

impl Agent {
    async fn start(http_port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "fyerrpc-demo-consul-{}-{http_port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("agent directory");
        let config = dir.join("agent.hcl");
        let hcl = format!(
            "ports {{\n  http = {http_port}\n  serf_lan = {}\n  serf_wan = {}\n  server = {}\n  \
             dns = -1\n  grpc = -1\n}}\n",
            free_port(true),
            free_port(true),
            free_port(false)
        );
        std::fs::write(&config, hcl).expect("agent config");
        let child = Command::new(consul_bin())
            .args([
                "agent",
                "-dev",
                "-bind",
                "127.0.0.1",
                "-client",
                "127.0.0.1",
            ])
            .arg("-config-file")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run consul (set FYERRPC_CONSUL_BIN)");
        let agent = Self { child, dir };
        let addr: SocketAddr = ([127, 0, 0, 1], http_port).into();
        let deadline = Instant::now() + common::LIMIT;
        while !passing(addr, "consul").await {
            assert!(Instant::now() < deadline, "consul did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        agent
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `/v1/health/service/<service>?passing` lists an instance.
async fn passing(agent: SocketAddr, service: &str) -> bool {
    if tokio::net::TcpStream::connect(agent).await.is_err() {
        return false;
    }
    let (status, body) =
        common::http_get(agent, &format!("/v1/health/service/{service}?passing")).await;
    status == 200
        && serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.as_array().map(|a| !a.is_empty()))
            .unwrap_or(false)
}

/// A `greet-server` process; its log lines arrive on `lines`.
struct Server {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Server {
    fn spawn(consul: SocketAddr, extra: &[&str]) -> Self {
        let mut child = Command::new(SERVER)
            .args(["--port", "0", "--registry", "consul", "--ttl", "3s"])
            .arg("--registry-addr")
            .arg(format!("http://{consul}"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn greet-server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a log line containing `what`.
    async fn logged(&mut self, what: &str) {
        tokio::time::timeout(common::LIMIT, async {
            while let Some(line) = self.lines.recv().await {
                if line.contains(what) {
                    return;
                }
            }
            panic!("greet-server exited before logging {what:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("greet-server did not log {what:?}"));
    }

    async fn stop(mut self) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = tokio::time::timeout(common::LIMIT, self.child.wait())
            .await
            .expect("exits")
            .expect("status");
        assert!(exit.success(), "{exit}");
    }
}

/// Polls until the greet service is passing; returns how long that took.
async fn until_passing(consul: SocketAddr) -> Duration {
    let since = Instant::now();
    while !passing(consul, "GreetService").await {
        assert!(since.elapsed() < common::LIMIT, "never passing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    since.elapsed()
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greet_server_is_passing_once_it_logs_registered() {
    let port = free_port(false);
    let _agent = Agent::start(port).await;
    let consul: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut server = Server::spawn(consul, &[]);
    server.logged(" registered ").await;
    let took = until_passing(consul).await;
    println!("passing {took:?} after \"registered\"");
    assert!(
        took < Duration::from_secs(1),
        "passing only {took:?} after \"registered\""
    );
    server.stop().await;
    assert!(!passing(consul, "GreetService").await, "deregistered");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_greet_server_registers_in_the_background_once_consul_is_up() {
    let port = free_port(false);
    let consul: SocketAddr = ([127, 0, 0, 1], port).into();
    // No agent yet: the server starts anyway and keeps trying.
    let mut server = Server::spawn(consul, &["--register-in-background"]);
    server.logged("registering in the background").await;
    server.logged("retrying in the background").await;
    let _agent = Agent::start(port).await;
    server.logged("registered in the background").await;
    until_passing(consul).await;
    server.stop().await;
    assert!(!passing(consul, "GreetService").await, "deregistered");
}
