//! The file registry with outside writers and several handles on one file.

use std::time::Duration;

use futures_util::StreamExt;
use fyerrpc::registry::{RegisterOptions, WatchStream};
use fyerrpc::{Instance, Registry, RegistryError};
use fyerrpc_registry_file::FileRegistry;

mod common;

/// Generous: the machine may be busy.
const WITHIN: Duration = Duration::from_secs(10);

fn inst(id: &str, port: u16) -> Instance {
    Instance::new(id, "S", format!("127.0.0.1:{port}")).expect("instance")
}

/// The next item of a watch, within [`WITHIN`].
async fn next(w: &mut WatchStream) -> Result<Vec<Instance>, RegistryError> {
    tokio::time::timeout(WITHIN, w.next())
        .await
        .expect("a watch item in time")
        .expect("the watch goes on")
}

fn ids(set: &[Instance]) -> Vec<&str> {
    set.iter().map(Instance::id).collect()
}

/// Reads watch items until a set with `want` ids arrives; errors are skipped.
async fn until_ids(w: &mut WatchStream, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let item = tokio::time::timeout_at(deadline, w.next())
            .await
            .unwrap_or_else(|_| panic!("no set {want:?} within {WITHIN:?}"))
            .expect("the watch goes on");
        if let Ok(set) = item {
            if ids(&set) == want {
                return;
            }
        }
    }
}

/// Reads watch items until a set listing `id` arrives.
async fn until_listed(w: &mut WatchStream, id: &str) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let item = tokio::time::timeout_at(deadline, w.next())
            .await
            .unwrap_or_else(|_| panic!("{id} not listed within {WITHIN:?}"))
            .expect("the watch goes on");
        if item.is_ok_and(|set| set.iter().any(|i| i.id() == id)) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_file_is_an_error_item_and_the_last_set_stays() {
    common::init_tracing();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("instances.json");
    std::fs::write(&path, format!("[{}]", inst("a", 1).to_json())).expect("write");
    let registry = FileRegistry::open(&path).expect("open");
    let mut w = registry.watch("S", None).await.expect("watch");
    assert_eq!(ids(&next(&mut w).await.expect("first set")), ["a"]);

    // Half-saved by a careless editor.
    std::fs::write(&path, r#"[{"id":"a","service":"S","#).expect("write");
    let err = next(&mut w).await.expect_err("an error item");
    let text = err.to_string();
    assert!(
        text.contains("malformed") && text.contains("instances.json"),
        "{text}"
    );
    // discover says the same; a registration does not overwrite the file.
    assert!(registry.discover("S", None).await.is_err());
    let refused = registry
        .register(inst("b", 2), RegisterOptions::default())
        .await
        .expect_err("the file is not overwritten");
    assert!(refused.to_string().contains("malformed"), "{refused}");

    // Fixed: the next good set comes through the same watch.
    common::replace_by_rename(
        &path,
        r#"[{"id":"a","service":"S","address":"127.0.0.1:1"},
            {"id":"c","service":"S","address":"127.0.0.1:3"}]"#,
    );
    // (A second error item may come first: the editor's write was not atomic.)
    until_ids(&mut w, &["a", "c"]).await;

    // Gone: an error naming the file, then back.
    std::fs::remove_file(&path).expect("remove");
    let err = next(&mut w).await.expect_err("an error item");
    assert!(err.to_string().contains("does not exist"), "{err}");
    common::replace_by_rename(&path, "[]");
    assert!(next(&mut w).await.expect("a set again").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_by_an_outside_writer_is_seen_and_registrations_survive_it() {
    common::init_tracing();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("instances.json");
    let registry = FileRegistry::create(&path).expect("create");
    let options = RegisterOptions::default().with_ttl(Duration::from_secs(3));
    let r = registry
        .register(inst("server", 1), options.clone())
        .await
        .expect("register");
    let mut w = registry.watch("S", None).await.expect("watch");
    until_ids(&mut w, &["server"]).await;

    // A tool replaces the whole file (atomically, without the lock): its list
    // is what the watch shows...
    common::replace_by_rename(
        &path,
        r#"[{"id":"static","service":"S","address":"127.0.0.1:9"}]"#,
    );
    until_listed(&mut w, "static").await;
    // ...and the live registration it dropped is written back within its
    // keep-alive period, beside the tool's entry.
    until_ids(&mut w, &["server", "static"]).await;
    r.shutdown().await.expect("shutdown");
    until_ids(&mut w, &["static"]).await;
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(
        !text.contains("server"),
        "shutdown removed the entry: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_on_one_file_register_side_by_side() {
    common::init_tracing();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("instances.json");
    let one = FileRegistry::create(&path).expect("one").into_dyn();
    let two = FileRegistry::open(&path).expect("two").into_dyn();
    let options = RegisterOptions::default().with_ttl(Duration::from_secs(3));

    // Many registrations at once from both handles: every write is kept.
    let mut tasks = Vec::new();
    for i in 0..10u16 {
        let registry = if i % 2 == 0 { one.clone() } else { two.clone() };
        let options = options.clone();
        tasks.push(tokio::spawn(async move {
            registry
                .register(inst(&format!("s{i}"), 8000 + i), options)
                .await
        }));
    }
    let mut registrations = Vec::new();
    for t in tasks {
        registrations.push(t.await.expect("task").expect("register"));
    }
    let set = one.discover("S", None).await.expect("discover");
    assert_eq!(set.len(), 10, "{:?}", ids(&set));

    // Kept alive through a few renewals of all ten (every second each).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(two.discover("S", None).await.expect("discover").len(), 10);

    // Each shutdown removes its own entry only.
    let mut w = two.watch("S", None).await.expect("watch");
    for r in registrations.drain(..5) {
        r.shutdown().await.expect("shutdown");
    }
    until_ids(&mut w, &["s5", "s6", "s7", "s8", "s9"]).await;
    for r in registrations {
        r.shutdown().await.expect("shutdown");
    }
    until_ids(&mut w, &[]).await;
}

#[tokio::test]
async fn bad_paths_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("dir");
    let err = FileRegistry::open(dir.path().join("no-such-dir/instances.json"))
        .expect_err("missing directory");
    assert!(err.to_string().contains("no-such-dir"), "{err}");
    let registry = FileRegistry::open(dir.path().join("instances.json")).expect("open");
    let err = registry.discover("S", None).await.expect_err("no file yet");
    assert!(matches!(err, RegistryError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("does not exist"), "{err}");
    // Removing from a file that does not exist is no error, and creates nothing.
    registry
        .deregister(&inst("a", 1))
        .await
        .expect("deregister");
    assert!(!registry.path().exists());
}
