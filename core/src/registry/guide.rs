//! # Writing a registry backend
//!
//! A backend is a type that implements [`Registry`]: four required methods
//! and one optional one. Servers call [`register`](super::Registry::register)
//! (through [`server::Lifecycle`](crate::server::Lifecycle) or
//! [`register_in_background`]) and hold the returned [`Registration`] until
//! they stop; clients call [`watch_changes`](super::Registry::watch_changes) once
//! and follow the stream for as long as they live. Everything else a client
//! does (balancing, health checks, breakers) works on what that stream
//! reports, so a backend only has to get five methods right, and the
//! [conformance suite](#running-the-conformance-suite) tells it whether it
//! did.
//!
//! Two backends in this workspace are worth reading next to this guide:
//! `fyerrpc-registry-file` (`registry-file/`, a JSON file watched with
//! `notify`, about 900 lines with docs and unit tests) is the small one; `registry-etcd/`
//! shows what a networked backend adds (reconnecting, hedged requests, lost
//! leases).
//!
//! ## The contract, method by method
//!
//! ### `register`
//!
//! 1. Check the options **before** any side effect:
//!    `let ttl = options.checked_ttl()?;` refuses a TTL outside
//!    [`MIN_TTL`]`..=`[`MAX_TTL`] with [`RegistryError::InvalidArgument`],
//!    and nothing may be registered in that case.
//! 2. Write the entry so that it expires by itself after `ttl` unless renewed
//!    (a lease, a TTL check, an expiry time stored with it). An entry for the
//!    same service, version and id is **replaced**: the newer registration
//!    wins, whichever process made it.
//! 3. Return once the store has accepted the entry (it must then show in
//!    `discover` and in watches within moments: the suite allows its
//!    `settle` time, 5 s by default), with a handle built by
//!    [`Registration::spawn`] around a *keeper* task; see below.
//!
//! A failure to reach the store is [`RegistryError::Unavailable`]: callers
//! using [`register_in_background`] retry it with backoff, while
//! `InvalidArgument` is final.
//!
//! ### The keeper, and what `Registration::shutdown` guarantees
//!
//! The keeper is an `async` block that gets a [`StopSignal`] and loops until
//! told to stop. Every [keep-alive period](super::RegisterOptions::keepalive_period)
//! (TTL/3) it renews the entry, and each round ends in one of three ways:
//!
//! * **the entry is ours**: renew it (extend the lease, pass the check);
//! * **the entry is gone** (deleted from outside by
//!   [`deregister`](super::Registry::deregister) or an operator's tool, expired while
//!   the store was unreachable, lost by a store that restarted): write it
//!   back, count it in [`metrics::REGISTRY_REREGISTRATIONS`] and log it. A
//!   live registration whose entry is deleted is therefore back **within one
//!   keep-alive period**; to take an instance away for good, shut its
//!   registration down;
//! * **the entry belongs to another registration** (same instance registered
//!   again, typically by the next process during a restart): leave it
//!   alone and end the task. Telling "ours" from "theirs" needs an owner
//!   token written with the entry (a lease id, a random token, a process id
//!   with a random part); comparing addresses is not enough, since a
//!   restarted server often keeps its address.
//!
//! A round that fails (store unreachable) is retried sooner, with
//! [`RetryBackoff`], and the entry survives as long as the TTL allows.
//!
//! When [`StopSignal::stopped`] resolves with [`StopMode::Deregister`] the
//! keeper removes its entry **only if it is still its own** (a newer
//! registration's entry must survive an older one's shutdown) and returns;
//! with [`StopMode::Abandon`] it returns at once and the entry expires by its
//! TTL, as after a crash. [`Registration::shutdown`] waits for the keeper to
//! return and reports its result, so the promise to callers is: *when
//! `shutdown` returns, the entry is gone and nothing of that registration is
//! still running that could put it back.* The simplest way to keep it is the
//! shape below: look at the stop signal only between rounds (`biased`, first),
//! never in the middle of a write.
//!
//! ```text
//!   register --> Keeping --every TTL/3--> ours? renew : gone? write back : theirs? end (Superseded)
//!                  |
//!                  +-- stop(Deregister) --> remove the entry if still ours --> end
//!                  +-- stop(Abandon) -----> end (the entry expires)
//! ```
//!
//! Dropping a [`Registration`] without `shutdown` sends `Deregister` too,
//! best effort. A store with nothing to keep alive (a fixed list) returns
//! [`Registration::detached`].
//!
//! ### `deregister`
//!
//! Removes the instance's entry now, whoever wrote it. Removing an entry
//! that does not exist is `Ok(())`. A live registration of that instance
//! writes it back within its keep-alive period (above).
//!
//! ### `discover`
//!
//! The live instances of a service now, of one version if one is given, in
//! canonical order ([`canonicalize`]: by version, then id). An unknown
//! service is an empty set, not an error. An entry that does not decode (a
//! foreign or broken writer) is **skipped** with a `tracing` warning and
//! counted in [`metrics::REGISTRY_INVALID_ENTRIES`]; it never fails the
//! whole call. An `Err` means the store could not be read at all.
//!
//! ### `watch`
//!
//! Returns a [`WatchStream`]. Its items:
//!
//! * **First, the current set**, even when empty, so that a client knows as
//!   soon as possible what there is. To miss nothing, subscribe to changes
//!   *before* reading that set (or read at a revision and watch from the next
//!   one, as etcd allows): a change between the read and the subscription
//!   would otherwise be lost until the next one.
//! * **Then the whole set after every change**, in canonical order. Sets that
//!   did not change may be left out (the file backend compares with the last
//!   set it yielded); repeating one is harmless. Expiries are changes too: a
//!   crashed server must disappear from the stream within its TTL (plus what
//!   the store needs to notice), without anyone writing.
//! * **An `Err` item** reports a transient problem: the store is unreachable,
//!   the watch broke, the data is unreadable. It is not the end: the backend
//!   keeps trying by itself (with [`RetryBackoff`]) and yields the current set
//!   again once it can, and the client keeps using the last set it had
//!   meanwhile, counting the error in `fyerrpc_client_discovery_errors_total`.
//!   Yield one error per failed attempt or per distinct problem, not one per
//!   millisecond.
//! * The stream **ends** only when the registry goes away. If it ends anyway,
//!   or `watch` itself returns `Err` (cannot start), the client watches again
//!   after 100 ms, doubling up to 10 s.
//!
//! [`channel_stream`] turns a loop that sends into a `tokio` channel into a
//! `WatchStream` and tells the loop (`tx.closed()`) when the client dropped
//! the stream, so the loop, and the store subscription it holds, end with it.
//!
//! ### `watch_changes` (optional)
//!
//! The default wraps every set of `watch` in [`WatchEvent::Full`], and the
//! client computes the difference itself. A backend that learns of changes
//! one key at a time may override it to yield [`WatchEvent::Delta`]s
//! (upserted instances, removed ids) after a first `Full` set, which a client
//! of very large services applies in time proportional to the change. Same
//! rules for errors and ending.
//!
//! ### Errors
//!
//! | variant | when |
//! | --- | --- |
//! | [`Unavailable`](super::RegistryError::Unavailable) | the store cannot be reached, timed out, or its data cannot be read now; retried by callers |
//! | [`InvalidArgument`](super::RegistryError::InvalidArgument) | the instance or options are unacceptable (TTL out of range, a name the store cannot hold); never retried |
//! | [`InvalidEntry`](super::RegistryError::InvalidEntry) | an entry read back is not an instance, when the caller must know (otherwise skip and count it) |
//! | [`Refused`](super::RegistryError::Refused) | authentication or permission denied |
//! | [`NotSupported`](super::RegistryError::NotSupported) | the backend cannot do this at all (a read-only list asked to register) |
//! | [`Other`](super::RegistryError::Other) | anything else; say what, and where |
//!
//! Bad input from the store is an error or a skipped entry, never a panic.
//!
//! ## Helpers to reuse
//!
//! * [`RegisterOptions`], with [`checked_ttl`](super::RegisterOptions::checked_ttl)
//!   (the TTL check every backend must make),
//!   [`keepalive_period`](super::RegisterOptions::keepalive_period) (TTL/3), and
//!   `health_url` for stores that can poll an HTTP check themselves.
//! * [`Registration::spawn`], [`StopSignal`], [`StopMode`]: the handle and
//!   its stop protocol; [`Registration::detached`] when there is nothing to
//!   keep alive.
//! * [`RetryBackoff`]: delays for reconnect and retry loops, doubling with
//!   jitter, [`reset`](super::RetryBackoff::reset) after a success.
//! * [`register_in_background`]: callers get retried registration for any
//!   backend for free; a backend need not implement it.
//! * [`channel_stream`] and [`canonicalize`]: the watch stream and the order
//!   of its sets.
//! * [`MemoryRegistry`]: a complete in-process backend to delegate to, as the
//!   static registry does, or to compare behaviour with.
//! * The instance's JSON form ([`Instance::to_json`],
//!   [`Instance::from_json`]) and, for key-value stores, the shared key layout
//!   `{prefix}/{service}/{version}/{id}` ([`instance_key`],
//!   [`service_prefix`], [`Instance::from_kv`], which also checks that a key
//!   and its value agree). Storing instances in that form lets tools and
//!   other languages read your store; unknown fields are ignored on decoding,
//!   so a backend may add its own (the file backend adds a `lease`).
//! * Metric names, all counters labelled `backend="<your name>"`:
//!   [`metrics::REGISTRY_REREGISTRATIONS`] (entries written back by a
//!   keeper), [`metrics::REGISTRY_INVALID_ENTRIES`] (entries skipped),
//!   [`metrics::REGISTRY_WATCH_RESTARTS`] (watches re-established after an
//!   error). Record them through the `metrics` facade, as the core does.
//!
//! ## A backend in one page
//!
//! The example below is complete: a backend over a key-value store with
//! expiring, owned entries. The store is a stand-in kept in memory; in a
//! real backend each of its methods is a request to a server and returns
//! `Err(RegistryError::Unavailable(..))` when that fails. The backend around
//! it is written as a real one would be, and it passes the conformance suite
//! (run at the end when the `testing` feature is on).
//!
//! ```
//! use std::collections::BTreeMap;
//! use std::sync::{Arc, Mutex};
//! use std::time::Duration;
//!
//! use async_trait::async_trait;
//! use fyerrpc::instance::{instance_key, service_prefix, DEFAULT_PREFIX};
//! use fyerrpc::registry::{
//!     canonicalize, channel_stream, RegisterOptions, Registration, Registry, RegistryError,
//!     RetryBackoff, StopMode, WatchStream,
//! };
//! use fyerrpc::Instance;
//! use tokio::sync::watch;
//! use tokio::time::Instant;
//!
//! /// The stand-in store: key -> (value, owner token, expiry), and a counter
//! /// bumped on every write, to subscribe to.
//! struct Store {
//!     entries: Mutex<BTreeMap<String, (String, u64, Instant)>>,
//!     revision: watch::Sender<u64>,
//! }
//!
//! /// What a renewal found.
//! enum Renewal { Renewed, Restored, Superseded }
//!
//! impl Store {
//!     fn new() -> Arc<Self> {
//!         Arc::new(Self { entries: Mutex::default(), revision: watch::channel(0).0 })
//!     }
//!     fn locked(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (String, u64, Instant)>> {
//!         self.entries.lock().unwrap_or_else(|e| e.into_inner())
//!     }
//!     fn put(&self, key: String, value: String, owner: u64, ttl: Duration) {
//!         self.locked().insert(key, (value, owner, Instant::now() + ttl));
//!         self.revision.send_modify(|r| *r += 1);
//!     }
//!     /// Renews `key` if `owner` holds it, writes it back if it is gone.
//!     /// (The one method shown fallible: a real store's every call is.)
//!     fn renew(&self, key: &str, value: &str, owner: u64, ttl: Duration)
//!         -> Result<Renewal, RegistryError>
//!     {
//!         let now = Instant::now();
//!         let mut entries = self.locked();
//!         match entries.get_mut(key) {
//!             Some(e) if e.1 == owner && e.2 > now => {
//!                 e.2 = now + ttl;
//!                 return Ok(Renewal::Renewed);
//!             }
//!             Some(e) if e.2 > now => return Ok(Renewal::Superseded),
//!             _ => {} // missing or expired
//!         }
//!         entries.insert(key.to_owned(), (value.to_owned(), owner, now + ttl));
//!         drop(entries);
//!         self.revision.send_modify(|r| *r += 1);
//!         Ok(Renewal::Restored)
//!     }
//!     /// Deletes `key` (only if `owner` holds it, when given).
//!     fn delete(&self, key: &str, owner: Option<u64>) {
//!         let mut entries = self.locked();
//!         if entries.get(key).is_some_and(|e| owner.is_none_or(|o| o == e.1)) {
//!             entries.remove(key);
//!             drop(entries);
//!             self.revision.send_modify(|r| *r += 1);
//!         }
//!     }
//!     /// The live (key, value) pairs under `prefix`, and the next expiry.
//!     fn scan(&self, prefix: &str) -> (Vec<(String, String)>, Option<Instant>) {
//!         let now = Instant::now();
//!         let entries = self.locked();
//!         let live = entries.range(prefix.to_owned()..)
//!             .take_while(|(k, _)| k.starts_with(prefix))
//!             .filter(|(_, e)| e.2 > now);
//!         let next = live.clone().map(|(_, e)| e.2).min();
//!         (live.map(|(k, e)| (k.clone(), e.0.clone())).collect(), next)
//!     }
//! }
//!
//! /// The backend.
//! struct KvRegistry { store: Arc<Store> }
//!
//! /// Decodes what `scan` found; skips (and counts) what is not an instance.
//! fn decode(found: Vec<(String, String)>) -> Vec<Instance> {
//!     let mut set = Vec::new();
//!     for (key, value) in found {
//!         match Instance::from_kv(DEFAULT_PREFIX, &key, value.as_bytes()) {
//!             Ok(instance) => set.push(instance),
//!             Err(error) => {
//!                 tracing::warn!(%key, %error, "skipping an invalid registry entry");
//!                 metrics::counter!(fyerrpc::metrics::REGISTRY_INVALID_ENTRIES,
//!                     "backend" => "kv").increment(1);
//!             }
//!         }
//!     }
//!     canonicalize(set)
//! }
//!
//! #[async_trait]
//! impl Registry for KvRegistry {
//!     async fn register(
//!         &self,
//!         instance: Instance,
//!         options: RegisterOptions,
//!     ) -> Result<Registration, RegistryError> {
//!         let ttl = options.checked_ttl()?; // before anything else
//!         let period = options.keepalive_period();
//!         let (key, value) = (instance_key(DEFAULT_PREFIX, &instance), instance.to_json());
//!         let owner = fastrand::u64(1..); // tells our entry from a newer registration's
//!         self.store.put(key.clone(), value.clone(), owner, ttl);
//!         let store = Arc::clone(&self.store);
//!         Ok(Registration::spawn(instance, move |mut stop| async move {
//!             let mut backoff = RetryBackoff::new(Duration::from_millis(100), period);
//!             let mut delay = period;
//!             loop {
//!                 tokio::select! {
//!                     biased; // a stop is seen between rounds, never inside one
//!                     mode = stop.stopped() => {
//!                         if mode == StopMode::Deregister {
//!                             store.delete(&key, Some(owner)); // ours only
//!                         }
//!                         return Ok(());
//!                     }
//!                     () = tokio::time::sleep(delay) => {}
//!                 }
//!                 delay = period;
//!                 match store.renew(&key, &value, owner, ttl) {
//!                     Ok(Renewal::Renewed) => backoff.reset(),
//!                     Ok(Renewal::Restored) => {
//!                         backoff.reset();
//!                         metrics::counter!(fyerrpc::metrics::REGISTRY_REREGISTRATIONS,
//!                             "backend" => "kv").increment(1);
//!                         tracing::info!(%key, "entry was gone; wrote it back");
//!                     }
//!                     Ok(Renewal::Superseded) => return Ok(()), // leave the newer entry alone
//!                     Err(error) => {
//!                         delay = backoff.next_delay().min(period); // try again sooner
//!                         tracing::warn!(%key, %error, retry_in = ?delay, "cannot renew");
//!                     }
//!                 }
//!             }
//!         }))
//!     }
//!
//!     async fn deregister(&self, instance: &Instance) -> Result<(), RegistryError> {
//!         self.store.delete(&instance_key(DEFAULT_PREFIX, instance), None);
//!         Ok(())
//!     }
//!
//!     async fn discover(
//!         &self,
//!         service: &str,
//!         version: Option<&str>,
//!     ) -> Result<Vec<Instance>, RegistryError> {
//!         Ok(decode(self.store.scan(&service_prefix(DEFAULT_PREFIX, service, version)).0))
//!     }
//!
//!     async fn watch(
//!         &self,
//!         service: &str,
//!         version: Option<&str>,
//!     ) -> Result<WatchStream, RegistryError> {
//!         let store = Arc::clone(&self.store);
//!         let prefix = service_prefix(DEFAULT_PREFIX, service, version);
//!         let mut revisions = store.revision.subscribe(); // subscribe first, then read
//!         Ok(channel_stream(move |tx| async move {
//!             let mut last = None;
//!             loop {
//!                 revisions.borrow_and_update();
//!                 let (found, next_expiry) = store.scan(&prefix);
//!                 let set = decode(found);
//!                 if last.as_ref() != Some(&set) {
//!                     last = Some(set.clone());
//!                     if tx.send(Ok(set)).await.is_err() {
//!                         return; // the stream was dropped
//!                     }
//!                 }
//!                 // Wake on a write, or when the next entry expires.
//!                 let expiry = next_expiry.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
//!                 tokio::select! {
//!                     changed = revisions.changed() => if changed.is_err() { return },
//!                     () = tokio::time::sleep_until(expiry) => {}
//!                     () = tx.closed() => return,
//!                 }
//!             }
//!         }))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = Store::new();
//! let registry: Arc<dyn Registry> = Arc::new(KvRegistry { store: Arc::clone(&store) });
//! let me = Instance::new("server-A", "GreetService", "127.0.0.1:8001")?;
//! let registration = registry.register(me, RegisterOptions::default()).await?;
//! assert_eq!(registry.discover("GreetService", None).await?.len(), 1);
//! registration.shutdown().await?;
//! assert!(registry.discover("GreetService", None).await?.is_empty());
//!
//! // The whole contract, checked (about half a minute):
//! #[cfg(feature = "testing")]
//! {
//!     use fyerrpc::registry::conformance::{run, Harness};
//!     let garbage = Arc::clone(&store);
//!     let harness = Harness::new(registry).with_invalid_writer(Arc::new(move |service| {
//!         let key = format!("{}junk", service_prefix(DEFAULT_PREFIX, &service, None));
//!         garbage.put(key, "{not an instance".into(), 0, Duration::from_secs(3600));
//!         Box::pin(async {})
//!     }));
//!     run(&harness).await;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## Running the conformance suite
//!
//! The suite (`fyerrpc::registry::conformance`, behind the `testing`
//! feature of `fyerrpc`) holds a backend to everything above: absurd TTLs
//! refused, registration and discovery with every field intact, watches that
//! see additions and removals, version filters, TTL expiry of an abandoned
//! registration, an entry deleted from outside coming back, a replaced
//! registration standing down, a shutdown that leaves nothing behind, and
//! invalid entries skipped. Each check panics with a message naming what
//! went wrong.
//!
//! Put it in an integration test of your crate, against a **real** store
//! (start the server in the test, on a free loopback port, or point it at a
//! temporary directory), with the feature on for tests only:
//!
//! ```toml
//! [dev-dependencies]
//! fyerrpc = { version = "0.1", features = ["testing"] }
//! tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
//! ```
//!
//! ```no_run
//! # #[cfg(feature = "testing")]
//! # mod test {
//! # use std::sync::Arc;
//! # fn connect_to_the_test_store() -> Arc<dyn fyerrpc::Registry> { unimplemented!() }
//! # async fn write_garbage_under(_service: String) {}
//! // tests/conformance.rs
//! use std::time::Duration;
//! use fyerrpc::registry::conformance::{run, Harness};
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn passes_the_conformance_suite() {
//!     let registry = connect_to_the_test_store();
//!     let harness = Harness::new(registry)
//!         // TTL of the expiry check: the shortest your store honours.
//!         .with_ttl(Duration::from_secs(2))
//!         // How long a change may take to reach discover and watch.
//!         .with_settle(Duration::from_secs(5))
//!         // How long past its TTL an abandoned entry may linger.
//!         .with_expiry_grace(Duration::from_secs(5))
//!         // Writes an entry that is not an instance under a service, as a
//!         // broken writer would; leave it out to skip that check.
//!         .with_invalid_writer(Arc::new(|service| Box::pin(write_garbage_under(service))));
//!     run(&harness).await;
//! }
//! # }
//! # fn main() {}
//! ```
//!
//! `cargo test -p <your crate> --test conformance` runs it; a run takes about
//! half a minute, most of it waiting out keep-alive periods on purpose. The
//! checks are also public one by one (`conformance::ttl_expiry`, ...) for
//! narrowing down a failure. In this workspace,
//! `cargo test -p fyerrpc-registry-file --test conformance` runs it against
//! the file backend, and `scripts/test.sh` (so CI) runs every crate's.
//!
//! [`Registry`]: super::Registry
//! [`Registration`]: super::Registration
//! [`Registration::spawn`]: super::Registration::spawn
//! [`Registration::shutdown`]: super::Registration::shutdown
//! [`Registration::detached`]: super::Registration::detached
//! [`StopSignal`]: super::StopSignal
//! [`StopSignal::stopped`]: super::StopSignal::stopped
//! [`StopMode`]: super::StopMode
//! [`StopMode::Deregister`]: super::StopMode::Deregister
//! [`StopMode::Abandon`]: super::StopMode::Abandon
//! [`RegisterOptions`]: super::RegisterOptions
//! [`RegistryError`]: super::RegistryError
//! [`RegistryError::InvalidArgument`]: super::RegistryError::InvalidArgument
//! [`RegistryError::Unavailable`]: super::RegistryError::Unavailable
//! [`RetryBackoff`]: super::RetryBackoff
//! [`register_in_background`]: super::register_in_background
//! [`channel_stream`]: super::channel_stream
//! [`canonicalize`]: super::canonicalize
//! [`MemoryRegistry`]: super::MemoryRegistry
//! [`WatchStream`]: super::WatchStream
//! [`WatchEvent::Full`]: super::WatchEvent::Full
//! [`WatchEvent::Delta`]: super::WatchEvent::Delta
//! [`MIN_TTL`]: super::MIN_TTL
//! [`MAX_TTL`]: super::MAX_TTL
//! [`Instance::to_json`]: crate::Instance::to_json
//! [`Instance::from_json`]: crate::Instance::from_json
//! [`Instance::from_kv`]: crate::Instance::from_kv
//! [`instance_key`]: crate::instance::instance_key
//! [`service_prefix`]: crate::instance::service_prefix
//! [`metrics::REGISTRY_REREGISTRATIONS`]: crate::metrics::REGISTRY_REREGISTRATIONS
//! [`metrics::REGISTRY_INVALID_ENTRIES`]: crate::metrics::REGISTRY_INVALID_ENTRIES
//! [`metrics::REGISTRY_WATCH_RESTARTS`]: crate::metrics::REGISTRY_WATCH_RESTARTS
