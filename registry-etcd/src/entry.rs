//! Decoding stored entries into instances, skipping the ones that do not
//! decode.

use fyerrpc::Instance;

use crate::metrics;

/// Decodes the entry at `key`, or logs a warning, counts it and returns
/// `None` when it is not a valid instance stored under its own key.
pub(crate) fn decode(prefix: &str, key: &[u8], value: &[u8]) -> Option<Instance> {
    let Ok(key) = std::str::from_utf8(key) else {
        tracing::warn!(key = %String::from_utf8_lossy(key), "skipping registry entry: key is not UTF-8");
        metrics::invalid_entry();
        return None;
    };
    match Instance::from_kv(prefix, key, value) {
        Ok(instance) => Some(instance),
        Err(error) => {
            tracing::warn!(key, %error, "skipping invalid registry entry");
            metrics::invalid_entry();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fyerrpc::instance::{instance_key, DEFAULT_PREFIX};

    #[test]
    fn decodes_valid_and_skips_invalid_entries() {
        let inst = Instance::new("a", "S", "127.0.0.1:1").unwrap();
        let key = instance_key(DEFAULT_PREFIX, &inst);
        let json = inst.to_json();
        assert_eq!(
            decode(DEFAULT_PREFIX, key.as_bytes(), json.as_bytes()),
            Some(inst)
        );
        assert_eq!(decode(DEFAULT_PREFIX, key.as_bytes(), b"garbage"), None);
        assert_eq!(
            decode(DEFAULT_PREFIX, b"/fyerrpc/services/S/v1/b", json.as_bytes()),
            None
        );
        assert_eq!(decode(DEFAULT_PREFIX, b"\xff", json.as_bytes()), None);
    }
}
