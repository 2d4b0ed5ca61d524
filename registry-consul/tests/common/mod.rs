//! A real `consul agent -dev` on free loopback ports, stopped on drop.

#![allow(dead_code)] // each test binary uses a different part

use std::fs::File;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use fyerrpc_registry_consul::{ConsulClient, ConsulConfig, ConsulRegistry, TlsConfig};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long an agent may take to elect itself and list its node.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The consul binary: `$FYERRPC_CONSUL_BIN`, `consul` on the PATH, or the one
/// `scripts/fetch-consul.sh` caches. Fails the test when there is none.
pub fn consul_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("FYERRPC_CONSUL_BIN") {
        let bin = PathBuf::from(bin);
        assert!(
            bin.is_file(),
            "FYERRPC_CONSUL_BIN={} is not a file",
            bin.display()
        );
        return bin;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("consul"))
            .find(|p| p.is_file())
    });
    if let Some(bin) = on_path {
        return bin;
    }
    let cached =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/services/consul/usr/bin/consul");
    assert!(
        cached.is_file(),
        "no consul binary: run scripts/fetch-consul.sh (or set FYERRPC_CONSUL_BIN, \
         or put consul on the PATH)"
    );
    cached
}

/// Logs of the code under test, shown with `RUST_LOG=...` and `--nocapture`.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The process-wide metrics recorder of this test binary.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).expect("no other recorder");
        handle
    })
}

/// The value of counter `name{backend="consul"}` (0 when never incremented).
pub fn counter(name: &str) -> u64 {
    metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && l.contains("backend=\"consul\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    http: u16,
    https: u16,
    serf_lan: u16,
    serf_wan: u16,
    server: u16,
}

impl Ports {
    /// Distinct ports free on 127.0.0.1 now (serf ports for TCP and UDP).
    fn pick() -> Self {
        let mut held = Vec::new();
        let mut take = |udp_too: bool| loop {
            let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            let port = tcp.local_addr().expect("local address").port();
            if udp_too {
                match UdpSocket::bind(("127.0.0.1", port)) {
                    Ok(udp) => held.push((tcp, Some(udp))),
                    Err(_) => continue,
                }
            } else {
                held.push((tcp, None));
            }
            return port;
        };
        Self {
            http: take(false),
            https: take(false),
            serf_lan: take(true),
            serf_wan: take(true),
            server: take(false),
        }
    }
}

/// PEM files of a test CA, the agent's certificate and a client's.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// A fresh CA, a certificate for `localhost` / 127.0.0.1 /
    /// `server.dc1.consul` (the agent) and a client certificate, in `dir`.
    pub fn generate(dir: &Path) -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "fyerrpc test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::from_params(&ca, &ca_key);
        let leaf = |names: &[&str], usages: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().expect("key");
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = CertificateParams::new(names.clone()).expect("params");
            params
                .distinguished_name
                .push(DnType::CommonName, &names[0]);
            params.extended_key_usages = usages;
            let cert = params.signed_by(&key, &issuer).expect("certificate");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(
            &["localhost", "server.dc1.consul", "127.0.0.1"],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_cert, client_key) = leaf(
            &["fyerrpc-client"],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        let files = Self {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
        };
        for (path, pem) in [
            (&files.ca, ca_cert.pem()),
            (&files.server_cert, server_cert),
            (&files.server_key, server_key),
            (&files.client_cert, client_cert),
            (&files.client_key, client_key),
        ] {
            std::fs::write(path, pem).expect("write PEM");
        }
        files
    }
}

/// A `consul agent -dev` (in-memory state) of its own, killed on drop.
pub struct ConsulAgent {
    bin: PathBuf,
    dir: PathBuf,
    ports: Ports,
    token: Option<String>,
    tls: Option<TlsFiles>,
    child: Option<Child>,
}

impl ConsulAgent {
    /// An agent without ACLs.
    pub async fn start() -> Self {
        Self::launch(None, false).await
    }

    /// An agent enforcing ACLs (default deny) with `master` as its
    /// management token.
    pub async fn start_with_acl(master: &str) -> Self {
        Self::launch(Some(master.to_owned()), false).await
    }

    /// An agent that also serves HTTPS, requiring client certificates
    /// (`verify_incoming`), with certificates of a fresh test CA.
    pub async fn start_with_tls() -> Self {
        Self::launch(None, true).await
    }

    async fn launch(token: Option<String>, tls: bool) -> Self {
        init_tracing();
        let dir = std::env::temp_dir().join(format!(
            "fyerrpc-consul-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).expect("create the agent's directory");
        let tls = tls.then(|| TlsFiles::generate(&dir));
        let mut agent = Self {
            bin: consul_bin(),
            dir,
            ports: Ports::pick(),
            token,
            tls,
            child: None,
        };
        // Free ports can be taken by someone else before consul binds them.
        for attempt in 1..=3 {
            match agent.spawn_and_wait().await {
                Ok(()) => return agent,
                Err(e) if attempt < 3 => {
                    eprintln!("consul agent did not start ({e}); retrying on other ports");
                    agent.kill();
                    agent.ports = Ports::pick();
                }
                Err(e) => panic!("consul agent did not start: {e}\n{}", agent.log_tail()),
            }
        }
        unreachable!("the last attempt panics")
    }

    fn config_file(&self) -> String {
        let p = self.ports;
        let https = if self.tls.is_some() {
            i32::from(p.https)
        } else {
            -1
        };
        let mut hcl = format!(
            "ports {{\n  http = {}\n  serf_lan = {}\n  serf_wan = {}\n  server = {}\n  \
             dns = -1\n  grpc = -1\n  https = {https}\n}}\n",
            p.http, p.serf_lan, p.serf_wan, p.server
        );
        if let Some(tls) = &self.tls {
            hcl.push_str(&format!(
                "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\nverify_incoming = true\n",
                tls.ca, tls.server_cert, tls.server_key
            ));
        }
        if let Some(token) = &self.token {
            hcl.push_str(&format!(
                "primary_datacenter = \"dc1\"\nacl {{\n  enabled = true\n  \
                 default_policy = \"deny\"\n  tokens {{\n    master = \"{token}\"\n    \
                 agent = \"{token}\"\n  }}\n}}\n"
            ));
        }
        hcl
    }

    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let config = self.dir.join("agent.hcl");
        std::fs::write(&config, self.config_file()).map_err(|e| e.to_string())?;
        let log = File::create(self.dir.join("consul.log")).map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.bin)
            .args([
                "agent",
                "-dev",
                "-bind",
                "127.0.0.1",
                "-client",
                "127.0.0.1",
            ])
            .arg("-node")
            .arg(self.node())
            .arg("-config-file")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Waits until the agent lists itself as a passing `consul` service.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = self.client();
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("consul exited with {status}"));
                }
            }
            match client.health_service("consul", true, None).await {
                Ok(answer) if !answer.value.is_empty() => return Ok(()),
                _ if tokio::time::Instant::now() > deadline => {
                    return Err(format!("not ready within {READY_TIMEOUT:?}"))
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// `http://127.0.0.1:<port>` of the agent's HTTP API.
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.http)
    }

    /// `https://127.0.0.1:<port>` of the agent's HTTPS API (TLS agents).
    pub fn https_address(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.https)
    }

    /// The certificates of a TLS agent.
    pub fn tls_files(&self) -> &TlsFiles {
        self.tls.as_ref().expect("a TLS agent")
    }

    /// A configuration for the HTTPS API, trusting the test CA, checking the
    /// name `localhost`, with the client certificate if `client_cert`.
    pub fn https_config(&self, client_cert: bool) -> ConsulConfig {
        let files = self.tls_files();
        let mut tls = TlsConfig::default()
            .with_ca_file(files.ca.clone())
            .with_server_name("localhost");
        if client_cert {
            tls = tls.with_client_cert(files.client_cert.clone(), files.client_key.clone());
        }
        ConsulConfig::from_address(self.https_address()).with_tls(tls)
    }

    /// The agent's node name.
    pub fn node(&self) -> String {
        format!("fyerrpc-test-{}", self.ports.http)
    }

    /// Sends `PUT <path>` with a JSON body to the plain HTTP API and returns
    /// the status code (a raw request, for endpoints the crate does not use).
    pub async fn put(&self, path: &str, body: &str) -> u16 {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", self.ports.http))
            .await
            .expect("connect to the agent");
        let mut request = format!(
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if let Some(token) = &self.token {
            request.push_str(&format!("X-Consul-Token: {token}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        conn.write_all(request.as_bytes()).await.expect("send");
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.expect("read");
        answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {answer:?}"))
    }

    /// A configuration for this agent (with its management token, if any).
    pub fn config(&self) -> ConsulConfig {
        let config = ConsulConfig::from_address(self.address());
        match &self.token {
            Some(t) => config.with_token(t.clone()),
            None => config,
        }
    }

    /// A registry on this agent.
    pub fn registry(&self) -> ConsulRegistry {
        ConsulRegistry::new(self.config()).expect("valid config")
    }

    /// A typed client of this agent.
    pub fn client(&self) -> ConsulClient {
        ConsulClient::new(&self.config()).expect("valid config")
    }

    /// Runs the consul CLI against this agent and returns its stdout;
    /// panics if it fails.
    pub async fn cli(&self, args: &[&str]) -> String {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args(args)
            .env("CONSUL_HTTP_ADDR", format!("127.0.0.1:{}", self.ports.http))
            .env_remove("CONSUL_HTTP_TOKEN")
            .kill_on_drop(true)
            .stdin(Stdio::null());
        if let Some(token) = &self.token {
            cmd.env("CONSUL_HTTP_TOKEN", token);
        }
        let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("consul {args:?} timed out"))
            .unwrap_or_else(|e| panic!("consul {args:?}: {e}"));
        assert!(
            out.status.success(),
            "consul {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Kills the agent and starts a fresh one (dev mode: empty state) on the
    /// same ports.
    pub async fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait().await {
            panic!("consul agent did not restart: {e}\n{}", self.log_tail());
        }
    }

    /// Freezes the agent (SIGSTOP): it accepts connections but answers
    /// nothing, like a hung agent.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused agent run again (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("consul.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for ConsulAgent {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
