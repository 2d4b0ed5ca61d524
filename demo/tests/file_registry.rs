//! `greet-server` and `greet-client` as processes on the file registry: two
//! servers register into one file, the client finds both through it, and a
//! server that stops removes its entry.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SERVER: &str = env!("CARGO_BIN_EXE_greet-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_greet-client");
/// Upper bound of any wait here.
const LIMIT: Duration = Duration::from_secs(60);

/// A `greet-server` process on free ports, registered in the file at `path`.
struct Server {
    child: Child,
    grpc: SocketAddr,
    /// Kept open: the server may print more.
    _stdout: BufReader<ChildStdout>,
}

impl Server {
    fn spawn(id: &str, path: &Path) -> Self {
        let mut child = Command::new(SERVER)
            .args([
                "--port",
                "0",
                "--id",
                id,
                "--registry",
                "file",
                "--ttl",
                "3s",
            ])
            .arg("--registry-addr")
            .arg(path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn greet-server");
        let mut line = String::new();
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        stdout.read_line(&mut line).expect("ready line");
        // "greet-server <id> listening on <addr> ..."
        let grpc = line
            .split_whitespace()
            .nth(4)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"));
        Self {
            child,
            grpc,
            _stdout: stdout,
        }
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = wait(&mut self.child);
        assert!(exit.success(), "greet-server exited with {exit}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit in {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The addresses listed in the registry file.
fn listed(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
    let mut addresses: Vec<String> = entries
        .iter()
        .filter_map(|e| e["address"].as_str().map(str::to_owned))
        .collect();
    addresses.sort();
    addresses
}

/// Polls the file until it lists exactly `want`.
fn until_listed(path: &Path, want: &[SocketAddr]) {
    let mut want: Vec<String> = want.iter().map(ToString::to_string).collect();
    want.sort();
    let deadline = Instant::now() + LIMIT;
    while listed(path) != want {
        assert!(
            Instant::now() < deadline,
            "the file lists {:?}, expected {want:?}",
            listed(path)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn run_client(path: &Path) -> Output {
    let child = Command::new(CLIENT)
        .args([
            "--registry",
            "file",
            "--scenario",
            "basic",
            "--output",
            "json",
        ])
        .arg("--registry-addr")
        .arg(path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn greet-client");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(LIMIT) {
        Ok(out) => out.expect("output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("greet-client did not finish within {LIMIT:?}");
        }
    }
}

#[test]
fn servers_and_client_meet_in_the_registry_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("cluster.json");

    // Two processes write the one file; both entries end up in it.
    let a = Server::spawn("server-F1", &path);
    let b = Server::spawn("server-F2", &path);
    until_listed(&path, &[a.grpc, b.grpc]);

    // The client knows no address: it reads them from the file.
    let out = run_client(&path);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "greet-client failed: {log}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("one JSON report on stdout");
    assert_eq!(report["greetings"]["ok"], 3, "{report}");
    let instances = report["instances"].as_array().expect("instances");
    assert_eq!(instances.len(), 2, "{report}");

    // A server that stops removes its own entry and leaves the other's.
    let b_grpc = b.grpc;
    a.stop();
    until_listed(&path, &[b_grpc]);
    b.stop();
    until_listed(&path, &[]);
}
