//! How an [`Instance`] maps onto a Consul service and back (the table is in
//! the [crate docs](crate#how-an-instance-is-stored)).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use fyerrpc::instance::MAX_WEIGHT;
use fyerrpc::{Instance, Status};

use crate::config::MAX_HTTP_TIMEOUT;
use crate::wire::{
    go_duration, CheckDefinition, Service, ServiceEntry, ServiceRegistration, Weights,
    CONSUL_DEFAULT_WEIGHTS,
};

/// Meta key of the version.
pub const META_VERSION: &str = "version";
/// Meta key of the weight.
pub const META_WEIGHT: &str = "weight";
/// Meta key of the status.
pub const META_STATUS: &str = "status";
/// Metadata key whose comma-separated value becomes the service's tags.
pub const METADATA_TAGS: &str = "tags";
/// Meta key of the fyerrpc instance id (the Consul service id is qualified,
/// see [`service_id`]).
pub const META_ID: &str = "fyerrpc_id";
/// Meta key of the registration's nonce: a random value of one
/// registration, by which its keeper recognises its own entry.
pub const META_NONCE: &str = "fyerrpc_nonce";

const MAX_META_PAIRS: usize = 64;
const MAX_META_KEY: usize = 64;
const MAX_META_VALUE: usize = 512;

/// The Consul service id of an instance: `<service>:<version>:<id>`, so that
/// instances of different services (or versions) that share an id do not
/// replace each other on one agent.
///
/// ```
/// use fyerrpc::Instance;
/// use fyerrpc_registry_consul::service_id;
///
/// let pod = Instance::new("pod-7", "GreetService", "10.0.0.7:8001")?;
/// assert_eq!(service_id(&pod), "GreetService:v1:pod-7");
/// # Ok::<(), fyerrpc::InstanceError>(())
/// ```
pub fn service_id(instance: &Instance) -> String {
    format!(
        "{}:{}:{}",
        instance.service(),
        instance.version(),
        instance.id()
    )
}

/// The id of the TTL check of the Consul service `service_id`.
pub fn ttl_check_id(service_id: &str) -> String {
    format!("service:{service_id}")
}

/// The id of the HTTP check of the Consul service `service_id`.
pub fn http_check_id(service_id: &str) -> String {
    format!("service:{service_id}:http")
}

/// Something wrong with one entry, reported once per watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Problem {
    /// The Consul service id.
    pub(crate) id: String,
    /// What is wrong.
    pub(crate) what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "service id {:?}: {}", self.id, self.what)
    }
}

/// The checks to attach to a registration.
#[derive(Debug, Clone)]
pub(crate) struct Checks<'a> {
    pub(crate) ttl: Option<Duration>,
    pub(crate) http: Option<(&'a str, Duration)>,
    pub(crate) deregister_critical_after: Duration,
}

impl Checks<'_> {
    fn definitions(&self, id: &str, name: &str) -> Vec<CheckDefinition> {
        let reap = Some(go_duration(self.deregister_critical_after));
        let ttl = self.ttl.map(|ttl| CheckDefinition {
            check_id: ttl_check_id(id),
            name: format!("{name} keep-alive"),
            ttl: Some(go_duration(ttl)),
            status: Some("passing".into()),
            deregister_critical_service_after: reap.clone(),
            ..CheckDefinition::default()
        });
        // Passing from the start: the server registers once it is ready, so
        // it is discoverable at once instead of after the first poll.
        let http = self.http.map(|(url, interval)| CheckDefinition {
            check_id: http_check_id(id),
            name: format!("{name} HTTP health"),
            http: Some(url.to_owned()),
            interval: Some(go_duration(interval)),
            timeout: Some(go_duration(interval.min(MAX_HTTP_TIMEOUT))),
            status: Some("passing".into()),
            deregister_critical_service_after: reap.clone(),
            ..CheckDefinition::default()
        });
        ttl.into_iter().chain(http).collect()
    }
}

/// The agent registration of `instance` with `nonce`, and the metadata left
/// out of it.
pub(crate) fn registration(
    instance: &Instance,
    checks: &Checks<'_>,
    nonce: &str,
) -> (ServiceRegistration, Vec<Problem>) {
    let (mut meta, problems) = meta(instance);
    meta.insert(META_ID.to_owned(), instance.id().to_owned());
    meta.insert(META_NONCE.to_owned(), nonce.to_owned());
    let id = service_id(instance);
    let reg = ServiceRegistration {
        checks: checks.definitions(&id, instance.service()),
        id,
        name: instance.service().to_owned(),
        tags: tags(instance),
        address: instance.host().to_owned(),
        port: instance.port(),
        meta,
        weights: Some(Weights {
            passing: i64::from(instance.weight()),
            warning: 1,
        }),
    };
    (reg, problems)
}

fn tags(instance: &Instance) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    let listed = instance.meta(METADATA_TAGS).unwrap_or("").split(',');
    for tag in listed.map(str::trim).chain([instance.version()]) {
        if !tag.is_empty() && !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_owned());
        }
    }
    tags
}

fn meta(instance: &Instance) -> (BTreeMap<String, String>, Vec<Problem>) {
    let mut meta = BTreeMap::from([
        (META_VERSION.to_owned(), instance.version().to_owned()),
        (META_WEIGHT.to_owned(), instance.weight().to_string()),
        (
            META_STATUS.to_owned(),
            status_word(instance.status()).to_owned(),
        ),
    ]);
    let mut problems = Vec::new();
    for (key, value) in instance.metadata() {
        let why = if meta.contains_key(key) || key == META_ID || key == META_NONCE {
            Some("is reserved for the instance's own field")
        } else if !valid_meta_key(key) {
            Some("is not a valid Consul meta key ([A-Za-z0-9_-]{1,64}, no consul- prefix)")
        } else if value.len() > MAX_META_VALUE {
            Some("has a value longer than 512 bytes")
        } else if meta.len() + 2 >= MAX_META_PAIRS {
            Some("exceeds Consul's 64 meta pairs")
        } else {
            None
        };
        match why {
            Some(why) => problems.push(Problem {
                id: instance.id().to_owned(),
                what: format!("metadata key {:?} {why}; left out", truncated(key)),
            }),
            None => {
                meta.insert(key.clone(), value.clone());
            }
        }
    }
    (meta, problems)
}

fn valid_meta_key(key: &str) -> bool {
    (1..=MAX_META_KEY).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !key.starts_with("consul-")
}

fn status_word(status: Status) -> &'static str {
    match status {
        Status::Enabled => "enabled",
        Status::Disabled => "disabled",
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

/// One health entry read as an instance.
#[derive(Debug)]
pub(crate) struct Decoded {
    /// The instance.
    pub(crate) instance: Instance,
    /// Whether the entry carries a fyerrpc id (else the id is
    /// `<service id>@<node>`).
    pub(crate) own_id: bool,
    /// The node the entry runs on.
    pub(crate) node: String,
    /// What was ignored on the way.
    pub(crate) problems: Vec<Problem>,
}

/// The instance of one health entry with the problems met on the way, or
/// why the entry is no instance.
///
/// The instance id is `Meta.fyerrpc_id` (fyerrpc registrations); for other
/// services it is `<service id>@<node>`, since a Consul service id is unique
/// on one agent only (and is often just the service name).
pub(crate) fn decode(entry: &ServiceEntry) -> Result<Decoded, Problem> {
    let svc = &entry.service;
    let problem = |what: String| Problem {
        id: svc.id.clone(),
        what,
    };
    let address = address(entry).map_err(|why| problem(format!("{why}; skipped")))?;
    let mut meta = svc.meta.clone().unwrap_or_default();
    meta.remove(META_NONCE);
    let mut problems = Vec::new();
    let own = meta.remove(META_ID);
    let foreign_id = || {
        if entry.node.node.is_empty() {
            svc.id.clone()
        } else {
            format!("{}@{}", svc.id, entry.node.node)
        }
    };
    let (mut instance, own_id) = match own {
        Some(id) => match Instance::new(id.as_str(), svc.service.as_str(), address.as_str()) {
            Ok(i) => (i, true),
            Err(e) => {
                problems.push(problem(format!("meta {META_ID} ignored: {e}")));
                let i = Instance::new(foreign_id(), svc.service.as_str(), address)
                    .map_err(|e| problem(format!("{e}; skipped")))?;
                (i, false)
            }
        },
        None => {
            let i = Instance::new(foreign_id(), svc.service.as_str(), address)
                .map_err(|e| problem(format!("{e}; skipped")))?;
            (i, false)
        }
    };
    let mut ignore = |what: String| problems.push(problem(what));
    let mut version_tag = None;
    match meta.remove(META_VERSION) {
        Some(v) => match instance.clone().with_version(v.as_str()) {
            Ok(i) => instance = i,
            Err(e) => ignore(format!("meta version ignored: {e}")),
        },
        None => match version_from_tags(svc) {
            Ok(Some((tag, v))) => match instance.clone().with_version(v.as_str()) {
                Ok(i) => {
                    instance = i;
                    version_tag = Some(tag);
                }
                Err(e) => ignore(format!("version tag {tag:?} ignored: {e}")),
            },
            Ok(None) => {}
            Err(why) => ignore(why),
        },
    }
    instance = apply_weight(instance, svc, &mut ignore);
    meta.remove(META_WEIGHT);
    match meta.remove(META_STATUS).as_deref() {
        None | Some("enabled") => {}
        Some("disabled") => instance = instance.with_status(Status::Disabled),
        Some(other) => ignore(format!(
            "meta status {:?} ignored: expected enabled or disabled",
            truncated(other)
        )),
    }
    if !meta.contains_key(METADATA_TAGS) {
        let tags = foreign_tags(svc, instance.version(), version_tag.as_deref());
        if !tags.is_empty() {
            meta.insert(METADATA_TAGS.to_owned(), tags);
        }
    }
    for (k, v) in meta {
        instance = instance.with_metadata(k, v);
    }
    Ok(Decoded {
        instance,
        own_id,
        node: entry.node.node.clone(),
        problems,
    })
}

/// The version a foreign service's tags give (the tag and the version):
/// a `version=X` or `version:X` tag, else the one tag that looks like a
/// version (`v` and a digit, then letters, digits, `.`, `-`, `_`: `v2`,
/// `v1.4.0`). Several different candidates are an error.
fn version_from_tags(svc: &Service) -> Result<Option<(String, String)>, String> {
    let tags = svc.tags.iter().flatten();
    let explicit: Vec<(String, String)> = tags
        .clone()
        .filter_map(|t| {
            let v = t
                .strip_prefix("version=")
                .or_else(|| t.strip_prefix("version:"))?;
            Some((t.clone(), v.to_owned()))
        })
        .collect();
    let candidates = if explicit.is_empty() {
        tags.filter(|t| looks_like_version(t))
            .map(|t| (t.clone(), t.clone()))
            .collect()
    } else {
        explicit
    };
    let mut versions: Vec<&str> = candidates.iter().map(|(_, v)| v.as_str()).collect();
    versions.sort_unstable();
    versions.dedup();
    match versions.len() {
        0 => Ok(None),
        1 => Ok(candidates.into_iter().next()),
        _ => Err(format!(
            "tags name several versions ({}); none used",
            truncated(&versions.join(","))
        )),
    }
}

fn looks_like_version(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    bytes.next() == Some(b'v')
        && bytes.next().is_some_and(|b| b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// `host:port` of an entry: the service's address, else its node's.
fn address(entry: &ServiceEntry) -> Result<String, String> {
    let svc = &entry.service;
    let host = if svc.address.is_empty() {
        &entry.node.address
    } else {
        &svc.address
    };
    if host.is_empty() {
        return Err("no service or node address".into());
    }
    let port = u16::try_from(svc.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {} is not in 1..=65535", svc.port))?;
    Ok(if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// The tags of a service, without the version tag, comma separated.
fn foreign_tags(svc: &Service, version: &str, version_tag: Option<&str>) -> String {
    let tags: Vec<&str> = svc
        .tags
        .iter()
        .flatten()
        .map(String::as_str)
        .filter(|t| *t != version && Some(*t) != version_tag)
        .collect();
    tags.join(",")
}

/// The weight from `Meta.weight`, else from `Weights.Passing` unless those are
/// Consul's defaults, else the instance's default.
fn apply_weight(instance: Instance, svc: &Service, ignore: &mut dyn FnMut(String)) -> Instance {
    let with = |w: Option<u32>| w.and_then(|w| instance.clone().with_weight(w).ok());
    if let Some(raw) = svc.meta.as_ref().and_then(|m| m.get(META_WEIGHT)) {
        match with(raw.trim().parse().ok()) {
            Some(i) => return i,
            None => ignore(format!(
                "meta weight {:?} ignored: expected an integer in 1..={MAX_WEIGHT}",
                truncated(raw)
            )),
        }
    }
    match svc.weights {
        Some(w) if w != CONSUL_DEFAULT_WEIGHTS => match with(u32::try_from(w.passing).ok()) {
            Some(i) => i,
            None => {
                ignore(format!(
                    "Weights.Passing {} ignored: expected 1..={MAX_WEIGHT}",
                    w.passing
                ));
                instance
            }
        },
        _ => instance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Node;

    const CHECKS: Checks<'static> = Checks {
        ttl: Some(Duration::from_secs(10)),
        http: None,
        deregister_critical_after: Duration::from_secs(60),
    };

    /// What Consul answers for a registration, on node address 10.0.0.9.
    fn echo(reg: &ServiceRegistration) -> ServiceEntry {
        ServiceEntry {
            node: Node {
                node: "n".into(),
                address: "10.0.0.9".into(),
                datacenter: "dc1".into(),
            },
            service: Service {
                id: reg.id.clone(),
                service: reg.name.clone(),
                tags: Some(reg.tags.clone()),
                address: reg.address.clone(),
                port: i64::from(reg.port),
                meta: Some(reg.meta.clone()),
                weights: reg.weights.or(Some(CONSUL_DEFAULT_WEIGHTS)),
            },
            checks: vec![],
        }
    }

    fn foreign(id: &str, meta: &[(&str, &str)], weights: Weights) -> ServiceEntry {
        let mut e = echo(&ServiceRegistration {
            id: id.into(),
            name: "web".into(),
            port: 80,
            ..Default::default()
        });
        e.service.meta = Some(
            meta.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        e.service.weights = Some(weights);
        e
    }

    #[test]
    fn instances_round_trip() {
        let inst = Instance::new("a", "web", "127.0.0.1:8001")
            .unwrap()
            .with_version("v2")
            .unwrap()
            .with_weight(42)
            .unwrap()
            .with_metadata("zone", "z1")
            .with_metadata(METADATA_TAGS, "blue, green")
            .with_status(Status::Disabled);
        let (reg, problems) = registration(&inst, &CHECKS, "n0nce");
        assert!(problems.is_empty());
        assert_eq!(reg.tags, ["blue", "green", "v2"]);
        assert_eq!(
            reg.weights,
            Some(Weights {
                passing: 42,
                warning: 1
            })
        );
        assert_eq!(reg.id, "web:v2:a", "qualified by service and version");
        assert_eq!(reg.meta[META_ID], "a");
        assert_eq!(reg.meta[META_NONCE], "n0nce");
        assert_eq!(reg.checks.len(), 1);
        assert_eq!(reg.checks[0].check_id, "service:web:v2:a");
        let back = decode(&echo(&reg)).unwrap();
        assert!(back.problems.is_empty(), "{:?}", back.problems);
        assert!(back.own_id);
        assert_eq!(back.instance, inst, "the nonce is not metadata");
    }

    #[test]
    fn ipv6_addresses_round_trip() {
        let inst = Instance::new("a", "web", "[::1]:8001").unwrap();
        let (reg, _) = registration(&inst, &CHECKS, "n0nce");
        assert_eq!(reg.address, "::1");
        assert_eq!(decode(&echo(&reg)).unwrap().instance, inst);
    }

    #[test]
    fn invalid_metadata_is_left_out() {
        let mut inst = Instance::new("a", "web", "h:1")
            .unwrap()
            .with_metadata("weight", "7")
            .with_metadata("bad key", "x")
            .with_metadata("consul-x", "x")
            .with_metadata("long", "x".repeat(513));
        for i in 0..70 {
            inst = inst.with_metadata(format!("k{i:02}"), "v");
        }
        let (reg, problems) = registration(&inst, &CHECKS, "n0nce");
        assert_eq!(reg.meta.len(), 64);
        assert_eq!(reg.meta["weight"], "100");
        assert_eq!(problems.len(), 4 + 70 - 59, "{problems:#?}");
    }

    #[test]
    fn foreign_services_get_defaults() {
        let e = foreign("web1", &[], CONSUL_DEFAULT_WEIGHTS);
        let d = decode(&e).unwrap();
        let (i, problems) = (d.instance, d.problems);
        assert!(problems.is_empty());
        assert_eq!(i.id(), "web1@n", "qualified by the node");
        assert!(!d.own_id);
        assert_eq!(
            i.address(),
            "10.0.0.9:80",
            "empty address reads as the node's"
        );
        assert_eq!(i.version(), "v1");
        assert_eq!(i.weight(), 100);
        assert!(i.metadata().is_empty());

        let e = foreign(
            "web2",
            &[],
            Weights {
                passing: 5,
                warning: 1,
            },
        );
        assert_eq!(decode(&e).unwrap().instance.weight(), 5);

        let mut e = foreign("web3", &[], CONSUL_DEFAULT_WEIGHTS);
        e.service.tags = Some(vec!["a".into(), "b".into()]);
        assert_eq!(
            decode(&e).unwrap().instance.meta(METADATA_TAGS),
            Some("a,b")
        );
    }

    #[test]
    fn malformed_meta_is_ignored_and_reported() {
        let e = foreign(
            "web1",
            &[
                ("weight", "abc"),
                ("version", "a/b"),
                ("status", "sleepy"),
                ("zone", "z"),
            ],
            Weights {
                passing: 3,
                warning: 1,
            },
        );
        let d = decode(&e).unwrap();
        let (i, problems) = (d.instance, d.problems);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert_eq!(i.weight(), 3, "falls back to Weights.Passing");
        assert_eq!(i.version(), "v1");
        assert!(i.is_enabled());
        assert_eq!(i.meta("zone"), Some("z"));
        let e = foreign(
            "web2",
            &[("weight", "0")],
            Weights {
                passing: 99999,
                warning: 1,
            },
        );
        let d = decode(&e).unwrap();
        let (i, problems) = (d.instance, d.problems);
        assert_eq!((i.weight(), problems.len()), (100, 2));
    }

    #[test]
    fn foreign_version_tags_are_honoured() {
        let with_tags = |tags: &[&str]| {
            let mut e = foreign("web", &[], CONSUL_DEFAULT_WEIGHTS);
            e.service.tags = Some(tags.iter().map(|t| t.to_string()).collect());
            decode(&e).unwrap()
        };
        let d = with_tags(&["blue", "v2"]);
        assert_eq!(d.instance.version(), "v2");
        assert_eq!(d.instance.meta(METADATA_TAGS), Some("blue"));
        let d = with_tags(&["version=canary", "v3"]);
        assert_eq!(d.instance.version(), "canary", "an explicit tag wins");
        assert_eq!(d.instance.meta(METADATA_TAGS), Some("v3"));
        assert_eq!(with_tags(&["v1.4.0-rc1"]).instance.version(), "v1.4.0-rc1");
        for not_a_version in ["vip", "v", "version"] {
            assert_eq!(with_tags(&[not_a_version]).instance.version(), "v1");
        }
        let d = with_tags(&["v1", "v2"]);
        assert_eq!(d.instance.version(), "v1", "ambiguous: the default");
        assert_eq!(d.problems.len(), 1, "{:?}", d.problems);
        // Meta.version wins over tags.
        let mut e = foreign("web", &[("version", "v9")], CONSUL_DEFAULT_WEIGHTS);
        e.service.tags = Some(vec!["v2".into()]);
        assert_eq!(decode(&e).unwrap().instance.version(), "v9");
    }

    #[test]
    fn unusable_entries_are_skipped() {
        let mut no_port = foreign("a", &[], CONSUL_DEFAULT_WEIGHTS);
        no_port.service.port = 0;
        let mut big_port = foreign("b", &[], CONSUL_DEFAULT_WEIGHTS);
        big_port.service.port = 70_000;
        let bad_id = foreign("has space", &[], CONSUL_DEFAULT_WEIGHTS);
        let mut no_address = foreign("c", &[], CONSUL_DEFAULT_WEIGHTS);
        no_address.node.address.clear();
        for e in [no_port, big_port, bad_id, no_address] {
            let p = decode(&e).unwrap_err();
            assert!(p.what.contains("skipped"), "{p}");
        }
    }
}
