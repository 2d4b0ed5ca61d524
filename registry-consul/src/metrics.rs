//! The metrics this backend records (through the `metrics` facade), all
//! labelled `backend="consul"`.

/// Counter: registrations the keeper had to register again because the
/// agent had lost them (agent restart, manual removal).
pub const REREGISTRATIONS_TOTAL: &str = "fyerrpc_registry_reregistrations_total";
/// Counter: entries read from Consul that were skipped, or whose malformed
/// meta was ignored.
pub const INVALID_ENTRIES_TOTAL: &str = "fyerrpc_registry_invalid_entries_total";
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
