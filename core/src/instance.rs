//! The [`Instance`] model: one running copy of a service, as registries store it.
//!
//! Key-value registries (etcd, and any other that stores opaque values) share one
//! documented layout and one JSON encoding, so that a Go or Rust writer and a Rust
//! reader agree:
//!
//! * key: `{prefix}/{service}/{version}/{id}`, with the default prefix
//!   [`DEFAULT_PREFIX`] = `/fyerrpc/services` (see [`instance_key`]);
//! * value: the instance as a JSON object (see [`Instance::to_json`]):
//!
//! ```json
//! {"id":"server-A","service":"GreetService","version":"v1",
//!  "address":"127.0.0.1:8001","weight":100,
//!  "metadata":{"zone":"a"},"status":"enabled"}
//! ```
//!
//! `weight`, `metadata` and `status` may be omitted (defaults: 100, empty,
//! `enabled`); unknown fields are ignored, so newer writers stay readable.
//! Decoding validates every field and returns an [`InstanceError`] for
//! garbage; it never panics.
//!
//! ```
//! use fyerrpc::Instance;
//!
//! let inst = Instance::new("server-A", "GreetService", "127.0.0.1:8001")?
//!     .with_version("v1")?
//!     .with_weight(50)?
//!     .with_metadata("zone", "eu-1");
//! let json = inst.to_json();
//! let back = Instance::from_json(json.as_bytes())?;
//! assert_eq!(inst, back);
//! assert!(Instance::from_json(b"{not json").is_err());
//! # Ok::<(), fyerrpc::InstanceError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Default key prefix under which key-value registries store instances.
pub const DEFAULT_PREFIX: &str = "/fyerrpc/services";
/// Default version of an instance that names none.
pub const DEFAULT_VERSION: &str = "v1";
/// Default balancing weight.
pub const DEFAULT_WEIGHT: u32 = 100;
/// Largest accepted balancing weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Longest accepted id, service name or version, in bytes.
const MAX_NAME_LEN: usize = 253;

/// Whether an instance takes new traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Takes traffic.
    #[default]
    Enabled,
    /// Stays registered but takes no new traffic (draining, maintenance).
    Disabled,
}

/// Why an instance, or its encoding, was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstanceError {
    /// The bytes are not a JSON instance object.
    #[error("instance is not valid JSON: {0}")]
    Json(String),
    /// A name field (id, service, version) is empty, too long or holds `/` or
    /// control characters.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidName {
        /// Which field.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The address is not `host:port`.
    #[error("invalid address {0:?}: expected host:port with a port in 1..=65535")]
    InvalidAddress(String),
    /// The weight is outside `1..=MAX_WEIGHT`.
    #[error("invalid weight {0}: expected 1..={MAX_WEIGHT}")]
    InvalidWeight(i64),
    /// The key does not follow `{prefix}/{service}/{version}/{id}`, or disagrees
    /// with the value stored under it.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The rejected key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// One running copy of a service.
///
/// Built with [`Instance::new`] and the `with_*` methods, which validate; fields
/// are read through accessors so an `Instance` is always valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Instance {
    id: String,
    service: String,
    version: String,
    address: String,
    weight: u32,
    metadata: BTreeMap<String, String>,
    status: Status,
}

/// The wire form: lenient on input types so that bad values get our own errors.
#[derive(Serialize, Deserialize)]
struct Wire {
    id: String,
    service: String,
    #[serde(default)]
    version: Option<String>,
    address: String,
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    status: Status,
}

impl Instance {
    /// A new enabled instance with version [`DEFAULT_VERSION`], weight
    /// [`DEFAULT_WEIGHT`] and no metadata.
    pub fn new(
        id: impl Into<String>,
        service: impl Into<String>,
        address: impl Into<String>,
    ) -> Result<Self, InstanceError> {
        let id = id.into();
        let service = service.into();
        let address = address.into();
        validate_name("id", &id)?;
        validate_name("service", &service)?;
        validate_address(&address)?;
        Ok(Self {
            id,
            service,
            version: DEFAULT_VERSION.to_owned(),
            address,
            weight: DEFAULT_WEIGHT,
            metadata: BTreeMap::new(),
            status: Status::Enabled,
        })
    }

    /// Sets the version, validating it.
    pub fn with_version(mut self, version: impl Into<String>) -> Result<Self, InstanceError> {
        let version = version.into();
        validate_name("version", &version)?;
        self.version = version;
        Ok(self)
    }

    /// Sets the balancing weight (`1..=MAX_WEIGHT`).
    pub fn with_weight(mut self, weight: u32) -> Result<Self, InstanceError> {
        validate_weight(i64::from(weight))?;
        self.weight = weight;
        Ok(self)
    }

    /// Adds one metadata entry (zone, group, tags ...).
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the status.
    pub fn with_status(mut self, status: Status) -> Self {
        self.status = status;
        self
    }

    /// The instance id, unique within its service.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The service name.
    pub fn service(&self) -> &str {
        &self.service
    }
    /// The version.
    pub fn version(&self) -> &str {
        &self.version
    }
    /// The address, `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }
    /// The host part of the address (without brackets for IPv6).
    pub fn host(&self) -> &str {
        split_host_port(&self.address).map(|(h, _)| h).unwrap_or("")
    }
    /// The port part of the address.
    pub fn port(&self) -> u16 {
        split_host_port(&self.address)
            .map(|(_, p)| p)
            .unwrap_or_default()
    }
    /// The balancing weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }
    /// The metadata map.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }
    /// One metadata value.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }
    /// The status.
    pub fn status(&self) -> Status {
        self.status
    }
    /// Whether the instance takes new traffic.
    pub fn is_enabled(&self) -> bool {
        self.status == Status::Enabled
    }
    /// The `http://host:port` URI a gRPC channel connects to.
    pub fn uri(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Encodes the instance as the shared JSON object.
    pub fn to_json(&self) -> String {
        let wire = Wire {
            id: self.id.clone(),
            service: self.service.clone(),
            version: Some(self.version.clone()),
            address: self.address.clone(),
            weight: Some(i64::from(self.weight)),
            metadata: self.metadata.clone(),
            status: self.status,
        };
        // Serializing a struct of strings and integers cannot fail.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Decodes and validates the shared JSON object.
    pub fn from_json(bytes: &[u8]) -> Result<Self, InstanceError> {
        let wire: Wire =
            serde_json::from_slice(bytes).map_err(|e| InstanceError::Json(e.to_string()))?;
        validate_name("id", &wire.id)?;
        validate_name("service", &wire.service)?;
        let version = wire.version.unwrap_or_else(|| DEFAULT_VERSION.to_owned());
        validate_name("version", &version)?;
        validate_address(&wire.address)?;
        let weight = match wire.weight {
            None => DEFAULT_WEIGHT,
            Some(w) => validate_weight(w)?,
        };
        Ok(Self {
            id: wire.id,
            service: wire.service,
            version,
            address: wire.address,
            weight,
            metadata: wire.metadata,
            status: wire.status,
        })
    }

    /// Decodes a value read under `key` and checks that the key agrees with it
    /// (`{prefix}/{service}/{version}/{id}`).
    pub fn from_kv(prefix: &str, key: &str, value: &[u8]) -> Result<Self, InstanceError> {
        let inst = Self::from_json(value)?;
        let expected = instance_key(prefix, &inst);
        if expected != key {
            return Err(InstanceError::InvalidKey {
                key: key.to_owned(),
                reason: format!("the value belongs under {expected:?}"),
            });
        }
        Ok(inst)
    }
}

impl fmt::Display for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}@{}",
            self.service, self.version, self.id, self.address
        )
    }
}

/// The key prefix of a service (and optionally one version), ending in `/`:
/// `{prefix}/{service}/` or `{prefix}/{service}/{version}/`.
pub fn service_prefix(prefix: &str, service: &str, version: Option<&str>) -> String {
    let prefix = prefix.trim_end_matches('/');
    match version {
        Some(v) => format!("{prefix}/{service}/{v}/"),
        None => format!("{prefix}/{service}/"),
    }
}

/// The key of one instance: `{prefix}/{service}/{version}/{id}`.
pub fn instance_key(prefix: &str, instance: &Instance) -> String {
    format!(
        "{}{}",
        service_prefix(prefix, instance.service(), Some(instance.version())),
        instance.id()
    )
}

fn validate_name(field: &'static str, value: &str) -> Result<(), InstanceError> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > MAX_NAME_LEN {
        Some("is too long")
    } else if value.contains('/') {
        Some("must not contain '/'")
    } else if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("must not contain whitespace or control characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(InstanceError::InvalidName {
            field,
            value: value.chars().take(64).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate_weight(w: i64) -> Result<u32, InstanceError> {
    match u32::try_from(w) {
        Ok(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(w),
        _ => Err(InstanceError::InvalidWeight(w)),
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6), validating both parts.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    if let Ok(sa) = address.parse::<SocketAddr>() {
        let port = sa.port();
        let host = address.rsplit_once(':')?.0;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        return (port != 0).then_some((host, port));
    }
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let valid_host = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    (valid_host && port != 0).then_some((host, port))
}

fn validate_address(address: &str) -> Result<(), InstanceError> {
    split_host_port(address)
        .map(|_| ())
        .ok_or_else(|| InstanceError::InvalidAddress(address.chars().take(128).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst() -> Instance {
        Instance::new("a", "Greet", "127.0.0.1:8001").unwrap()
    }

    #[test]
    fn round_trips_through_json() {
        let i = inst()
            .with_weight(7)
            .unwrap()
            .with_metadata("zone", "z1")
            .with_status(Status::Disabled)
            .with_version("v2")
            .unwrap();
        assert_eq!(Instance::from_json(i.to_json().as_bytes()).unwrap(), i);
    }

    #[test]
    fn defaults_apply_to_missing_fields() {
        let i = Instance::from_json(br#"{"id":"x","service":"S","address":"h:1"}"#).unwrap();
        assert_eq!(i.weight(), DEFAULT_WEIGHT);
        assert_eq!(i.version(), DEFAULT_VERSION);
        assert_eq!(i.status(), Status::Enabled);
    }

    #[test]
    fn rejects_garbage() {
        let bad: &[&[u8]] = &[
            b"",
            b"null",
            b"{}",
            b"\xff\xfe",
            br#"{"id":"","service":"S","address":"h:1"}"#,
            br#"{"id":"a/b","service":"S","address":"h:1"}"#,
            br#"{"id":"a","service":"S","address":"nope"}"#,
            br#"{"id":"a","service":"S","address":"h:0"}"#,
            br#"{"id":"a","service":"S","address":"h:70000"}"#,
            br#"{"id":"a","service":"S","address":"h:1","weight":0}"#,
            br#"{"id":"a","service":"S","address":"h:1","weight":-3}"#,
            br#"{"id":"a","service":"S","address":"h:1","weight":99999999999}"#,
            br#"{"id":"a","service":"S","address":"h:1","status":"sleepy"}"#,
            br#"{"id":"a","service":"S","address":"h:1","metadata":{"k":1}}"#,
            br#"{"id":7,"service":"S","address":"h:1"}"#,
        ];
        for b in bad {
            assert!(
                Instance::from_json(b).is_err(),
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn addresses() {
        for ok in ["127.0.0.1:1", "[::1]:8080", "localhost:8001", "a-b.c:65535"] {
            assert!(split_host_port(ok).is_some(), "{ok}");
        }
        for bad in ["", ":1", "h:", "h", "h:x", "a b:1", "h:-1", "[::1]:0"] {
            assert!(split_host_port(bad).is_none(), "{bad}");
        }
        assert_eq!(Instance::new("i", "s", "[::1]:9").unwrap().host(), "::1");
    }

    #[test]
    fn keys_follow_the_layout() {
        let i = inst();
        assert_eq!(
            instance_key(DEFAULT_PREFIX, &i),
            "/fyerrpc/services/Greet/v1/a"
        );
        assert_eq!(service_prefix("/p/", "Greet", None), "/p/Greet/");
        assert!(Instance::from_kv(
            DEFAULT_PREFIX,
            "/fyerrpc/services/Greet/v1/a",
            i.to_json().as_bytes()
        )
        .is_ok());
        assert!(Instance::from_kv(
            DEFAULT_PREFIX,
            "/fyerrpc/services/Greet/v1/b",
            i.to_json().as_bytes()
        )
        .is_err());
    }
}
