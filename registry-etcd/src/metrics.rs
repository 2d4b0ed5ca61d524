//! The metrics this backend records (through the `metrics` facade), all
//! labelled `backend="etcd"`. Their names are fyerrpc's
//! ([`fyerrpc::metrics`]); the constants here are the same names, under the
//! names this crate has always exported.

pub use fyerrpc::metrics::{
    REGISTRY_INVALID_ENTRIES as INVALID_ENTRIES_TOTAL,
    REGISTRY_REREGISTRATIONS as REREGISTRATIONS_TOTAL,
    REGISTRY_WATCH_RESTARTS as WATCH_RESTARTS_TOTAL,
};

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
