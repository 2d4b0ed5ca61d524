//! The metrics this backend records (through the `metrics` facade), all
//! labelled `backend="consul"`. Their names are fyerrpc's
//! ([`fyerrpc::metrics`]); the constants here are the same names, under the
//! names this crate has always exported.

pub use fyerrpc::metrics::{
    REGISTRY_INVALID_ENTRIES as INVALID_ENTRIES_TOTAL,
    REGISTRY_REREGISTRATIONS as REREGISTRATIONS_TOTAL,
};

/// The `backend` label value.
pub const BACKEND: &str = "consul";

pub(crate) fn describe() {
    metrics::describe_counter!(
        REREGISTRATIONS_TOTAL,
        "Registrations registered again after the registry lost them"
    );
    metrics::describe_counter!(
        INVALID_ENTRIES_TOTAL,
        "Registry entries skipped or partly ignored as invalid"
    );
}

pub(crate) fn reregistered() {
    metrics::counter!(REREGISTRATIONS_TOTAL, "backend" => BACKEND).increment(1);
}

pub(crate) fn invalid_entry() {
    metrics::counter!(INVALID_ENTRIES_TOTAL, "backend" => BACKEND).increment(1);
}
