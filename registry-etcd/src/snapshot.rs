//! [`Snapshot`]: the decoded entries under one key range, at one revision.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, Event, EventType, GetOptions};
use fyerrpc::registry::canonicalize;
use fyerrpc::{Instance, RegistryError};

use crate::entry::decode;
use crate::members::{Members, Patience};

/// The valid instances under a key range, by key.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    /// The registry's prefix, against which keys are checked.
    prefix: String,
    entries: BTreeMap<Vec<u8>, Instance>,
    /// The store revision the entries were read at.
    revision: i64,
}

impl Snapshot {
    /// Reads every entry under `range` (a key prefix below the registry's
    /// `prefix`), skipping the invalid ones.
    pub(crate) async fn read(
        members: &Members,
        prefix: &str,
        range: &str,
        timeout: Duration,
    ) -> Result<Self, RegistryError> {
        let response = members
            .call(Patience::request(timeout), |client: Client| async move {
                let options = GetOptions::new().with_prefix();
                client.kv_client().get(range, Some(options)).await
            })
            .await?
            .value;
        let revision = response.header().map_or(0, |h| h.revision());
        let entries = response
            .kvs()
            .iter()
            .filter_map(|e| Some((e.key().to_vec(), decode(prefix, e.key(), e.value())?)))
            .collect();
        Ok(Self {
            prefix: prefix.to_owned(),
            entries,
            revision,
        })
    }

    /// The revision the snapshot was read at; a watch continues after it.
    pub(crate) fn revision(&self) -> i64 {
        self.revision
    }

    /// Applies watched changes: a put of a valid instance adds or replaces
    /// it, a put of garbage or a delete removes the key.
    pub(crate) fn apply(&mut self, events: &[Event]) {
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let instance = match event.event_type() {
                EventType::Put => decode(&self.prefix, kv.key(), kv.value()),
                EventType::Delete => None,
            };
            match instance {
                Some(instance) => self.entries.insert(kv.key().to_vec(), instance),
                None => self.entries.remove(kv.key()),
            };
        }
    }

    /// The instances, in the canonical order.
    pub(crate) fn instances(&self) -> Vec<Instance> {
        canonicalize(self.entries.values().cloned().collect())
    }
}
