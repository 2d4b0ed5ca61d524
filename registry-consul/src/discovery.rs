//! Reading instances: one-shot health queries and the blocking-query watch
//! loop behind [`Registry::watch`](fyerrpc::Registry::watch).

use std::collections::HashSet;
use std::time::Duration;

use fyerrpc::registry::{canonicalize, channel_stream, RetryBackoff, WatchStream};
use fyerrpc::{Instance, RegistryError};
use tokio::sync::mpsc::Sender;
use tokio::time::Instant;

use crate::client::ConsulClient;
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
    pub(crate) fn instances(
        &mut self,
        entries: &[ServiceEntry],
        version: Option<&str>,
    ) -> Vec<Instance> {
        let mut problems = HashSet::new();
        let mut set = Vec::with_capacity(entries.len());
        for entry in entries {
            match decode(entry) {
                Ok((instance, found)) => {
                    problems.extend(found);
                    if version.is_none_or(|v| instance.version() == v) {
                        set.push(instance);
                    }
                }
                Err(problem) => {
                    problems.insert(problem);
                }
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

fn entry_service(entries: &[ServiceEntry]) -> &str {
    entries.first().map_or("", |e| e.service.service.as_str())
}

/// The passing instances of `service` now.
pub(crate) async fn discover(
    client: &ConsulClient,
    service: &str,
    version: Option<&str>,
) -> Result<Vec<Instance>, RegistryError> {
    let entries = client.health_service(service, true, None).await?;
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
/// jump, however large, is simply followed.
fn next_index(previous: u64, new: u64) -> u64 {
    if new < previous {
        0
    } else {
        new.max(1)
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
        let mut backoff = RetryBackoff::new(RETRY_BASE, RETRY_MAX);
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
                    index = next_index(index, answer.index);
                    backoff.reset();
                    let set = decoder.instances(&answer.value, self.version.as_deref());
                    if last.as_ref() != Some(&set) {
                        last = Some(set.clone());
                        if self.tx.send(Ok(set)).await.is_err() {
                            return;
                        }
                    }
                    (started + MIN_QUERY_INTERVAL).saturating_duration_since(Instant::now())
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
    use super::*;

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 0), 1, "never block on 0");
        assert_eq!(next_index(0, 17), 17);
        assert_eq!(next_index(17, 17), 17);
        assert_eq!(next_index(17, 5), 0, "backwards resets");
        assert_eq!(
            next_index(5, u64::MAX),
            u64::MAX,
            "forward jumps are followed"
        );
        assert_eq!(next_index(u64::MAX, 3), 0);
    }
}
