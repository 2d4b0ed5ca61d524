//! Reading instances: one-shot health queries and the blocking-query watch
//! loop behind [`Registry::watch`](fyerrpc::Registry::watch).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fyerrpc::registry::{canonicalize, channel_stream, RetryBackoff, WatchStream};
use fyerrpc::{Instance, RegistryError};
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;

use crate::client::ConsulClient;
use crate::client::Indexed;
use crate::codec::{decode, Problem};
use crate::metrics;
use crate::wire::ServiceEntry;

/// Least time between the starts of two queries of one watch, so that a
/// misbehaving index can never turn the loop into a busy loop.
const MIN_QUERY_INTERVAL: Duration = Duration::from_millis(50);
/// First retry delay after a failed query.
const RETRY_BASE: Duration = Duration::from_millis(200);
/// Longest retry delay after failed queries.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Turns health entries into instances, warning (and counting) once about
/// each problem for as long as it persists.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    reported: HashSet<Problem>,
}

impl Decoder {
    /// The instances among `entries` (of `version`, if given), canonical.
    ///
    /// A fyerrpc id registered on several nodes (each agent has its own
    /// entry) is qualified with `@<node>` on each, so that no instance hides
    /// another.
    pub(crate) fn instances(
        &mut self,
        entries: &[ServiceEntry],
        version: Option<&str>,
    ) -> Vec<Instance> {
        let mut problems = HashSet::new();
        let mut decoded = Vec::with_capacity(entries.len());
        for entry in entries {
            match decode(entry) {
                Ok(d) => {
                    problems.extend(d.problems.iter().cloned());
                    if version.is_none_or(|v| d.instance.version() == v) {
                        decoded.push(d);
                    }
                }
                Err(problem) => {
                    problems.insert(problem);
                }
            }
        }
        let mut nodes: HashMap<(&str, &str), HashSet<&str>> = HashMap::new();
        for d in decoded.iter().filter(|d| d.own_id) {
            nodes
                .entry((d.instance.version(), d.instance.id()))
                .or_default()
                .insert(d.node.as_str());
        }
        let shared: HashSet<(String, String)> = nodes
            .into_iter()
            .filter(|(_, n)| n.len() > 1)
            .map(|((v, i), _)| (v.to_owned(), i.to_owned()))
            .collect();
        let mut set = Vec::with_capacity(decoded.len());
        for d in decoded {
            let key = (d.instance.version().to_owned(), d.instance.id().to_owned());
            if d.own_id && shared.contains(&key) {
                let qualified = format!("{}@{}", d.instance.id(), d.node);
                match with_id(&d.instance, qualified) {
                    Ok(i) => set.push(i),
                    Err(e) => {
                        problems.insert(Problem {
                            id: key.1,
                            what: format!("registered on several nodes, and {e}; skipped"),
                        });
                    }
                }
            } else {
                set.push(d.instance);
            }
        }
        for problem in problems.difference(&self.reported) {
            metrics::invalid_entry();
            tracing::warn!(
                service = %entry_service(entries), id = %problem.id, problem = %problem.what,
                "invalid Consul service entry"
            );
        }
        self.reported = problems;
        canonicalize(set)
    }
}

/// `instance` under another id.
fn with_id(instance: &Instance, id: String) -> Result<Instance, fyerrpc::InstanceError> {
    let mut out = Instance::new(id, instance.service(), instance.address())?
        .with_version(instance.version())?
        .with_weight(instance.weight())?
        .with_status(instance.status());
    for (k, v) in instance.metadata() {
        out = out.with_metadata(k.clone(), v.clone());
    }
    Ok(out)
}

fn entry_service(entries: &[ServiceEntry]) -> &str {
    entries.first().map_or("", |e| e.service.service.as_str())
}

/// Warns once (per watch, or per registry for one-shot reads) about answers
/// that the ACL token filtered, and about answers without an index.
#[derive(Debug, Default)]
pub(crate) struct Warnings {
    filtered: std::sync::atomic::AtomicBool,
    no_index: std::sync::atomic::AtomicBool,
}

impl Warnings {
    /// Looks at one answer's headers; warns the first time. Returns how
    /// many warnings it logged.
    pub(crate) fn check<T>(&self, service: &str, answer: &Indexed<T>, blocking: bool) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let mut logged = 0;
        if answer.filtered_by_acls && !self.filtered.swap(true, Relaxed) {
            logged += 1;
            tracing::warn!(
                %service,
                "Consul filtered the answer by ACLs (X-Consul-Results-Filtered-By-ACLs): \
                 the token may not read every instance, so some are missing; \
                 grant it service:read and node:read"
            );
        }
        if blocking && answer.index.is_none() && !self.no_index.swap(true, Relaxed) {
            logged += 1;
            tracing::warn!(
                %service,
                "Consul sent no X-Consul-Index (a proxy in between?): blocking queries \
                 cannot work, polling with backoff instead"
            );
        }
        logged
    }
}

/// The passing instances of `service` now.
pub(crate) async fn discover(
    client: &ConsulClient,
    warnings: &Warnings,
    service: &str,
    version: Option<&str>,
) -> Result<Vec<Instance>, RegistryError> {
    let entries = client.health_service(service, true, None).await?;
    warnings.check(service, &entries, false);
    Ok(Decoder::default().instances(&entries.value, version))
}

/// A stream of the passing instances of `service`: the current set, then the
/// whole set after each change.
pub(crate) fn watch(client: ConsulClient, service: String, version: Option<String>) -> WatchStream {
    channel_stream(move |tx| async move {
        Watch {
            client,
            service,
            version,
            tx,
        }
        .run()
        .await;
    })
}

/// The next index to block on after a query that returned `new` when
/// `previous` was asked for.
///
/// Consul's rules for blocking queries: an index that goes backwards (a
/// restarted agent, a snapshot restore) starts over from 0; an index of 0
/// would make every query return at once, so it is raised to 1. A forward
/// jump, however large, is simply followed. No index at all (`None`) starts
/// over too; the caller then waits before asking again.
fn next_index(previous: u64, new: Option<u64>) -> u64 {
    match new {
        None => 0,
        Some(new) if new < previous => 0,
        Some(new) => new.max(1),
    }
}

struct Watch {
    client: ConsulClient,
    service: String,
    version: Option<String>,
    tx: Sender<Result<Vec<Instance>, RegistryError>>,
}

impl Watch {
    async fn run(self) {
        let mut decoder = Decoder::default();
        let warnings = Warnings::default();
        let mut backoff = RetryBackoff::new(RETRY_BASE, RETRY_MAX);
        let mut unindexed = RetryBackoff::new(RETRY_BASE, RETRY_MAX);
        let mut index = 0;
        let mut last: Option<Vec<Instance>> = None;
        loop {
            let started = Instant::now();
            let blocking = (index > 0).then_some(index);
            let query = self.client.health_service(&self.service, true, blocking);
            let result = tokio::select! {
                result = query => result,
                () = self.tx.closed() => return,
            };
            let pause = match result {
                Ok(answer) => {
                    tracing::debug!(service = %self.service, asked = index, index = answer.index,
                        entries = answer.value.len(), "Consul watch answer");
                    warnings.check(&self.service, &answer, true);
                    index = next_index(index, answer.index);
                    backoff.reset();
                    // Without an index every query returns at once: back off.
                    let floor = match answer.index {
                        Some(_) => {
                            unindexed.reset();
                            MIN_QUERY_INTERVAL
                        }
                        None => unindexed.next_delay().max(MIN_QUERY_INTERVAL),
                    };
                    let set = decoder.instances(&answer.value, self.version.as_deref());
                    if last.as_ref() != Some(&set) {
                        last = Some(set.clone());
                        if self.tx.send(Ok(set)).await.is_err() {
                            return;
                        }
                    }
                    (started + floor).saturating_duration_since(Instant::now())
                }
                Err(error) => {
                    // The agent may have restarted with a new index sequence.
                    index = 0;
                    tracing::warn!(service = %self.service, %error, "Consul watch query failed");
                    if self.tx.send(Err(error.into())).await.is_err() {
                        return;
                    }
                    backoff.next_delay()
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.tx.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::config::ConsulConfig;

    #[test]
    fn warns_once_per_kind() {
        let w = Warnings::default();
        let answer = |index, filtered| Indexed {
            value: (),
            index,
            filtered_by_acls: filtered,
        };
        assert_eq!(w.check("s", &answer(Some(3), false), true), 0);
        assert_eq!(
            w.check("s", &answer(None, false), false),
            0,
            "one-shot reads have no index to keep"
        );
        assert_eq!(w.check("s", &answer(None, true), true), 2);
        assert_eq!(w.check("s", &answer(None, true), true), 0, "once");
    }

    /// A fake agent answering every request with an empty list, no
    /// `X-Consul-Index` and the ACL-filtered header; counts requests.
    async fn unindexed_agent() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        counter.fetch_add(1, Ordering::SeqCst);
                        let reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                                     X-Consul-Results-Filtered-By-ACLs: true\r\n\
                                     Content-Length: 2\r\n\r\n[]";
                        if conn.write_all(reply.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), count)
    }

    #[tokio::test]
    async fn a_missing_index_backs_off_instead_of_spinning() {
        let (address, count) = unindexed_agent().await;
        let client = ConsulClient::new(&ConsulConfig::from_address(address)).unwrap();
        let mut w = watch(client, "web".into(), None);
        assert_eq!(w.next().await.unwrap().unwrap(), vec![]);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let queries = count.load(Ordering::SeqCst);
        // At one query per 50 ms it would be about 60.
        assert!((2..=15).contains(&queries), "{queries} queries in 3 s");
    }

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, Some(0)), 1, "never block on 0");
        assert_eq!(next_index(0, Some(17)), 17);
        assert_eq!(next_index(17, Some(17)), 17);
        assert_eq!(next_index(17, Some(5)), 0, "backwards resets");
        assert_eq!(
            next_index(5, Some(u64::MAX)),
            u64::MAX,
            "forward jumps are followed"
        );
        assert_eq!(next_index(u64::MAX, Some(3)), 0);
        assert_eq!(next_index(9, None), 0, "no index starts over");
    }
}
