//! [`SharedWatches`]: one upstream watch per (service, version), shared by
//! every subscriber in the process that asks through the same handle.
//!
//! A backend keeps one `SharedWatches` in its registry handle (clones of the
//! handle share it) and answers [`Registry::watch_changes`](super::Registry::watch_changes)
//! with [`SharedWatches::subscribe`]. The first subscriber of a key starts the
//! upstream watch; later ones join it. Each subscriber gets the whole current
//! set first, then only what changed.
//!
//! ```text
//!   subscribe(key) --no live hub--> start upstream, await its first set --Err--> error to the caller
//!        |                                   |
//!        | live hub                          v
//!        +-------------------------------> Running: one task reads the upstream stream,
//!                                            keeps the current set (by instance id) and
//!                                            broadcasts each change (a delta) to every subscriber
//!                                            |            |                     |
//!                        upstream sends a    |            | a subscriber lags   | the last subscriber
//!                        whole set: diffed   |            | past the buffer:    | is dropped: the task
//!                        against the current |            | it gets the whole   | is aborted and the
//!                        set, only the change|            | current set, then   | upstream watch closed
//!                        goes out            v            v deltas again        v
//!                                          Running      Running               Stopped
//!   the upstream stream ends (or its task's runtime shuts down): subscribers end after what was
//!   sent; the next subscribe starts anew
//! ```
//!
//! Slow subscribers never hold the others up: changes go out through a
//! bounded broadcast buffer, and one that falls further behind than the
//! buffer skips what it missed and is resynchronized with a
//! [`WatchEvent::Full`] set.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use futures_util::StreamExt;
use tokio::sync::broadcast;

use super::{canonicalize, ChangeStream, RegistryError, WatchEvent};
use crate::instance::Instance;

/// Changes buffered per key before a lagging subscriber is resynchronized
/// with a whole set.
pub const DEFAULT_SHARED_BUFFER: usize = 256;

/// (service, version)
type Key = (String, Option<String>);
/// The hub of one key, or none; locked while a hub is being started so that
/// concurrent subscribers wait for it instead of starting another.
type Slot = Arc<tokio::sync::Mutex<Weak<Hub>>>;

/// One upstream watch per (service, version), fanned out to any number of
/// subscribers.
///
/// The first [`subscribe`](Self::subscribe) of a key starts the upstream
/// watch, later ones join it, and the last subscriber to go stops it. Each
/// subscriber gets the whole current set first, then only what changed
/// (whole sets from the upstream are diffed by instance id). Slow
/// subscribers never hold the others up: changes go out through a bounded
/// buffer, and one that falls further behind skips what it missed and gets
/// a [`WatchEvent::Full`] set instead.
///
/// Cheap to clone: clones share the watches. A registry backend keeps one in
/// its handle, so that every client built on clones of that handle shares
/// one watch per service.
///
/// ```
/// use fyerrpc::registry::{MemoryRegistry, Registry, SharedWatches, WatchEvent};
/// use fyerrpc::Instance;
/// use futures_util::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let registry = MemoryRegistry::new();
/// registry.insert(Instance::new("a", "S", "127.0.0.1:1")?);
/// let shared = SharedWatches::new();
/// let upstream = || {
///     let registry = registry.clone();
///     async move { registry.watch_changes("S", None).await }
/// };
/// let mut first = shared.subscribe("S", None, upstream).await?;
/// let mut second = shared.subscribe("S", None, upstream).await?;
/// assert_eq!(shared.upstream_count(), 1); // one watch for both
/// for s in [&mut first, &mut second] {
///     assert!(matches!(s.next().await.unwrap()?, WatchEvent::Full(set) if set.len() == 1));
/// }
/// registry.insert(Instance::new("b", "S", "127.0.0.1:2")?);
/// let change = first.next().await.unwrap()?;
/// assert!(matches!(change, WatchEvent::Delta { upserted, removed }
///     if upserted.len() == 1 && upserted[0].id() == "b" && removed.is_empty()));
/// drop((first, second));
/// # tokio::task::yield_now().await;
/// assert_eq!(shared.upstream_count(), 0); // closed with its last subscriber
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SharedWatches {
    inner: Arc<Inner>,
}

struct Inner {
    slots: Mutex<HashMap<Key, Slot>>,
    /// Upstream tasks running now.
    running: Arc<AtomicUsize>,
    buffer: usize,
}

impl std::fmt::Debug for SharedWatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWatches")
            .field("upstreams", &self.upstream_count())
            .field("buffer", &self.inner.buffer)
            .finish_non_exhaustive()
    }
}

impl Default for SharedWatches {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedWatches {
    /// Shared watches buffering [`DEFAULT_SHARED_BUFFER`] changes per key.
    pub fn new() -> Self {
        Self::with_buffer(DEFAULT_SHARED_BUFFER)
    }

    /// Shared watches buffering `buffer` changes per key (at least 1): a
    /// subscriber further behind than that gets the whole set instead.
    pub fn with_buffer(buffer: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                slots: Mutex::new(HashMap::new()),
                running: Arc::new(AtomicUsize::new(0)),
                buffer: buffer.max(1),
            }),
        }
    }

    /// How many upstream watches are open now (one per watched
    /// (service, version) with at least one subscriber).
    pub fn upstream_count(&self) -> usize {
        self.inner.running.load(Ordering::SeqCst)
    }

    /// How many subscribers are attached now, over all keys.
    pub fn subscriber_count(&self) -> usize {
        let slots: Vec<Slot> = lock(&self.inner.slots).values().cloned().collect();
        slots
            .iter()
            .filter_map(|slot| slot.try_lock().ok().and_then(|hub| hub.upgrade()))
            .map(|hub| hub.core.subscribers())
            .sum()
    }

    /// A change stream of `service` (of `version`, if given): the whole
    /// current set first, then a [`WatchEvent::Delta`] per change, or a
    /// [`WatchEvent::Full`] set after this subscriber fell behind.
    ///
    /// If no watch of this key is open, `start` opens the upstream one
    /// (a [`ChangeStream`] whose first item is the current set; later items
    /// may be whole sets or deltas, whole sets are diffed here) and its
    /// first item is awaited: an error there is returned and nothing stays
    /// open. Upstream errors later are passed on to every subscriber; the
    /// subscribers' streams end when the upstream one ends.
    pub async fn subscribe<F, Fut>(
        &self,
        service: &str,
        version: Option<&str>,
        start: F,
    ) -> Result<ChangeStream, RegistryError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ChangeStream, RegistryError>>,
    {
        let key: Key = (service.to_owned(), version.map(str::to_owned));
        let slot = Arc::clone(lock(&self.inner.slots).entry(key.clone()).or_default());
        let mut current = slot.lock().await;
        if let Some(hub) = current.upgrade() {
            if let Some(subscriber) = Subscriber::join(&hub) {
                return Ok(subscriber.into_stream());
            }
        }
        let opened = async {
            let mut upstream = start().await?;
            match upstream.next().await {
                Some(Ok(WatchEvent::Full(set))) => Ok((upstream, set)),
                Some(Ok(WatchEvent::Delta { upserted, .. })) => Ok((upstream, upserted)),
                Some(Err(error)) => Err(error),
                None => Err(RegistryError::Unavailable(
                    "the watch ended before its first set".into(),
                )),
            }
        };
        let (upstream, first) = match opened.await {
            Ok(opened) => opened,
            Err(error) => {
                // Forget the key unless someone else is waiting for it.
                let idle = current.strong_count() == 0;
                drop(current);
                let mut slots = lock(&self.inner.slots);
                if idle && Arc::strong_count(&slot) == 2 {
                    slots.remove(&key);
                }
                return Err(error);
            }
        };
        let (tx, _) = broadcast::channel(self.inner.buffer);
        let core = Arc::new(Core {
            state: Mutex::new(State {
                set: by_id(first),
                seq: 0,
                tx: Some(tx),
            }),
        });
        let running = Running::new(Arc::clone(&self.inner.running), Arc::clone(&core));
        let task = tokio::spawn(pump(upstream, running));
        let hub = Arc::new(Hub {
            core,
            task: task.abort_handle(),
            key,
            owner: Arc::downgrade(&self.inner),
        });
        tracing::debug!(service, version, "shared registry watch opened");
        *current = Arc::downgrade(&hub);
        drop(current);
        match Subscriber::join(&hub) {
            Some(subscriber) => Ok(subscriber.into_stream()),
            // The upstream ended already, right after its first set.
            None => Err(RegistryError::Unavailable(
                "the watch ended right after its first set".into(),
            )),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts a running upstream task for as long as it lives, and closes its
/// hub when it goes, however it goes (the upstream ended, the task was
/// aborted, or the runtime it ran on shut down), so that no subscriber
/// waits for a task that is gone.
struct Running {
    count: Arc<AtomicUsize>,
    core: Arc<Core>,
}

impl Running {
    fn new(count: Arc<AtomicUsize>, core: Arc<Core>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self { count, core }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.core.close();
        self.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One key's upstream task and state; subscribers hold it, the last one to
/// go stops the task.
struct Hub {
    core: Arc<Core>,
    task: tokio::task::AbortHandle,
    key: Key,
    owner: Weak<Inner>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
        tracing::debug!(service = %self.key.0, version = ?self.key.1, "shared registry watch closed");
        // Forget the key, unless someone is subscribing to it right now.
        if let Some(inner) = self.owner.upgrade() {
            let mut slots = lock(&inner.slots);
            let idle = slots
                .get(&self.key)
                .is_some_and(|slot| slot.try_lock().is_ok_and(|hub| hub.strong_count() == 0));
            if idle {
                slots.remove(&self.key);
            }
        }
    }
}

struct Core {
    state: Mutex<State>,
}

struct State {
    /// The current set, by instance id.
    set: HashMap<String, Instance>,
    /// Number of the last change sent.
    seq: u64,
    /// `None` once the upstream ended.
    tx: Option<broadcast::Sender<Arc<Message>>>,
}

/// One change as broadcast: its number and what it is.
struct Message {
    seq: u64,
    item: Result<WatchEvent, RegistryError>,
}

impl Core {
    fn subscribers(&self) -> usize {
        lock(&self.state)
            .tx
            .as_ref()
            .map_or(0, broadcast::Sender::receiver_count)
    }

    /// The current set and the number of the last change in it.
    fn whole(&self) -> (u64, Vec<Instance>) {
        let state = lock(&self.state);
        (state.seq, whole(&state.set))
    }

    /// Takes in one item of the upstream stream, and sends what changed.
    fn publish(&self, item: Result<WatchEvent, RegistryError>) {
        let mut state = lock(&self.state);
        let item = match item {
            Ok(WatchEvent::Full(set)) => replace(&mut state.set, set),
            Ok(WatchEvent::Delta { upserted, removed }) => apply(&mut state.set, upserted, removed),
            Err(error) => Some(Err(error)),
        };
        let Some(item) = item else { return };
        state.seq += 1;
        let message = Arc::new(Message {
            seq: state.seq,
            item,
        });
        if let Some(tx) = &state.tx {
            // No receiver: the last subscriber is going away; nothing to do.
            let _ = tx.send(message);
        }
    }

    /// The upstream ended: subscribers end after what they have been sent.
    fn close(&self) {
        lock(&self.state).tx = None;
    }
}

/// Drives the upstream stream until it ends (or the task is aborted);
/// `running` closes the hub when it is dropped.
async fn pump(mut upstream: ChangeStream, running: Running) {
    while let Some(item) = upstream.next().await {
        running.core.publish(item);
    }
    tracing::debug!("upstream registry watch ended");
}

fn by_id(set: Vec<Instance>) -> HashMap<String, Instance> {
    canonicalize(set)
        .into_iter()
        .map(|i| (i.id().to_owned(), i))
        .collect()
}

fn whole(set: &HashMap<String, Instance>) -> Vec<Instance> {
    canonicalize(set.values().cloned().collect())
}

/// Replaces the set; the change, or `None` when nothing changed.
fn replace(
    set: &mut HashMap<String, Instance>,
    new: Vec<Instance>,
) -> Option<Result<WatchEvent, RegistryError>> {
    let new = by_id(new);
    let mut removed: Vec<String> = set
        .keys()
        .filter(|id| !new.contains_key(*id))
        .cloned()
        .collect();
    let mut upserted: Vec<Instance> = new
        .values()
        .filter(|i| set.get(i.id()) != Some(*i))
        .cloned()
        .collect();
    *set = new;
    removed.sort_unstable();
    upserted = canonicalize(upserted);
    delta(upserted, removed)
}

/// Applies a delta (removals first, then upserts); what really changed, or
/// `None` when nothing did.
fn apply(
    set: &mut HashMap<String, Instance>,
    upserted: Vec<Instance>,
    removed: Vec<String>,
) -> Option<Result<WatchEvent, RegistryError>> {
    let mut gone: Vec<Instance> = Vec::new();
    for id in removed {
        if let Some(old) = set.remove(&id) {
            gone.push(old);
        }
    }
    let mut changed: HashMap<String, Instance> = HashMap::new();
    for instance in upserted {
        changed.insert(instance.id().to_owned(), instance);
    }
    // An id removed and put back unchanged did not change.
    let mut removed = Vec::new();
    for old in gone {
        match changed.get(old.id()) {
            Some(new) if *new == old => {
                changed.remove(old.id());
                set.insert(old.id().to_owned(), old);
            }
            Some(_) => {}
            None => removed.push(old.id().to_owned()),
        }
    }
    let mut upserted = Vec::with_capacity(changed.len());
    for (id, instance) in changed {
        if set.get(&id) != Some(&instance) {
            set.insert(id, instance.clone());
            upserted.push(instance);
        }
    }
    delta(canonicalize(upserted), removed)
}

fn delta(
    upserted: Vec<Instance>,
    removed: Vec<String>,
) -> Option<Result<WatchEvent, RegistryError>> {
    if upserted.is_empty() && removed.is_empty() {
        return None;
    }
    Some(Ok(WatchEvent::Delta { upserted, removed }))
}

/// A copy of an error, for the second and later subscribers.
fn copy(error: &RegistryError) -> RegistryError {
    match error {
        RegistryError::Unavailable(s) => RegistryError::Unavailable(s.clone()),
        RegistryError::InvalidEntry { key, source } => RegistryError::InvalidEntry {
            key: key.clone(),
            source: source.clone(),
        },
        RegistryError::InvalidArgument(s) => RegistryError::InvalidArgument(s.clone()),
        RegistryError::NotSupported { backend, operation } => {
            RegistryError::NotSupported { backend, operation }
        }
        RegistryError::Refused(s) => RegistryError::Refused(s.clone()),
        RegistryError::Stopped => RegistryError::Stopped,
        RegistryError::Other(s) => RegistryError::Other(s.clone()),
    }
}

/// One subscriber's end.
struct Subscriber {
    hub: Arc<Hub>,
    rx: broadcast::Receiver<Arc<Message>>,
    /// Number of the last change this subscriber has.
    seen: u64,
    /// The whole set to send first.
    first: Option<Vec<Instance>>,
}

impl Subscriber {
    /// Joins a running hub; `None` when its upstream has ended.
    fn join(hub: &Arc<Hub>) -> Option<Self> {
        let state = lock(&hub.core.state);
        let rx = state.tx.as_ref()?.subscribe();
        Some(Self {
            hub: Arc::clone(hub),
            rx,
            seen: state.seq,
            first: Some(whole(&state.set)),
        })
    }

    fn into_stream(self) -> ChangeStream {
        Box::pin(futures_util::stream::unfold(self, |mut s| async move {
            let item = s.next().await?;
            Some((item, s))
        }))
    }

    async fn next(&mut self) -> Option<Result<WatchEvent, RegistryError>> {
        if let Some(set) = self.first.take() {
            return Some(Ok(WatchEvent::Full(set)));
        }
        loop {
            match self.rx.recv().await {
                Ok(message) => {
                    // Already in the whole set this subscriber was given.
                    if message.seq <= self.seen {
                        continue;
                    }
                    self.seen = message.seq;
                    return Some(match &message.item {
                        Ok(event) => Ok(event.clone()),
                        Err(error) => Err(copy(error)),
                    });
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let (seq, set) = self.hub.core.whole();
                    tracing::debug!(service = %self.hub.key.0, missed,
                        "registry watch subscriber fell behind; sending the whole set");
                    self.seen = seq;
                    return Some(Ok(WatchEvent::Full(set)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;

    fn inst(id: &str, port: u16) -> Instance {
        Instance::new(id, "S", format!("127.0.0.1:{port}")).unwrap()
    }

    /// An upstream fed by hand; `ended` turns true when it is dropped.
    struct Upstream {
        tx: mpsc::UnboundedSender<Result<WatchEvent, RegistryError>>,
        ended: Arc<AtomicBool>,
    }

    struct Feed {
        rx: mpsc::UnboundedReceiver<Result<WatchEvent, RegistryError>>,
        ended: Arc<AtomicBool>,
    }

    impl Drop for Feed {
        fn drop(&mut self) {
            self.ended.store(true, Ordering::SeqCst);
        }
    }

    /// A start function handing out an upstream whose first item is `first`.
    fn upstream(
        first: Vec<Instance>,
    ) -> (
        Upstream,
        impl FnOnce() -> std::future::Ready<Result<ChangeStream, RegistryError>>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        tx.send(Ok(WatchEvent::Full(first))).unwrap();
        let ended = Arc::new(AtomicBool::new(false));
        let feed = Feed {
            rx,
            ended: Arc::clone(&ended),
        };
        let start = move || {
            let stream = futures_util::stream::unfold(feed, |mut feed| async move {
                let item = feed.rx.recv().await?;
                Some((item, feed))
            });
            std::future::ready(Ok(Box::pin(stream) as ChangeStream))
        };
        (Upstream { tx, ended }, start)
    }

    fn never() -> std::future::Ready<Result<ChangeStream, RegistryError>> {
        panic!("a second upstream was started")
    }

    async fn next(stream: &mut ChangeStream) -> WatchEvent {
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("an event in time")
            .expect("the stream goes on")
            .expect("no error")
    }

    #[tokio::test]
    async fn subscribers_share_one_upstream_and_get_the_set_then_deltas() {
        let shared = SharedWatches::new();
        let (up, start) = upstream(vec![inst("a", 1)]);
        let mut first = shared.subscribe("S", None, start).await.unwrap();
        let mut second = shared.subscribe("S", None, never).await.unwrap();
        assert_eq!(shared.upstream_count(), 1);
        assert_eq!(shared.subscriber_count(), 2);
        for s in [&mut first, &mut second] {
            assert_eq!(next(s).await, WatchEvent::Full(vec![inst("a", 1)]));
        }
        // A whole set from upstream goes out as what changed.
        up.tx
            .send(Ok(WatchEvent::Full(vec![inst("a", 1), inst("b", 2)])))
            .unwrap();
        // A delta that changes nothing goes nowhere.
        up.tx
            .send(Ok(WatchEvent::Delta {
                upserted: vec![inst("a", 1)],
                removed: vec!["zzz".into()],
            }))
            .unwrap();
        up.tx
            .send(Ok(WatchEvent::Delta {
                upserted: vec![inst("b", 3)],
                removed: vec!["a".into()],
            }))
            .unwrap();
        for s in [&mut first, &mut second] {
            assert_eq!(
                next(s).await,
                WatchEvent::Delta {
                    upserted: vec![inst("b", 2)],
                    removed: vec![]
                }
            );
            assert_eq!(
                next(s).await,
                WatchEvent::Delta {
                    upserted: vec![inst("b", 3)],
                    removed: vec!["a".into()]
                }
            );
        }
        // A late subscriber starts from the current set.
        let mut late = shared.subscribe("S", None, never).await.unwrap();
        assert_eq!(next(&mut late).await, WatchEvent::Full(vec![inst("b", 3)]));
        // Errors reach everyone.
        up.tx
            .send(Err(RegistryError::Unavailable("down".into())))
            .unwrap();
        for s in [&mut first, &mut second, &mut late] {
            let item = s.next().await.unwrap();
            assert!(matches!(item, Err(RegistryError::Unavailable(ref m)) if m == "down"));
        }
        // Another version is another upstream.
        let (_other, start) = upstream(vec![]);
        let other = shared.subscribe("S", Some("v2"), start).await.unwrap();
        assert_eq!(shared.upstream_count(), 2);
        drop(other);
    }

    #[tokio::test]
    async fn the_last_subscriber_to_go_stops_the_upstream() {
        let shared = SharedWatches::new();
        let (up, start) = upstream(vec![]);
        let first = shared.subscribe("S", None, start).await.unwrap();
        let second = shared.subscribe("S", None, never).await.unwrap();
        drop(first);
        tokio::task::yield_now().await;
        assert_eq!(shared.upstream_count(), 1);
        assert!(!up.ended.load(Ordering::SeqCst));
        drop(second);
        for _ in 0..100 {
            if up.ended.load(Ordering::SeqCst) && shared.upstream_count() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(up.ended.load(Ordering::SeqCst), "upstream dropped");
        assert_eq!(shared.upstream_count(), 0);
        assert!(lock(&shared.inner.slots).is_empty(), "key forgotten");
        // The next subscriber starts a new upstream.
        let (_up, start) = upstream(vec![inst("a", 1)]);
        let mut again = shared.subscribe("S", None, start).await.unwrap();
        assert_eq!(next(&mut again).await, WatchEvent::Full(vec![inst("a", 1)]));
        assert_eq!(shared.upstream_count(), 1);
    }

    #[tokio::test]
    async fn a_lagging_subscriber_gets_the_whole_set_and_holds_no_one_up() {
        let shared = SharedWatches::with_buffer(4);
        let (up, start) = upstream(vec![]);
        let mut slow = shared.subscribe("S", None, start).await.unwrap();
        let mut fast = shared.subscribe("S", None, never).await.unwrap();
        assert_eq!(next(&mut slow).await, WatchEvent::Full(vec![]));
        assert_eq!(next(&mut fast).await, WatchEvent::Full(vec![]));
        // Ten changes; the fast one reads each as it comes, the slow one none.
        for port in 1..=10u16 {
            up.tx
                .send(Ok(WatchEvent::Delta {
                    upserted: vec![inst(&format!("i{port:02}"), port)],
                    removed: vec![],
                }))
                .unwrap();
            match next(&mut fast).await {
                WatchEvent::Delta { upserted, .. } => assert_eq!(upserted[0].port(), port),
                other => panic!("{other:?}"),
            }
        }
        // The slow one skips what it missed: one whole set with all ten...
        match next(&mut slow).await {
            WatchEvent::Full(set) => assert_eq!(set.len(), 10),
            other => panic!("expected the whole set, got {other:?}"),
        }
        // ...and then only changes after it, nothing it already has.
        up.tx
            .send(Ok(WatchEvent::Delta {
                upserted: vec![],
                removed: vec!["i01".into()],
            }))
            .unwrap();
        for s in [&mut slow, &mut fast] {
            assert_eq!(
                next(s).await,
                WatchEvent::Delta {
                    upserted: vec![],
                    removed: vec!["i01".into()]
                }
            );
        }
    }

    #[tokio::test]
    async fn an_upstream_that_fails_at_first_leaves_nothing_open() {
        let shared = SharedWatches::new();
        let failing = || {
            let (tx, rx) = mpsc::unbounded_channel::<Result<WatchEvent, RegistryError>>();
            tx.send(Err(RegistryError::Unavailable("down".into())))
                .unwrap();
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|i| (i, rx))
            });
            std::future::ready(Ok(Box::pin(stream) as ChangeStream))
        };
        let err = shared.subscribe("S", None, failing).await.err().unwrap();
        assert!(matches!(err, RegistryError::Unavailable(_)));
        assert_eq!(shared.upstream_count(), 0);
        let refused = || std::future::ready(Err(RegistryError::Refused("no".into())));
        let err = shared.subscribe("S", None, refused).await.err().unwrap();
        assert!(matches!(err, RegistryError::Refused(_)));
        assert_eq!(shared.upstream_count(), 0);
        assert!(lock(&shared.inner.slots).is_empty(), "key forgotten");
    }

    #[tokio::test]
    async fn subscribers_end_when_the_upstream_ends() {
        let shared = SharedWatches::new();
        let (up, start) = upstream(vec![inst("a", 1)]);
        let mut s = shared.subscribe("S", None, start).await.unwrap();
        assert_eq!(next(&mut s).await, WatchEvent::Full(vec![inst("a", 1)]));
        drop(up);
        assert!(tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .unwrap()
            .is_none());
        // A new subscriber starts anew.
        let (_up, start) = upstream(vec![]);
        let mut again = shared.subscribe("S", None, start).await.unwrap();
        assert_eq!(next(&mut again).await, WatchEvent::Full(vec![]));
    }

    #[test]
    fn subscribers_end_when_the_runtime_of_the_upstream_task_shuts_down() {
        let shared = SharedWatches::new();
        let (_up, start) = upstream(vec![inst("a", 1)]);
        let first_runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut s = first_runtime.block_on(async {
            let mut s = shared.subscribe("S", None, start).await.unwrap();
            assert_eq!(next(&mut s).await, WatchEvent::Full(vec![inst("a", 1)]));
            s
        });
        drop(first_runtime); // the upstream task goes with it
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        other.block_on(async {
            let end = tokio::time::timeout(Duration::from_secs(5), s.next()).await;
            assert!(end.unwrap().is_none(), "the stream ends instead of hanging");
            assert_eq!(shared.upstream_count(), 0);
        });
    }
}
