//! [`Selector`]s: filters on version, metadata and status that choose which
//! instances of a snapshot the balancer may pick from, and their combinators.
//!
//! ```
//! use std::sync::Arc;
//! use fyerrpc::discovery::{apply, All, Fallback, MetadataEquals, Not, HasTag, Version};
//! use fyerrpc::Instance;
//!
//! let set = vec![
//!     Instance::new("a", "Greet", "10.0.0.1:80")?.with_version("v1.2")?.with_metadata("zone", "eu-1"),
//!     Instance::new("b", "Greet", "10.0.0.2:80")?.with_version("v1.3")?.with_metadata("zone", "us-1"),
//!     Instance::new("c", "Greet", "10.0.0.3:80")?.with_version("v2.0")?.with_metadata("zone", "eu-1")
//!         .with_metadata("tags", "canary,slow"),
//! ];
//! // v1.x, preferably in eu-1, never tagged slow.
//! let selector = All(vec![
//!     Arc::new(Version::new("v1.*")),
//!     Arc::new(Not(Arc::new(HasTag::new("slow")))),
//!     Arc::new(Fallback(Arc::new(MetadataEquals::new("zone", "eu-1")))),
//! ]);
//! let ids: Vec<_> = apply(&selector, &set).iter().map(|i| i.id().to_owned()).collect();
//! assert_eq!(ids, ["a"]);
//! # Ok::<(), fyerrpc::InstanceError>(())
//! ```

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use crate::instance::Instance;

/// The metadata key holding an instance's tags, comma-separated.
pub const TAGS_KEY: &str = "tags";
/// The metadata key [`AbSelector`] groups instances by, unless told otherwise.
pub const GROUP_KEY: &str = "group";

/// A filter on instances, applied to every snapshot of the instance set
/// before balancing (see [`apply`]).
///
/// Most selectors judge one instance at a time ([`select`](Self::select)).
/// Some judge the set as a whole ([`Fallback`]): they override
/// [`narrow`](Self::narrow), which [`apply`] and [`All`] call.
///
/// ```
/// use fyerrpc::discovery::{apply, Selector};
/// use fyerrpc::Instance;
///
/// /// Instances on loopback only.
/// #[derive(Debug)]
/// struct Loopback;
///
/// impl Selector for Loopback {
///     fn select(&self, instance: &Instance) -> bool {
///         instance.host() == "127.0.0.1"
///     }
/// }
///
/// let set = [
///     Instance::new("a", "Greet", "127.0.0.1:8001")?,
///     Instance::new("b", "Greet", "10.1.1.1:8001")?,
/// ];
/// assert_eq!(apply(&Loopback, &set), [set[0].clone()]);
/// # Ok::<(), fyerrpc::InstanceError>(())
/// ```
pub trait Selector: Send + Sync + fmt::Debug + 'static {
    /// Whether the instance is selected.
    fn select(&self, instance: &Instance) -> bool;

    /// Narrows a whole set: clears `keep[i]` for each instance `set[i]` it
    /// rejects (entries already false stay false; both slices have the same
    /// length). The default applies [`select`](Self::select) to every kept
    /// instance.
    fn narrow(&self, set: &[&Instance], keep: &mut [bool]) {
        for (keep, instance) in keep.iter_mut().zip(set) {
            *keep = *keep && self.select(instance);
        }
    }
}

/// The instances of `set` the selector keeps, in their order.
///
/// Works on owned instances and on shared ones (`&[Arc<Instance>]`).
pub fn apply<I: Borrow<Instance> + Clone>(selector: &dyn Selector, set: &[I]) -> Vec<I> {
    let refs: Vec<&Instance> = set.iter().map(Borrow::borrow).collect();
    let mut keep = vec![true; set.len()];
    selector.narrow(&refs, &mut keep);
    set.iter()
        .zip(keep)
        .filter(|(_, keep)| *keep)
        .map(|(instance, _)| instance.clone())
        .collect()
}

/// Selects instances whose version matches a pattern: an exact version
/// (`v1.2`), a prefix ending in `*` (`v1*` matches `v1`, `v10`, `v1.2`), or a
/// dotted prefix `v1.*`, which matches `v1` itself and `v1.<anything>` but
/// not `v10`. A lone `*` matches every version; a `*` anywhere but at the end
/// is an ordinary character.
///
/// ```
/// use fyerrpc::discovery::{Selector, Version};
/// use fyerrpc::Instance;
///
/// let v = |s: &str| Instance::new("a", "Greet", "h:1").unwrap().with_version(s).unwrap();
/// let v1 = Version::new("v1.*");
/// assert!(v1.select(&v("v1")) && v1.select(&v("v1.4.2")));
/// assert!(!v1.select(&v("v10")) && !v1.select(&v("v2.0")));
/// assert!(Version::new("v2").select(&v("v2")));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub String);

impl Version {
    /// A version pattern.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self(pattern.into())
    }

    /// Whether `version` matches the pattern.
    pub fn matches(&self, version: &str) -> bool {
        match self.0.strip_suffix('*') {
            None => version == self.0,
            Some(prefix) => {
                version.starts_with(prefix)
                    || prefix.strip_suffix('.').is_some_and(|base| version == base)
            }
        }
    }
}

impl Selector for Version {
    fn select(&self, instance: &Instance) -> bool {
        self.matches(instance.version())
    }
}

/// Selects instances whose metadata `key` equals `value` (zone, region ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataEquals {
    /// The metadata key.
    pub key: String,
    /// The required value.
    pub value: String,
}

impl MetadataEquals {
    /// Selects `metadata[key] == value`.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

impl Selector for MetadataEquals {
    fn select(&self, instance: &Instance) -> bool {
        instance.meta(&self.key) == Some(self.value.as_str())
    }
}

/// Selects instances whose metadata `key` is one of `values`: group
/// selection (`group in (blue|green)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataIn {
    /// The metadata key.
    pub key: String,
    /// The accepted values.
    pub values: Vec<String>,
}

impl MetadataIn {
    /// Selects `metadata[key]` in `values`.
    pub fn new<V: Into<String>>(
        key: impl Into<String>,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        Self {
            key: key.into(),
            values: values.into_iter().map(Into::into).collect(),
        }
    }
}

impl Selector for MetadataIn {
    fn select(&self, instance: &Instance) -> bool {
        instance
            .meta(&self.key)
            .is_some_and(|v| self.values.iter().any(|want| want == v))
    }
}

/// Selects instances carrying a tag: the metadata entry [`TAGS_KEY`]
/// (`tags`), a comma-separated list, contains it (surrounding spaces are
/// ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HasTag(pub String);

impl HasTag {
    /// Selects instances tagged `tag`.
    pub fn new(tag: impl Into<String>) -> Self {
        Self(tag.into())
    }
}

impl Selector for HasTag {
    fn select(&self, instance: &Instance) -> bool {
        instance
            .meta(TAGS_KEY)
            .is_some_and(|tags| tags.split(',').any(|t| t.trim() == self.0))
    }
}

/// Selects enabled instances (see [`Status`](crate::Status)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enabled;

impl Selector for Enabled {
    fn select(&self, instance: &Instance) -> bool {
        instance.is_enabled()
    }
}

/// Selects instances every selector selects. An empty list selects all.
///
/// As a set filter the selectors narrow the set in order, so a
/// [`Fallback`] in the list falls back to what the selectors before it kept.
#[derive(Debug, Clone, Default)]
pub struct All(pub Vec<Arc<dyn Selector>>);

impl Selector for All {
    fn select(&self, instance: &Instance) -> bool {
        self.0.iter().all(|s| s.select(instance))
    }

    fn narrow(&self, set: &[&Instance], keep: &mut [bool]) {
        for selector in &self.0 {
            selector.narrow(set, keep);
        }
    }
}

/// Selects instances at least one selector selects. An empty list selects
/// none. Judges instance by instance (a [`Fallback`] inside acts as its
/// inner selector).
#[derive(Debug, Clone, Default)]
pub struct Any(pub Vec<Arc<dyn Selector>>);

impl Selector for Any {
    fn select(&self, instance: &Instance) -> bool {
        self.0.iter().any(|s| s.select(instance))
    }
}

/// Selects instances the inner selector rejects. Judges instance by
/// instance.
#[derive(Debug, Clone)]
pub struct Not(pub Arc<dyn Selector>);

impl Selector for Not {
    fn select(&self, instance: &Instance) -> bool {
        !self.0.select(instance)
    }
}

/// A preference rather than a requirement: narrows the set with the inner
/// selector, unless that would leave no instance, in which case the set is
/// left as it was. Instance by instance (inside [`Any`] or [`Not`]) it is
/// the inner selector.
///
/// ```
/// use std::sync::Arc;
/// use fyerrpc::discovery::{apply, Fallback, MetadataEquals};
/// use fyerrpc::Instance;
///
/// let set = [Instance::new("a", "Greet", "h:1")?.with_metadata("zone", "us-1")];
/// let eu = Arc::new(MetadataEquals::new("zone", "eu-1"));
/// assert!(apply(&*eu, &set).is_empty());
/// assert_eq!(apply(&Fallback(eu), &set).len(), 1);
/// # Ok::<(), fyerrpc::InstanceError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Fallback(pub Arc<dyn Selector>);

impl Selector for Fallback {
    fn select(&self, instance: &Instance) -> bool {
        self.0.select(instance)
    }

    fn narrow(&self, set: &[&Instance], keep: &mut [bool]) {
        let mut narrowed = keep.to_vec();
        self.0.narrow(set, &mut narrowed);
        if narrowed.contains(&true) {
            keep.copy_from_slice(&narrowed);
        }
    }
}

/// A/B (or blue/green, canary) grouping: instances carry their group in a
/// metadata entry (`group=a`, `group=b` by default), and a client configured
/// for one group selects that group's instances. Instances with no group
/// entry are left out, unless [`with_shared_unlabelled`](Self::with_shared_unlabelled)
/// makes them serve every group.
///
/// Wrap it in a [`Fallback`] to keep calls flowing when a group has no
/// instance left.
///
/// ```
/// use fyerrpc::discovery::{AbSelector, Selector};
/// use fyerrpc::Instance;
///
/// let inst = |group: Option<&str>| {
///     let i = Instance::new("a", "Greet", "h:1").unwrap();
///     match group { Some(g) => i.with_metadata("group", g), None => i }
/// };
/// let b = AbSelector::new("b");
/// assert!(b.select(&inst(Some("b"))));
/// assert!(!b.select(&inst(Some("a"))) && !b.select(&inst(None)));
/// assert!(b.with_shared_unlabelled(true).select(&inst(None)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbSelector {
    /// The metadata key naming an instance's group (default [`GROUP_KEY`]).
    pub key: String,
    /// The group this client uses.
    pub group: String,
    /// Whether instances without a group entry serve every group
    /// (default false).
    pub shared_unlabelled: bool,
}

impl AbSelector {
    /// Selects the instances of `group`, by the metadata key [`GROUP_KEY`].
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            key: GROUP_KEY.to_owned(),
            group: group.into(),
            shared_unlabelled: false,
        }
    }
    /// Groups instances by another metadata key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = key.into();
        self
    }
    /// Sets whether instances without a group entry serve every group.
    pub fn with_shared_unlabelled(mut self, shared: bool) -> Self {
        self.shared_unlabelled = shared;
        self
    }
}

impl Selector for AbSelector {
    fn select(&self, instance: &Instance) -> bool {
        match instance.meta(&self.key) {
            Some(group) => group == self.group,
            None => self.shared_unlabelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Status;

    fn inst(id: &str, version: &str, meta: &[(&str, &str)]) -> Instance {
        let i = Instance::new(id, "Greet", "127.0.0.1:9000")
            .and_then(|i| i.with_version(version))
            .unwrap();
        meta.iter().fold(i, |i, (k, v)| i.with_metadata(*k, *v))
    }

    fn set() -> Vec<Instance> {
        vec![
            inst("a", "v1", &[("zone", "eu-1"), ("group", "a")]),
            inst(
                "b",
                "v1.2",
                &[("zone", "us-1"), ("group", "b"), ("tags", "canary")],
            ),
            inst("c", "v2", &[("zone", "eu-1"), ("tags", "slow, canary")]),
            inst("d", "v10", &[("zone", "ap-1"), ("group", "a")]).with_status(Status::Disabled),
        ]
    }

    fn ids(selector: &dyn Selector) -> Vec<String> {
        apply(selector, &set())
            .iter()
            .map(|i| i.id().to_owned())
            .collect()
    }

    fn arc(s: impl Selector) -> Arc<dyn Selector> {
        Arc::new(s)
    }

    #[test]
    fn version_patterns() {
        assert_eq!(ids(&Version::new("v1")), ["a"]);
        assert_eq!(ids(&Version::new("v1.*")), ["a", "b"]);
        assert_eq!(ids(&Version::new("v1*")), ["a", "b", "d"]);
        assert_eq!(ids(&Version::new("*")), ["a", "b", "c", "d"]);
        assert!(ids(&Version::new("v3")).is_empty());
        assert!(!Version::new("v*1").matches("v21"), "inner * is literal");
        assert!(Version::new("v*1").matches("v*1"));
    }

    #[test]
    fn metadata_selectors() {
        assert_eq!(ids(&MetadataEquals::new("zone", "eu-1")), ["a", "c"]);
        assert!(ids(&MetadataEquals::new("rack", "r1")).is_empty());
        assert_eq!(ids(&MetadataIn::new("zone", ["us-1", "ap-1"])), ["b", "d"]);
        assert!(ids(&MetadataIn::new("zone", Vec::<String>::new())).is_empty());
        assert_eq!(ids(&HasTag::new("canary")), ["b", "c"]);
        assert_eq!(ids(&HasTag::new("slow")), ["c"], "spaces are trimmed");
        assert!(ids(&HasTag::new("can")).is_empty(), "whole tags only");
        assert_eq!(ids(&Enabled), ["a", "b", "c"]);
    }

    #[test]
    fn combinators() {
        let eu = arc(MetadataEquals::new("zone", "eu-1"));
        let canary = arc(HasTag::new("canary"));
        assert_eq!(ids(&All(vec![eu.clone(), canary.clone()])), ["c"]);
        assert_eq!(ids(&Any(vec![eu.clone(), canary.clone()])), ["a", "b", "c"]);
        assert_eq!(ids(&Not(eu.clone())), ["b", "d"]);
        assert_eq!(ids(&All(vec![])), ["a", "b", "c", "d"]);
        assert!(ids(&Any(vec![])).is_empty());
        let nested = All(vec![arc(Enabled), arc(Not(arc(All(vec![eu, canary]))))]);
        assert_eq!(ids(&nested), ["a", "b"]);
    }

    #[test]
    fn ab_groups() {
        assert_eq!(ids(&AbSelector::new("a")), ["a", "d"]);
        assert_eq!(ids(&AbSelector::new("b")), ["b"]);
        assert_eq!(
            ids(&AbSelector::new("b").with_shared_unlabelled(true)),
            ["b", "c"]
        );
        assert_eq!(ids(&AbSelector::new("eu-1").with_key("zone")), ["a", "c"]);
        assert!(ids(&AbSelector::new("z")).is_empty());
    }

    #[test]
    fn fallback_keeps_the_set_when_the_selection_is_empty() {
        let nowhere = arc(MetadataEquals::new("zone", "mars"));
        assert!(ids(&*nowhere).is_empty());
        assert_eq!(ids(&Fallback(nowhere.clone())), ["a", "b", "c", "d"]);
        assert_eq!(ids(&Fallback(arc(HasTag::new("canary")))), ["b", "c"]);
        // Inside All it falls back to what the earlier selectors kept.
        let v1_prefer_mars = All(vec![arc(Version::new("v1.*")), arc(Fallback(nowhere))]);
        assert_eq!(ids(&v1_prefer_mars), ["a", "b"]);
        let v1_prefer_us = All(vec![
            arc(Version::new("v1.*")),
            arc(Fallback(arc(MetadataEquals::new("zone", "us-1")))),
        ]);
        assert_eq!(ids(&v1_prefer_us), ["b"]);
        // Instance by instance it is its inner selector.
        assert_eq!(ids(&Not(arc(Fallback(arc(Enabled))))), ["d"]);
    }

    #[test]
    fn apply_works_on_shared_instances() {
        let shared: Vec<Arc<Instance>> = set().into_iter().map(Arc::new).collect();
        let kept = apply(&Version::new("v2"), &shared);
        assert_eq!(kept.len(), 1);
        assert!(Arc::ptr_eq(&kept[0], &shared[2]));
        assert!(apply(&Enabled, &Vec::<Instance>::new()).is_empty());
    }
}
