//! The greet server's `/metrics` as Prometheus scrapes it: the metrics
//! `demo/src/server/metrics.rs` documents, with exactly the documented labels
//! and values, named by the Prometheus conventions. The same checks as the
//! client's metrics (`core/tests/metrics_exposition.rs`).

mod common;
#[path = "../../core/tests/support/prometheus.rs"]
mod prometheus;

use std::collections::{BTreeMap, BTreeSet};

use common::{http_get, start};
use fyerrpc_demo::proto::{HelloRequest, StatsRequest};
use fyerrpc_demo::server::metrics as sm;
use prometheus::{Kind, Label, Metric};

const CONTRACT: &[Metric] = &[
    Metric {
        name: sm::REQUESTS_TOTAL,
        kind: Kind::Counter,
        labels: &[
            Label::free("server"),
            Label::one_of("method", &["SayHello", "GetGreetStats"])
                .requiring(&["SayHello", "GetGreetStats"]),
            Label::one_of("code", prometheus::CODES)
                .documenting(&["ok"])
                .requiring(&["ok", "unavailable"]),
        ],
        emitted: true,
    },
    Metric {
        name: sm::REQUEST_DURATION,
        kind: Kind::Histogram,
        labels: &[
            Label::free("server"),
            Label::one_of("method", &["SayHello", "GetGreetStats"]).documenting(&[]),
        ],
        emitted: true,
    },
    Metric {
        name: sm::INJECTED_FAULTS_TOTAL,
        kind: Kind::Counter,
        labels: &[
            Label::free("server"),
            Label::one_of("fault", &["window", "random"]),
        ],
        emitted: true,
    },
    Metric {
        name: sm::HEALTHY,
        kind: Kind::Gauge,
        labels: &[Label::free("server")],
        emitted: true,
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_metrics_match_their_docs_and_the_conventions() {
    let source = include_str!("../src/server/metrics.rs");
    assert!(
        source.contains("label `server`"),
        "the module doc names the label every series carries"
    );
    let docs = prometheus::documented(source);
    assert_eq!(
        docs.len(),
        CONTRACT.len(),
        "one contract per documented metric"
    );

    // server-W fails in a window after 3 calls, server-R at random (always).
    let window = start(&[
        "--id",
        "server-W",
        "--fail-after",
        "3",
        "--fail-duration",
        "30s",
    ])
    .await;
    let random = start(&["--id", "server-R", "--fail-rate", "1"]).await;
    for (server, fault) in [(&window, "window"), (&random, "random")] {
        let mut greet = server.plain_client().await;
        for i in 0..5 {
            let _ = greet
                .say_hello(HelloRequest {
                    name: format!("U{i}"),
                    greeting: String::new(),
                })
                .await;
        }
        greet
            .get_greet_stats(StatsRequest::default())
            .await
            .expect("statistics are never failed on purpose");

        let (status, text) = http_get(server.http, "/metrics").await;
        assert_eq!(status, 200, "{text}");
        let expo = prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let conventions = prometheus::convention_problems(&expo);
        prometheus::assert_none("Prometheus naming conventions", &conventions, &text);
        let runtime = BTreeMap::from([("server", BTreeSet::from([server.id.clone()]))]);
        let problems = prometheus::contract_problems(CONTRACT, &docs, &["server"], &runtime, &expo);
        prometheus::assert_none("documented metrics vs /metrics", &problems, &text);

        let faults = &expo[sm::INJECTED_FAULTS_TOTAL];
        let n = faults.value(sm::INJECTED_FAULTS_TOTAL, &[("fault", fault)]);
        assert!(n >= Some(2.0), "{fault}: {n:?}\n{text}");
        let healthy = expo[sm::HEALTHY].value(sm::HEALTHY, &[]);
        let expected = if fault == "window" { 0.0 } else { 1.0 };
        assert_eq!(healthy, Some(expected), "{text}");
    }
    window.stop().await;
    random.stop().await;
}
