//! Consecutive failures.
