//! Error rate.
