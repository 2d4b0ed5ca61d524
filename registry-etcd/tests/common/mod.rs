//! Test fixtures: real etcd processes on free loopback ports, and functions to
//! wait for registry states.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use fyerrpc::instance::service_prefix;
use fyerrpc::registry::{RegisterOptions, WatchStream};
use fyerrpc::{Instance, Registration, Registry};
use fyerrpc_registry_etcd::{EtcdConfig, EtcdRegistry};
use tempfile::TempDir;

/// How long an etcd process may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How many times a cluster is started on new ports when one was taken.
const START_ATTEMPTS: usize = 3;

/// The etcd binary: `$FYERRPC_ETCD_BIN`, `etcd` on the PATH, or the one
/// `scripts/fetch-etcd.sh` unpacked into the cache. Panics if there is none.
pub fn etcd_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("FYERRPC_ETCD_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "FYERRPC_ETCD_BIN={} is not a file",
            bin.display()
        );
        return bin;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file());
    if let Some(bin) = on_path {
        return bin;
    }
    let cached = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/services/etcd/usr/bin/etcd");
    assert!(
        cached.is_file(),
        "no etcd binary found (FYERRPC_ETCD_BIN, PATH, {}): run scripts/fetch-etcd.sh first",
        cached.display()
    );
    cached
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// PEM files for an etcd member that serves clients over TLS and requires
/// client certificates signed by `ca`.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One etcd member: its process, ports and data dir. Killed on drop.
pub struct EtcdServer {
    bin: PathBuf,
    name: String,
    client_port: u16,
    peer_port: u16,
    initial_cluster: String,
    token: String,
    /// Holds the data dirs (one per generation) and the log.
    root: TempDir,
    generation: u32,
    tls: Option<ServerTls>,
    child: Option<Child>,
}

impl EtcdServer {
    /// A single-member etcd, started and healthy.
    pub fn start() -> Self {
        EtcdCluster::start(1).members.remove(0)
    }

    /// A single-member etcd serving clients over TLS, started.
    pub fn start_tls(tls: ServerTls) -> Self {
        EtcdCluster::start_with(1, Some(tls)).members.remove(0)
    }

    fn new(name: String, initial_cluster: String, token: String, ports: (u16, u16)) -> Self {
        Self {
            bin: etcd_binary(),
            name,
            client_port: ports.0,
            peer_port: ports.1,
            initial_cluster,
            token,
            root: tempfile::Builder::new()
                .prefix("fyerrpc-etcd-")
                .tempdir()
                .expect("temp dir"),
            generation: 0,
            tls: None,
            child: None,
        }
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn data_dir(&self) -> PathBuf {
        self.root.path().join(format!("data-{}", self.generation))
    }

    fn log_path(&self) -> PathBuf {
        self.root.path().join("etcd.log")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open etcd log");
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&self.bin);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            // Fast elections keep the cluster tests short.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args([
                "--logger",
                "zap",
                "--log-outputs",
                "stderr",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// Waits until the member reports itself healthy (it has a leader).
    fn wait_ready(&mut self) {
        if let Err(e) = self.try_wait_ready() {
            panic!("{e}");
        }
    }

    /// Waits until the member is healthy; `Err` with its log if it exits or
    /// takes too long.
    fn try_wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = self.log_tail();
                    return Err(format!("etcd {} exited with {status}:\n{log}", self.name));
                }
            }
            if self.healthy() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = self.log_tail();
        Err(format!(
            "etcd {} not healthy within {START_TIMEOUT:?}:\n{log}",
            self.name
        ))
    }

    fn healthy(&self) -> bool {
        let addr = ("127.0.0.1", self.client_port);
        if self.tls.is_some() {
            // Listening is enough: the registry's first request waits for a leader.
            return TcpStream::connect(addr).is_ok();
        }
        let probe = || -> std::io::Result<String> {
            let mut s = TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut body = String::new();
            s.read_to_string(&mut body)?;
            Ok(body)
        };
        probe().is_ok_and(|b| b.contains(r#""health":"true""#))
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Kills the process (no clean shutdown), keeping the data dir.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Suspends the process (SIGSTOP): its connections stay open but nothing
    /// answers, as with a hung host.
    pub fn freeze(&mut self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("etcd is running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Starts the member again on the same ports and data dir.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_ready();
    }

    /// Starts the member again on the same ports with an empty data dir: a new
    /// store whose revisions start over.
    pub fn restart_fresh(&mut self) {
        self.stop();
        self.generation += 1;
        self.spawn();
        self.wait_ready();
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Several etcd members forming one cluster on loopback.
pub struct EtcdCluster {
    pub members: Vec<EtcdServer>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until all are healthy.
    pub fn start(n: usize) -> Self {
        Self::start_with(n, None)
    }

    /// Starts `n` members, serving clients over TLS if `tls` is given. A port
    /// picked as free may be taken before etcd binds it (by another test's
    /// connection): then the cluster starts over on other ports.
    fn start_with(n: usize, tls: Option<ServerTls>) -> Self {
        let mut failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let mut members = Self::members(n);
            for member in &mut members {
                member.tls.clone_from(&tls);
                member.spawn();
            }
            match members.iter_mut().try_for_each(EtcdServer::try_wait_ready) {
                Ok(()) => return Self { members },
                // A port taken between choosing and binding it, or a member
                // that died at start on a loaded machine: start afresh.
                Err(e) if e.contains("address already in use") || e.contains(" exited with ") => {
                    failure = e
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("etcd could not bind its ports {START_ATTEMPTS} times:\n{failure}");
    }

    /// `n` members on fresh ports, not started.
    fn members(n: usize) -> Vec<EtcdServer> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        let initial_cluster = names
            .iter()
            .zip(&ports)
            .map(|(name, (_, peer))| format!("{name}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("fyerrpc-test-{:08x}", fastrand::u32(..));
        names
            .into_iter()
            .zip(ports)
            .map(|(name, ports)| {
                EtcdServer::new(name, initial_cluster.clone(), token.clone(), ports)
            })
            .collect()
    }

    /// All client URLs, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(EtcdServer::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Logs to the test output (`RUST_LOG=fyerrpc_registry_etcd=debug` for more).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "fyerrpc_registry_etcd=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A registry on `endpoints` with short timeouts, so that failures show fast
/// (long enough for a new leader election under a loaded machine).
pub async fn connect(endpoints: &str) -> EtcdRegistry {
    let config = EtcdConfig::from_endpoints(endpoints)
        .expect("valid endpoints")
        .with_connect_timeout(Duration::from_secs(1))
        .with_request_timeout(Duration::from_secs(5))
        // etcd closes connections that ping more often than every 5 s.
        .with_keep_alive_interval(Duration::from_secs(6));
    EtcdRegistry::connect(config)
        .await
        .expect("connect to etcd")
}

/// Writes entries that are not valid instances under `service`: a value that
/// is not JSON, a valid instance under the wrong key, a key outside the
/// layout, bytes that are not UTF-8.
pub async fn write_garbage(registry: &EtcdRegistry, service: &str) {
    let mut kv = registry.client().kv_client();
    let base = service_prefix(registry.prefix(), service, None);
    let misplaced = Instance::new("elsewhere", service, "127.0.0.1:9")
        .expect("instance")
        .to_json();
    let entries: [(String, Vec<u8>); 4] = [
        (format!("{base}v1/garbage"), b"{not json".to_vec()),
        (format!("{base}v1/misplaced"), misplaced.into_bytes()),
        (format!("{base}stray"), b"{}".to_vec()),
        (format!("{base}v1/binary"), vec![0xff, 0xfe, 0x00]),
    ];
    for (key, value) in entries {
        kv.put(key, value, None).await.expect("write garbage");
    }
}

/// The sorted ids of a set.
pub fn ids(set: &[Instance]) -> Vec<String> {
    let mut ids: Vec<String> = set.iter().map(|i| i.id().to_owned()).collect();
    ids.sort();
    ids
}

/// Reads the watch until a set with exactly `want` ids arrives; panics after
/// `within`. Errors on the stream (etcd down) are skipped.
pub async fn watch_until(watch: &mut WatchStream, want: &[&str], within: Duration) -> Duration {
    let started = Instant::now();
    let mut last = None;
    let found = tokio::time::timeout(within, async {
        while let Some(item) = watch.next().await {
            if let Ok(set) = item {
                let got = ids(&set);
                if got == want {
                    return true;
                }
                last = Some(got);
            }
        }
        false
    })
    .await;
    match found {
        Ok(true) => started.elapsed(),
        Ok(false) => panic!("watch ended before showing {want:?}; last {last:?}"),
        Err(_) => panic!("watch did not show {want:?} within {within:?}; last {last:?}"),
    }
}

/// Registers instance `a` of `Greet` and watches `Greet` until it shows.
pub async fn register_a_and_watch(
    registry: &EtcdRegistry,
    options: RegisterOptions,
    within: Duration,
) -> (Registration, WatchStream) {
    let a = registry
        .register(instance("Greet", "a"), options)
        .await
        .expect("register a");
    let mut watch = registry.watch("Greet", None).await.expect("watch");
    watch_until(&mut watch, &["a"], within).await;
    (a, watch)
}

/// With `a` and `b` registered, checks that `watch` shows both, then `b`
/// once `a` is shut down, then nothing once `b` is.
pub async fn shut_down_in_turn(
    watch: &mut WatchStream,
    a: Registration,
    b: Registration,
    within: Duration,
) {
    watch_until(watch, &["a", "b"], within).await;
    a.shutdown().await.expect("shutdown a");
    watch_until(watch, &["b"], within).await;
    b.shutdown().await.expect("shutdown b");
    watch_until(watch, &[], within).await;
}

/// Polls `discover` until it returns exactly `want`; panics after `within`.
pub async fn discover_until(
    registry: &dyn Registry,
    service: &str,
    want: &[&str],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        match registry.discover(service, None).await {
            Ok(set) if ids(&set) == want => return,
            Ok(set) => last = Some(Ok(ids(&set))),
            Err(e) => last = Some(Err(e.to_string())),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("discover({service}) did not return {want:?} within {within:?}; last {last:?}");
}

/// An instance of `service` on a made-up port.
pub fn instance(service: &str, id: &str) -> Instance {
    let port = 7000 + u16::try_from(id.len()).unwrap_or(0);
    Instance::new(id, service, format!("127.0.0.1:{port}")).expect("valid instance")
}

/// A registry as the trait object the core takes.
pub fn shared(registry: &EtcdRegistry) -> Arc<dyn Registry> {
    Arc::new(registry.clone())
}

/// The leases etcd knows, by id.
pub async fn leases(registry: &EtcdRegistry) -> Vec<i64> {
    let mut leases = registry.client().lease_client();
    let mut ids: Vec<i64> = leases
        .leases()
        .await
        .expect("list leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    ids.sort_unstable();
    ids
}

/// The key of `instance`, its lease and its last modification's revision;
/// `None` when there is no such key.
pub async fn key_state(registry: &EtcdRegistry, instance: &Instance) -> Option<(i64, i64)> {
    let key = fyerrpc::instance::instance_key(registry.prefix(), instance);
    let mut kv = registry.client().kv_client();
    let found = kv.get(key, None).await.expect("get the key");
    found
        .kvs()
        .first()
        .map(|kv| (kv.lease(), kv.mod_revision()))
}
