//! [`Snapshot`]: the decoded entries under one key range, at one revision.

use std::collections::{BTreeMap, HashMap};
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
    /// How many entries carry each instance id (more than one only when the
    /// range spans several versions that reuse an id).
    ids: HashMap<String, u32>,
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
        let entries: BTreeMap<Vec<u8>, Instance> = response
            .kvs()
            .iter()
            .filter_map(|e| Some((e.key().to_vec(), decode(prefix, e.key(), e.value())?)))
            .collect();
        let mut ids: HashMap<String, u32> = HashMap::new();
        for instance in entries.values() {
            *ids.entry(instance.id().to_owned()).or_default() += 1;
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            entries,
            ids,
            revision,
        })
    }

    /// The revision the snapshot was read at; a watch continues after it.
    pub(crate) fn revision(&self) -> i64 {
        self.revision
    }

    /// Applies watched changes: a put of a valid instance adds or replaces
    /// it, a put of garbage or a delete removes the key. Returns what changed,
    /// by instance id, in time proportional to the events.
    pub(crate) fn apply(&mut self, events: &[Event]) -> Changes {
        // id -> its entry now (`None`: gone), the last event of an id winning.
        let mut touched: BTreeMap<String, Option<Instance>> = BTreeMap::new();
        for event in events {
            let Some(kv) = event.kv() else { continue };
            let instance = match event.event_type() {
                EventType::Put => decode(&self.prefix, kv.key(), kv.value()),
                EventType::Delete => None,
            };
            match instance {
                Some(instance) => {
                    let id = instance.id().to_owned();
                    let old = self.entries.insert(kv.key().to_vec(), instance.clone());
                    match old {
                        Some(old) if old.id() == id => {}
                        Some(old) => self.forget(old.id(), &mut touched),
                        None => *self.ids.entry(id.clone()).or_default() += 1,
                    }
                    touched.insert(id, Some(instance));
                }
                None => {
                    if let Some(old) = self.entries.remove(kv.key()) {
                        self.forget(old.id(), &mut touched);
                    }
                }
            }
        }
        let mut changes = Changes::default();
        for (id, mut now) in touched {
            let count = self.ids.get(&id).copied().unwrap_or(0);
            if count > 1 || (now.is_none() && count > 0) {
                // Rare (one id in several versions): the last in key order
                // stands for the id, as in a whole set.
                now = self.entries.values().rev().find(|i| i.id() == id).cloned();
            }
            match now {
                Some(instance) => changes.upserted.push(instance),
                None => changes.removed.push(id),
            }
        }
        changes.upserted = canonicalize(changes.upserted);
        changes
    }

    /// One entry of `id` left.
    fn forget(&mut self, id: &str, touched: &mut BTreeMap<String, Option<Instance>>) {
        let left = match self.ids.get_mut(id) {
            Some(count) => {
                *count = count.saturating_sub(1);
                *count
            }
            None => 0,
        };
        if left == 0 {
            self.ids.remove(id);
        }
        // Resolved at the end of `apply` when another entry keeps the id.
        touched.insert(id.to_owned(), None);
    }

    /// The instances, in the canonical order.
    pub(crate) fn instances(&self) -> Vec<Instance> {
        canonicalize(self.entries.values().cloned().collect())
    }
}

/// What one batch of watch events changed, by instance id.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Changes {
    /// Entries added or replaced (canonical order).
    pub(crate) upserted: Vec<Instance>,
    /// Ids gone.
    pub(crate) removed: Vec<String>,
}

impl Changes {
    /// Whether nothing changed.
    pub(crate) fn is_empty(&self) -> bool {
        self.upserted.is_empty() && self.removed.is_empty()
    }
}
