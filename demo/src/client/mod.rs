//! `greet-client`: scenarios against the greet cluster.
