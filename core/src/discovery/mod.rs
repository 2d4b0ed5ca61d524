//! Instance selection before balancing: [`Selector`]s filter every snapshot
//! of the instance set on version, metadata (zone, group, tags) and status,
//! compose with [`All`], [`Any`], [`Not`] and [`Fallback`], and parse from a
//! small expression language ([`parse_selector`]) for flags and
//! configuration.

mod expr;
mod selector;

pub use expr::{parse_selector, ParseError, ParseErrorKind};
pub use selector::{
    apply, AbSelector, All, Any, Enabled, Fallback, HasTag, MetadataEquals, MetadataIn, Not,
    Selector, Version, GROUP_KEY, TAGS_KEY,
};
