//! The metrics this backend records (through the `metrics` facade), all
//! labelled `backend="etcd"`.

/// Counter: registrations granted a new lease and written again after etcd
/// lost them (lease expired, etcd restarted empty, unreachable past the TTL).
pub const REREGISTRATIONS_TOTAL: &str = "fyerrpc_registry_reregistrations_total";
/// Counter: entries under the prefix that did not decode as an instance and
/// were skipped.
pub const INVALID_ENTRIES_TOTAL: &str = "fyerrpc_registry_invalid_entries_total";
/// Counter: watches re-established after a disconnect, an error or a
/// compacted revision.
pub const WATCH_RESTARTS_TOTAL: &str = "fyerrpc_registry_watch_restarts_total";

/// The `backend` label value.
const BACKEND: &str = "etcd";

pub(crate) fn reregistered() {
    metrics::counter!(REREGISTRATIONS_TOTAL, "backend" => BACKEND).increment(1);
}

pub(crate) fn invalid_entry() {
    metrics::counter!(INVALID_ENTRIES_TOTAL, "backend" => BACKEND).increment(1);
}

pub(crate) fn watch_restarted() {
    metrics::counter!(WATCH_RESTARTS_TOTAL, "backend" => BACKEND).increment(1);
}
