//! Tests of the `greet-server` and `greet-client` binaries as processes, and
//! of compatibility with the original example's proto file.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{server_list, start};

/// A client generated at build time from the original example's
/// `hello.proto`, untouched.
mod original {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("original/_");
}

const SERVER: &str = env!("CARGO_BIN_EXE_greet-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_greet-client");

/// Runs `bin` with `args` to completion, with a time limit.
fn run(bin: &str, args: &[&str]) -> Output {
    let child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_output(child, Duration::from_secs(60))
}

/// Waits for `child` to exit (killing it after `limit`) and collects output.
fn wait_output(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn invalid_flags_exit_non_zero_with_a_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let cases: &[(&str, &[&str], &str)] = &[
        (SERVER, &["--fail-rate", "1.5"], "outside 0..1"),
        (SERVER, &["--fail-rate", "abc"], "not a number"),
        (SERVER, &["--fail-duration", "ten"], "--fail-duration"),
        (SERVER, &["--ttl", "0s"], "must be between 1s"),
        (SERVER, &["--port", "60000"], "--health-port"),
        (SERVER, &["--port", &port], "cannot listen on"),
        (SERVER, &["--registry", "zookeeper"], "invalid value"),
        (
            SERVER,
            &["--port", "0", "--id", "bad id"],
            "invalid instance",
        ),
        (CLIENT, &["--scenario", "chaos"], "invalid value"),
        (CLIENT, &["--servers", "nope"], "invalid server \"nope\""),
        (CLIENT, &["--backoff", "0.5"], "at least 1"),
        (
            CLIENT,
            &["--balancer", "nope", "--servers", "127.0.0.1:9"],
            "nope",
        ),
    ];
    for (bin, args, expected) in cases {
        let out = run(bin, args);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

#[cfg(not(feature = "etcd"))]
#[test]
fn a_backend_that_is_not_built_in_is_named_with_the_fix() {
    let out = run(SERVER, &["--port", "0", "--registry", "etcd"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--features etcd"), "{}", stderr(&out));
}

/// A `greet-server` process on free ports, with its addresses read from the
/// line it prints when listening.
struct ServerProcess {
    child: Child,
    grpc: SocketAddr,
}

impl ServerProcess {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(SERVER)
            .args(["--port", "0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("ready line");
        // "greet-server <id> listening on <addr> (registered as ...), ..."
        let grpc = line
            .split_whitespace()
            .nth(4)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"));
        Self { child, grpc }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    fn wait(self) -> Output {
        wait_output(self.child, Duration::from_secs(30))
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_makes_the_server_deregister_drain_and_exit_zero() {
    for signal in ["TERM", "INT"] {
        let server = ServerProcess::spawn(&["--id", "server-S"]);
        let mut greet = original::greet_service_client::GreetServiceClient::new(
            common::channel(server.grpc).await,
        );
        let hello = original::HelloRequest {
            name: "Ann".into(),
            greeting: String::new(),
        };
        greet.say_hello(hello).await.expect("serving");
        drop(greet);

        server.signal(signal);
        let out = tokio::task::spawn_blocking(move || server.wait())
            .await
            .expect("join");
        let log = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "SIG{signal}: {log}");
        let at = |what: &str| {
            log.find(what)
                .unwrap_or_else(|| panic!("no {what:?} in {log}"))
        };
        assert!(at("shutdown requested") < at("deregistered"), "{log}");
        assert!(at("deregistered") < at("draining"), "{log}");
        assert!(at("draining") < at("stopped"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_original_proto_calls_the_server() {
    let server = start(&["--id", "server-O"]).await;
    let mut greet = original::greet_service_client::GreetServiceClient::connect(format!(
        "http://{}",
        server.grpc
    ))
    .await
    .expect("connect");
    for (name, greeting) in [("Ann", "Hi"), ("Ann", ""), ("Bob", "Hey")] {
        let reply = greet
            .say_hello(original::HelloRequest {
                name: name.into(),
                greeting: greeting.into(),
            })
            .await
            .expect("SayHello")
            .into_inner();
        assert!(reply.message.contains(name), "{}", reply.message);
        assert!(reply.greet_time > 0);
    }
    let all = greet
        .get_greet_stats(original::StatsRequest {
            name: String::new(),
        })
        .await
        .expect("GetGreetStats")
        .into_inner();
    assert_eq!(all.total_greets, 3);
    assert_eq!(all.greets_by_name.get("Ann"), Some(&2));
    assert!(all.last_greet_time > 0);
    let bob = greet
        .get_greet_stats(original::StatsRequest { name: "Bob".into() })
        .await
        .expect("GetGreetStats")
        .into_inner();
    assert_eq!(bob.greets_by_name.len(), 1);
    assert_eq!(bob.greets_by_name.get("Bob"), Some(&1));
    server.stop().await;
}

#[test]
fn the_proto_is_wire_identical_to_the_original() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let ours = protox::compile(["hello.proto"], [format!("{dir}/proto")]).expect("ours");
    let theirs = protox::compile(["original_hello.proto"], [format!("{dir}/tests/fixtures")])
        .expect("original");
    let (ours, theirs) = (&ours.file[0], &theirs.file[0]);
    assert_eq!(
        ours.package, None,
        "no proto package: methods are /GreetService/..."
    );
    assert_eq!(ours.package, theirs.package);
    assert_eq!(ours.syntax, theirs.syntax);
    assert_eq!(ours.message_type, theirs.message_type);
    assert_eq!(ours.service, theirs.service);
    assert_eq!(ours.options, theirs.options);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_prints_one_json_object_for_scripts() {
    let servers = [start(&[]).await, start(&[]).await];
    let list = server_list(&servers.iter().collect::<Vec<_>>());
    let out = tokio::task::spawn_blocking(move || {
        run(
            CLIENT,
            &[
                "--servers",
                &list,
                "--scenario",
                "basic",
                "--output",
                "json",
            ],
        )
    })
    .await
    .expect("join");
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout.clone()).expect("utf-8");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(json["scenario"], "basic");
    assert_eq!(json["greetings"]["ok"], 3);
    for key in [
        "requests",
        "successes",
        "failures",
        "retries",
        "failovers",
        "breaker_trips",
    ] {
        assert!(json[key].is_u64(), "{key}: {json}");
    }
    for key in ["avg_latency", "p99_latency"] {
        assert!(json[key].is_f64(), "{key}: {json}");
    }
    assert_eq!(json["instances"].as_array().map(Vec::len), Some(2));
    assert!(
        stderr(&out).contains("Basic calls"),
        "narration goes to stderr"
    );
    for s in servers {
        s.stop().await;
    }
}

#[test]
fn help_lists_the_scenario_flags() {
    let out = run(CLIENT, &["--help"]);
    assert!(out.status.success());
    let mut help = String::new();
    out.stdout
        .as_slice()
        .read_to_string(&mut help)
        .expect("utf-8");
    for flag in [
        "--scenario",
        "--output",
        "--requests",
        "--concurrency",
        "--recovery-wait",
        "--balancer",
    ] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
}
