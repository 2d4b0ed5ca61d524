//! The JSON bodies of the Consul HTTP API endpoints this crate uses, as
//! documented by Consul (field names in Consul's PascalCase).
//!
//! Read types are lenient: every field has a default and numbers are read
//! wide, so one odd entry written by another tool is judged on its own
//! (and skipped) instead of failing the whole answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `Weights` of a service: its DNS SRV and balancing weight when passing and
/// when warning. Consul fills in `{Passing: 1, Warning: 1}` when a service
/// names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Weights {
    /// Weight while every check passes.
    #[serde(default)]
    pub passing: i64,
    /// Weight while a check warns.
    #[serde(default)]
    pub warning: i64,
}

/// Consul's default weights, meaning "none given".
pub const CONSUL_DEFAULT_WEIGHTS: Weights = Weights {
    passing: 1,
    warning: 1,
};

/// A check definition inside a service registration.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckDefinition {
    /// Check id, unique on the agent.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Human-readable name.
    pub name: String,
    /// TTL of a TTL check, as a Go duration (`"10s"`).
    #[serde(rename = "TTL", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// URL of an HTTP check.
    #[serde(rename = "HTTP", skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Interval of an HTTP check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Timeout of one HTTP check poll.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Initial status (`passing`, `warning`, `critical`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Remove the service after the check has been critical this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deregister_critical_service_after: Option<String>,
}

/// The body of `PUT /v1/agent/service/register`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRegistration {
    /// Service id, unique on the agent.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub name: String,
    /// Tags.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Address; empty means the node's address.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// Port; 0 means none.
    #[serde(skip_serializing_if = "is_zero")]
    pub port: u16,
    /// Metadata: keys `[A-Za-z0-9_-]{1,64}`, values up to 512 bytes.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
    /// Weights; Consul's defaults when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<Weights>,
    /// Health checks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckDefinition>,
}

fn is_zero(p: &u16) -> bool {
    *p == 0
}

/// The node part of a health entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Node {
    /// Node name.
    pub node: String,
    /// Node address, used when the service names none.
    pub address: String,
    /// Datacenter of the node.
    pub datacenter: String,
}

/// The service part of a health entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Service {
    /// Service id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Tags (`null` when none).
    pub tags: Option<Vec<String>>,
    /// Address; empty means the node's.
    pub address: String,
    /// Port, read wide so that a bad value is reported, not fatal.
    pub port: i64,
    /// Metadata (`null` when none).
    pub meta: Option<BTreeMap<String, String>>,
    /// Weights.
    pub weights: Option<Weights>,
}

/// The answer of `GET /v1/agent/service/<id>`: the agent's own definition
/// of one service (the fields this crate reads).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AgentService {
    /// Service id.
    #[serde(rename = "ID")]
    pub id: String,
    /// Service name.
    pub service: String,
    /// Metadata (`null` when none).
    pub meta: Option<BTreeMap<String, String>>,
}

/// A check in a health entry.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct HealthCheck {
    /// Check id.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// Check name.
    pub name: String,
    /// `passing`, `warning` or `critical`.
    pub status: String,
    /// The service the check belongs to (empty for node checks).
    #[serde(rename = "ServiceID")]
    pub service_id: String,
}

/// One element of `GET /v1/health/service/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceEntry {
    /// The node the service runs on.
    pub node: Node,
    /// The service.
    pub service: Service,
    /// Node and service checks.
    pub checks: Vec<HealthCheck>,
}

/// Status of a TTL check set through the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// `passing`.
    Passing,
    /// `warning`.
    Warning,
    /// `critical`.
    Critical,
}

impl CheckStatus {
    /// The word of the `/v1/agent/check/{pass,warn,fail}` endpoint.
    pub(crate) fn endpoint(self) -> &'static str {
        match self {
            Self::Passing => "pass",
            Self::Warning => "warn",
            Self::Critical => "fail",
        }
    }
}

/// A duration as Consul (Go) parses it, in whole milliseconds (at least 1).
pub fn go_duration(d: std::time::Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_entries_leniently() {
        let json = br#"[{"Node":{"Node":"n1","Address":"10.0.0.1"},
            "Service":{"ID":"web1","Service":"web","Tags":null,"Address":"",
                       "Port":80,"Meta":null,"Weights":{"Passing":1,"Warning":1},
                       "Unknown":true},
            "Checks":[{"CheckID":"serfHealth","Status":"passing"}]},
            {"Service":{"ID":"odd","Port":99999999}}]"#;
        let entries: Vec<ServiceEntry> = serde_json::from_slice(json).unwrap();
        assert_eq!(entries[0].node.address, "10.0.0.1");
        assert_eq!(entries[0].service.weights, Some(CONSUL_DEFAULT_WEIGHTS));
        assert_eq!(entries[1].service.port, 99_999_999);
    }

    #[test]
    fn writes_registrations_in_consul_case() {
        let r = ServiceRegistration {
            id: "a".into(),
            name: "S".into(),
            port: 80,
            checks: vec![CheckDefinition {
                check_id: "service:a".into(),
                ttl: Some(go_duration(std::time::Duration::from_secs(2))),
                ..Default::default()
            }],
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["ID"], "a");
        assert_eq!(v["Port"], 80);
        assert_eq!(v["Checks"][0]["CheckID"], "service:a");
        assert_eq!(v["Checks"][0]["TTL"], "2000ms");
        assert!(v.get("Meta").is_none());
    }
}
