//! shim
#![allow(missing_docs)]
pub trait Selector: Send + Sync + std::fmt::Debug + 'static {
    fn select(&self, i: &crate::Instance) -> bool;
}
