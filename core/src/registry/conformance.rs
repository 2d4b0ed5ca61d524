//! The registry conformance suite: what every [`Registry`] backend must do.
//!
//! Enabled by the `testing` feature. A backend's integration test builds a
//! [`Harness`] around its registry (connected to a real server) and calls
//! [`run`]; each check panics with a message naming what failed.
//!
//! Besides registering, discovering and watching, the suite holds every
//! backend to [the life of a registration](super::Registry#the-life-of-a-registration):
//! absurd TTLs are refused, a live registration deleted from outside is back
//! within its keep-alive period, a replaced registration stands down, and a
//! shutdown leaves nothing behind.
//!
//! ```no_run
//! # async fn demo(registry: std::sync::Arc<dyn fyerrpc::registry::Registry>) {
//! use fyerrpc::registry::conformance::{run, Harness};
//! run(&Harness::new(registry).with_ttl(std::time::Duration::from_secs(2))).await;
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::{RegisterOptions, Registry, RegistryError, WatchStream};
use crate::instance::Instance;

/// Writes an entry that is not a valid instance under a service, the way a
/// foreign or broken writer would. Gets the service name.
pub type InvalidWriter =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the suite needs to know about a backend.
#[derive(Clone)]
#[non_exhaustive]
pub struct Harness {
    /// The registry under test.
    pub registry: Arc<dyn Registry>,
    /// TTL used for the expiry check (short, the backend's minimum or more).
    pub ttl: Duration,
    /// How long a change may take to reach a watcher or `discover`.
    pub settle: Duration,
    /// How long after the TTL an abandoned registration may linger.
    pub expiry_grace: Duration,
    /// Writes garbage under a service; `None` skips the invalid-entry check.
    pub write_invalid: Option<InvalidWriter>,
    /// Prefix of the service names the suite uses (unique per run).
    pub service_prefix: String,
}

impl Harness {
    /// A harness with TTL 2 s, settle time 5 s, expiry grace 5 s, no invalid
    /// writer.
    pub fn new(registry: Arc<dyn Registry>) -> Self {
        Self {
            registry,
            ttl: Duration::from_secs(2),
            settle: Duration::from_secs(5),
            expiry_grace: Duration::from_secs(5),
            write_invalid: None,
            service_prefix: format!("conformance-{:08x}", fastrand::u32(..)),
        }
    }
    /// Sets the TTL of the expiry check.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
    /// Sets how long a change may take to show.
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }
    /// Sets how long past the TTL an abandoned registration may stay visible.
    pub fn with_expiry_grace(mut self, grace: Duration) -> Self {
        self.expiry_grace = grace;
        self
    }
    /// Sets the writer of invalid entries.
    pub fn with_invalid_writer(mut self, writer: InvalidWriter) -> Self {
        self.write_invalid = Some(writer);
        self
    }

    fn service(&self, name: &str) -> String {
        format!("{}-{name}", self.service_prefix)
    }
}

fn instance(service: &str, id: &str, port: u16) -> Instance {
    Instance::new(id, service, format!("127.0.0.1:{port}"))
        .expect("valid test instance")
        .with_metadata("zone", "z1")
}

/// Runs every check.
pub async fn run(h: &Harness) {
    absurd_ttls_refused(h).await;
    register_discover(h).await;
    watch_sees_add_and_remove(h).await;
    watch_changes_add_up_to_the_set(h).await;
    shutdown_deregisters(h).await;
    version_filter(h).await;
    ttl_expiry(h).await;
    deleted_registration_comes_back(h).await;
    replaced_registration_stands_down(h).await;
    invalid_entries_skipped(h).await;
}

/// Waits until `discover` returns exactly the `(id, address)` pairs `want`.
async fn discover_addresses_until(h: &Harness, service: &str, want: &[(&str, &str)]) {
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(i, a)| (i.to_string(), a.to_string()))
        .collect();
    want.sort();
    let deadline = tokio::time::Instant::now() + h.settle;
    let mut last = Vec::new();
    while tokio::time::Instant::now() < deadline {
        match h.registry.discover(service, None).await {
            Ok(set) => {
                last = set
                    .iter()
                    .map(|i| (i.id().to_owned(), i.address().to_owned()))
                    .collect::<Vec<_>>();
                last.sort();
                if last == want {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "discover failed"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "discover({service}) = {last:?}, expected {want:?} within {:?}",
        h.settle
    );
}

/// Waits until `discover` returns a set whose ids are `ids`.
async fn discover_until(h: &Harness, service: &str, ids: &[&str]) {
    let deadline = tokio::time::Instant::now() + h.settle;
    let mut last = Vec::new();
    while tokio::time::Instant::now() < deadline {
        match h.registry.discover(service, None).await {
            Ok(set) => {
                last = ids_of(&set);
                if last == ids {
                    return;
                }
            }
            Err(e) => tracing::warn!(error = %e, "discover failed"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "discover({service}) = {last:?}, expected {ids:?} within {:?}",
        h.settle
    );
}

/// Reads watch events until a set with ids `ids` arrives.
async fn watch_until(w: &mut WatchStream, ids: &[&str], within: Duration) {
    let r = tokio::time::timeout(within, async {
        let mut last = Vec::new();
        while let Some(ev) = w.next().await {
            match ev {
                Ok(set) => {
                    last = ids_of(&set);
                    if last == ids {
                        return Ok(());
                    }
                }
                Err(e) => tracing::warn!(error = %e, "watch reported an error"),
            }
        }
        Err(last)
    })
    .await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(last)) => panic!("watch ended at {last:?}, expected {ids:?}"),
        Err(_) => panic!("watch did not show {ids:?} within {within:?}"),
    }
}

/// Applies change events to `known` until it holds the ids `ids` (with the
/// given address for each); panics if the first event is not a whole set.
async fn changes_until(
    w: &mut super::ChangeStream,
    known: &mut std::collections::BTreeMap<String, Instance>,
    first: &mut bool,
    ids: &[&str],
    within: Duration,
) {
    let r = tokio::time::timeout(within, async {
        loop {
            let keys: Vec<&str> = known.keys().map(String::as_str).collect();
            if !*first && keys == ids {
                return Ok(());
            }
            match w.next().await {
                None => return Err(keys.iter().map(|k| (*k).to_owned()).collect::<Vec<_>>()),
                Some(Err(e)) => tracing::warn!(error = %e, "watch_changes reported an error"),
                Some(Ok(super::WatchEvent::Full(set))) => {
                    *first = false;
                    known.clear();
                    known.extend(set.into_iter().map(|i| (i.id().to_owned(), i)));
                }
                Some(Ok(super::WatchEvent::Delta { upserted, removed })) => {
                    assert!(
                        !*first,
                        "watch_changes must start with a whole set (WatchEvent::Full)"
                    );
                    for id in removed {
                        known.remove(&id);
                    }
                    known.extend(upserted.into_iter().map(|i| (i.id().to_owned(), i)));
                }
            }
        }
    })
    .await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(last)) => panic!("watch_changes ended at {last:?}, expected {ids:?}"),
        Err(_) => panic!("watch_changes did not add up to {ids:?} within {within:?}"),
    }
}

/// `watch_changes` starts with the whole set, and its events (whole sets or
/// deltas) applied in order always add up to what `watch` would show, through
/// additions and removals.
pub async fn watch_changes_add_up_to_the_set(h: &Harness) {
    let service = h.service("changes");
    let ra = h
        .registry
        .register(instance(&service, "a", 7111), RegisterOptions::default())
        .await
        .expect("register a");
    discover_until(h, &service, &["a"]).await;
    let mut w = h
        .registry
        .watch_changes(&service, None)
        .await
        .expect("watch_changes");
    let mut known = std::collections::BTreeMap::new();
    let mut first = true;
    changes_until(&mut w, &mut known, &mut first, &["a"], h.settle).await;
    let rb = h
        .registry
        .register(instance(&service, "b", 7112), RegisterOptions::default())
        .await
        .expect("register b");
    changes_until(&mut w, &mut known, &mut first, &["a", "b"], h.settle).await;
    ra.shutdown().await.expect("shutdown a");
    changes_until(&mut w, &mut known, &mut first, &["b"], h.settle).await;
    let b = &known["b"];
    assert_eq!(b.address(), rb.instance().address(), "b's entry intact");
    rb.shutdown().await.expect("shutdown b");
    changes_until(&mut w, &mut known, &mut first, &[], h.settle).await;
}

fn ids_of(set: &[Instance]) -> Vec<String> {
    let mut ids: Vec<String> = set.iter().map(|i| i.id().to_owned()).collect();
    ids.sort();
    ids
}

/// Registered instances are discovered with their fields intact.
pub async fn register_discover(h: &Harness) {
    let service = h.service("discover");
    let a = instance(&service, "a", 7001)
        .with_weight(42)
        .expect("weight");
    let b = instance(&service, "b", 7002);
    let ra = h
        .registry
        .register(a.clone(), RegisterOptions::default())
        .await
        .expect("register a");
    let rb = h
        .registry
        .register(b, RegisterOptions::default())
        .await
        .expect("register b");
    discover_until(h, &service, &["a", "b"]).await;
    let set = h.registry.discover(&service, None).await.expect("discover");
    let got = set.iter().find(|i| i.id() == "a").expect("a listed");
    assert_eq!(got.address(), a.address(), "address survives the registry");
    assert_eq!(got.weight(), 42, "weight survives the registry");
    assert_eq!(
        got.meta("zone"),
        Some("z1"),
        "metadata survives the registry"
    );
    assert_eq!(got.version(), a.version(), "version survives the registry");
    assert!(
        h.registry
            .discover(&h.service("nobody"), None)
            .await
            .expect("discover unknown")
            .is_empty(),
        "an unknown service has no instances"
    );
    ra.shutdown().await.expect("shutdown a");
    rb.shutdown().await.expect("shutdown b");
    discover_until(h, &service, &[]).await;
}

/// A watch yields the current set first, then additions and removals.
pub async fn watch_sees_add_and_remove(h: &Harness) {
    let service = h.service("watch");
    let ra = h
        .registry
        .register(instance(&service, "a", 7101), RegisterOptions::default())
        .await
        .expect("register a");
    discover_until(h, &service, &["a"]).await;
    let mut w = h.registry.watch(&service, None).await.expect("watch");
    watch_until(&mut w, &["a"], h.settle).await;
    let rb = h
        .registry
        .register(instance(&service, "b", 7102), RegisterOptions::default())
        .await
        .expect("register b");
    watch_until(&mut w, &["a", "b"], h.settle).await;
    ra.shutdown().await.expect("shutdown a");
    watch_until(&mut w, &["b"], h.settle).await;
    // An entry nobody keeps any more goes at once with `deregister`.
    let b = rb.instance().clone();
    rb.abandon().await.expect("abandon b");
    h.registry.deregister(&b).await.expect("deregister b");
    watch_until(&mut w, &[], h.settle).await;
}

/// `Registration::shutdown` removes the entry; deregistering an unknown
/// instance is no error.
pub async fn shutdown_deregisters(h: &Harness) {
    let service = h.service("shutdown");
    let r = h
        .registry
        .register(instance(&service, "a", 7201), RegisterOptions::default())
        .await
        .expect("register");
    discover_until(h, &service, &["a"]).await;
    r.shutdown().await.expect("shutdown");
    discover_until(h, &service, &[]).await;
    h.registry
        .deregister(&instance(&service, "ghost", 7202))
        .await
        .expect("deregistering an unknown instance is fine");
}

/// `discover` and `watch` with a version see only that version.
pub async fn version_filter(h: &Harness) {
    let service = h.service("version");
    let v1 = h
        .registry
        .register(instance(&service, "one", 7301), RegisterOptions::default())
        .await
        .expect("register v1");
    let v2i = instance(&service, "two", 7302)
        .with_version("v2")
        .expect("version");
    let v2 = h
        .registry
        .register(v2i, RegisterOptions::default())
        .await
        .expect("register v2");
    discover_until(h, &service, &["one", "two"]).await;
    let only = h
        .registry
        .discover(&service, Some("v2"))
        .await
        .expect("discover v2");
    assert_eq!(ids_of(&only), ["two"], "version filter");
    let mut w = h.registry.watch(&service, Some("v1")).await.expect("watch");
    watch_until(&mut w, &["one"], h.settle).await;
    v1.shutdown().await.expect("shutdown");
    v2.shutdown().await.expect("shutdown");
}

/// A registration whose keeper stopped without deregistering disappears
/// after its TTL, and a watcher sees it go.
pub async fn ttl_expiry(h: &Harness) {
    let service = h.service("ttl");
    let r = h
        .registry
        .register(
            instance(&service, "mortal", 7401),
            RegisterOptions::default().with_ttl(h.ttl),
        )
        .await
        .expect("register");
    discover_until(h, &service, &["mortal"]).await;
    let mut w = h.registry.watch(&service, None).await.expect("watch");
    watch_until(&mut w, &["mortal"], h.settle).await;
    // Outlive a few keep-alive periods: the keeper must keep it registered.
    tokio::time::sleep(h.ttl * 2).await;
    let set = h.registry.discover(&service, None).await.expect("discover");
    assert_eq!(ids_of(&set), ["mortal"], "kept alive past its TTL");
    r.abandon().await.expect("abandon");
    watch_until(&mut w, &[], h.ttl + h.expiry_grace).await;
}

/// Entries that do not decode are skipped, and the valid ones are still seen.
pub async fn invalid_entries_skipped(h: &Harness) {
    let Some(write) = &h.write_invalid else {
        return;
    };
    let service = h.service("invalid");
    let r = h
        .registry
        .register(instance(&service, "good", 7501), RegisterOptions::default())
        .await
        .expect("register");
    discover_until(h, &service, &["good"]).await;
    let mut w = h.registry.watch(&service, None).await.expect("watch");
    watch_until(&mut w, &["good"], h.settle).await;
    write(service.clone()).await;
    // A later valid change must still come through the same watch.
    let r2 = h
        .registry
        .register(
            instance(&service, "good2", 7502),
            RegisterOptions::default(),
        )
        .await
        .expect("register");
    watch_until(&mut w, &["good", "good2"], h.settle).await;
    discover_until(h, &service, &["good", "good2"]).await;
    r.shutdown().await.expect("shutdown");
    r2.shutdown().await.expect("shutdown");
}

/// A TTL outside `MIN_TTL..=MAX_TTL` (1 ns, `Duration::MAX`, zero) is refused
/// with [`RegistryError::InvalidArgument`], without a panic, and nothing is
/// registered.
pub async fn absurd_ttls_refused(h: &Harness) {
    let service = h.service("absurd-ttl");
    for ttl in [Duration::from_nanos(1), Duration::MAX, Duration::ZERO] {
        let result = h
            .registry
            .register(
                instance(&service, "absurd", 7701),
                RegisterOptions::default().with_ttl(ttl),
            )
            .await;
        match result {
            Err(RegistryError::InvalidArgument(_)) => {}
            Err(e) => panic!("a TTL of {ttl:?} must be refused as an invalid argument, not {e}"),
            Ok(r) => {
                let _ = r.shutdown().await;
                panic!("a TTL of {ttl:?} must be refused");
            }
        }
    }
    let set = h.registry.discover(&service, None).await.expect("discover");
    assert!(set.is_empty(), "a refused registration left {set:?}");
}

/// The TTL of the recovery checks: long enough that an entry put back by the
/// keep-alive (within TTL/3 plus the settle time) cannot be mistaken for one
/// that merely waited for its lease to run out.
fn recovery_ttl(h: &Harness) -> Duration {
    h.ttl.max(h.settle * 3).min(super::MAX_TTL)
}

/// A live registration whose entry is deleted from outside
/// ([`Registry::deregister`]) is back within its keep-alive period (plus the
/// settle time); deleted again and shut down at once, it stays away.
pub async fn deleted_registration_comes_back(h: &Harness) {
    let service = h.service("deleted");
    let options = RegisterOptions::default().with_ttl(recovery_ttl(h));
    let period = options.keepalive_period();
    let inst = instance(&service, "phoenix", 7801);
    let r = h
        .registry
        .register(inst.clone(), options.clone())
        .await
        .expect("register");
    discover_until(h, &service, &["phoenix"]).await;
    let mut w = h.registry.watch(&service, None).await.expect("watch");
    watch_until(&mut w, &["phoenix"], h.settle).await;

    h.registry.deregister(&inst).await.expect("deregister");
    // Seen gone (unless it was back before the watch looked), then back.
    watch_until(&mut w, &["phoenix"], period + h.settle).await;
    discover_until(h, &service, &["phoenix"]).await;
    assert!(r.is_active(), "the registration is still kept");

    // Shutdown right after a deletion: no recovery may outlive it.
    h.registry.deregister(&inst).await.expect("deregister");
    r.shutdown().await.expect("shutdown");
    discover_until(h, &service, &[]).await;
    tokio::time::sleep(period * 2).await;
    let set = h.registry.discover(&service, None).await.expect("discover");
    assert!(
        set.is_empty(),
        "a shut-down registration came back: {set:?}"
    );
}

/// Registering the same service and id again replaces the entry; the earlier
/// registration does not take it back, and its shutdown leaves the newer
/// entry in place.
///
/// The newer registration has a long keep-alive period (that of
/// [`deleted_registration_comes_back`]), so that a wrong removal or
/// overwrite by the earlier one would stay visible for seconds instead of
/// being repaired at once.
pub async fn replaced_registration_stands_down(h: &Harness) {
    let service = h.service("replaced");
    let old_options = RegisterOptions::default().with_ttl(h.ttl);
    let old_period = old_options.keepalive_period();
    let old = h
        .registry
        .register(instance(&service, "x", 7901), old_options)
        .await
        .expect("register the old one");
    discover_addresses_until(h, &service, &[("x", "127.0.0.1:7901")]).await;
    let new = h
        .registry
        .register(
            instance(&service, "x", 7902),
            RegisterOptions::default().with_ttl(recovery_ttl(h)),
        )
        .await
        .expect("register the new one");
    discover_addresses_until(h, &service, &[("x", "127.0.0.1:7902")]).await;

    // A few keep-alive periods of the old keeper: the newer entry stays.
    stays_at(
        h,
        &service,
        "127.0.0.1:7902",
        old_period * 3,
        "the old registration took it back",
    )
    .await;
    old.shutdown().await.expect("shut the old one down");
    stays_at(
        h,
        &service,
        "127.0.0.1:7902",
        old_period * 3,
        "the old one's shutdown removed it",
    )
    .await;
    assert!(new.is_active(), "the new registration is still kept");

    new.shutdown().await.expect("shut the new one down");
    discover_until(h, &service, &[]).await;
}

/// Asserts that, for `during`, every `discover` lists exactly one `x`, at
/// `address`.
async fn stays_at(h: &Harness, service: &str, address: &str, during: Duration, otherwise: &str) {
    let until = tokio::time::Instant::now() + during;
    while tokio::time::Instant::now() < until {
        match h.registry.discover(service, None).await {
            Ok(set) => {
                let got: Vec<(&str, &str)> = set.iter().map(|i| (i.id(), i.address())).collect();
                assert_eq!(got, [("x", address)], "{otherwise}");
            }
            Err(e) => tracing::warn!(error = %e, "discover failed"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long the slowest of several watchers took to see each change, as
/// measured by [`watchers_see_one_change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deliveries {
    /// From the start of the addition until the last watcher saw it.
    pub added: Duration,
    /// From the start of the removal until the last watcher saw it.
    pub removed: Duration,
}

/// Next event of `stream`, skipping errors; panics if the stream ends or
/// nothing arrives within `within`.
async fn next_change(stream: &mut super::ChangeStream, within: Duration) -> super::WatchEvent {
    loop {
        match tokio::time::timeout(within, stream.next()).await {
            Ok(Some(Ok(event))) => return event,
            Ok(Some(Err(e))) => tracing::warn!(error = %e, "watch_changes reported an error"),
            Ok(None) => panic!("the watch ended"),
            Err(_) => panic!("no event within {within:?}"),
        }
    }
}

fn sorted_ids(set: &[Instance]) -> Vec<&str> {
    let mut ids: Vec<&str> = set.iter().map(Instance::id).collect();
    ids.sort_unstable();
    ids
}

/// Every one of `streams` sees one instance come and go, each change as a
/// delta carrying only that instance; returns how long the slowest watcher
/// took for each, and the streams (still open) for further checks.
///
/// The streams come from [`watch_changes`](super::Registry::watch_changes)
/// on a service that holds exactly one instance, with id `base`. Each is read
/// in its own task, which expects, in order:
///
/// 1. [`WatchEvent::Full`](super::WatchEvent::Full) with only `base`;
/// 2. a [`WatchEvent::Delta`](super::WatchEvent::Delta) that upserts only an
///    instance with id `added` and removes nothing, once `add` (a
///    registration of that instance) completes;
/// 3. a delta that removes only `added` and upserts nothing, once that
///    registration is [shut down](super::Registration::shutdown).
///
/// `add` is awaited only once the tasks are reading, and the shutdown only
/// once every watcher has seen the addition; each delivery time runs from the
/// start of the change to the moment the last watcher saw it. Errors on a
/// stream are logged and skipped. Panics, naming what went wrong, if the
/// registration or its shutdown fails, a watcher sees anything else, its
/// stream ends, or it waits longer than `event_timeout` for one event.
///
/// ```no_run
/// # async fn demo(
/// #     registry: std::sync::Arc<dyn fyerrpc::registry::Registry>,
/// #     added: fyerrpc::Instance,
/// # ) {
/// use std::time::Duration;
/// use fyerrpc::registry::conformance::watchers_see_one_change;
/// use fyerrpc::registry::RegisterOptions;
///
/// let mut streams = Vec::new();
/// for _ in 0..10 {
///     streams.push(registry.watch_changes("Greet", None).await.unwrap());
/// }
/// let (slowest, _streams) = watchers_see_one_change(
///     streams,
///     Duration::from_secs(20),
///     registry.register(added, RegisterOptions::default()),
/// )
/// .await;
/// assert!(slowest.added < Duration::from_secs(5));
/// # }
/// ```
pub async fn watchers_see_one_change(
    streams: Vec<super::ChangeStream>,
    event_timeout: Duration,
    add: impl Future<Output = Result<super::Registration, RegistryError>>,
) -> (Deliveries, Vec<super::ChangeStream>) {
    use super::WatchEvent;
    use std::time::Instant;

    let watchers = streams.len();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut tasks = Vec::with_capacity(watchers);
    for mut stream in streams {
        let seen = seen_tx.clone();
        tasks.push(tokio::spawn(async move {
            match next_change(&mut stream, event_timeout).await {
                WatchEvent::Full(set) => assert_eq!(
                    sorted_ids(&set),
                    ["base"],
                    "the whole set first must hold only `base`"
                ),
                other => panic!("expected the whole set first, got {other:?}"),
            }
            // One instance added: only it, nothing removed.
            match next_change(&mut stream, event_timeout).await {
                WatchEvent::Delta { upserted, removed } => {
                    assert_eq!(
                        sorted_ids(&upserted),
                        ["added"],
                        "the addition must upsert only `added`"
                    );
                    assert!(removed.is_empty(), "the addition removed {removed:?}");
                }
                other => panic!("expected a delta adding `added`, got {other:?}"),
            }
            let _ = seen.send((0, Instant::now()));
            // One instance removed: only its id, nothing upserted.
            match next_change(&mut stream, event_timeout).await {
                WatchEvent::Delta { upserted, removed } => {
                    assert_eq!(removed, ["added"], "the removal must remove only `added`");
                    assert!(upserted.is_empty(), "the removal upserted {upserted:?}");
                }
                other => panic!("expected a delta removing `added`, got {other:?}"),
            }
            let _ = seen.send((1, Instant::now()));
            stream
        }));
    }
    drop(seen_tx);

    // A watcher that panics drops its sender; once all have, `recv` ends,
    // and awaiting the tasks below shows the watcher's own message.
    let mut slowest = [Duration::ZERO; 2];
    let mut failed = false;
    let started = Instant::now();
    let added = add
        .await
        .unwrap_or_else(|e| panic!("registering `added` failed: {e}"));
    for _ in 0..watchers {
        let Some((change, at)) = seen_rx.recv().await else {
            failed = true;
            break;
        };
        assert_eq!(
            change, 0,
            "a watcher saw the removal before all saw the addition"
        );
        slowest[0] = slowest[0].max(at - started);
    }
    if !failed {
        let started = Instant::now();
        added
            .shutdown()
            .await
            .unwrap_or_else(|e| panic!("deregistering `added` failed: {e}"));
        for _ in 0..watchers {
            let Some((change, at)) = seen_rx.recv().await else {
                break;
            };
            assert_eq!(change, 1, "a watcher reported the addition twice");
            slowest[1] = slowest[1].max(at - started);
        }
    }
    let mut streams = Vec::with_capacity(watchers);
    for task in tasks {
        match task.await {
            Ok(stream) => streams.push(stream),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a watcher task failed: {e}"),
        }
    }
    (
        Deliveries {
            added: slowest[0],
            removed: slowest[1],
        },
        streams,
    )
}
