//! Generates the greet service code from `proto/hello.proto` with a pure-Rust
//! protobuf compiler (protox), so building needs no `protoc`.

use std::error::Error;

const PROTO: &str = "proto/hello.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;
    Ok(())
}
