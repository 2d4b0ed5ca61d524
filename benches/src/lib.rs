//! Benchmarks of fyerrpc: see benches/.
