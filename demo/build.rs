//! Generates the greet service code from `proto/hello.proto` with a pure-Rust
//! protobuf compiler (protox), so building needs no `protoc`.
//!
//! For the tests it also generates a client from the original example's
//! file (`tests/fixtures/original_hello.proto`) into `$OUT_DIR/original/`, to
//! show that clients built from it call our server unchanged.

use std::error::Error;
use std::path::PathBuf;

const PROTO: &str = "proto/hello.proto";
const ORIGINAL: &str = "tests/fixtures/original_hello.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    println!("cargo:rerun-if-changed={ORIGINAL}");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        .compile_fds(descriptors)?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("original");
    std::fs::create_dir_all(&out)?;
    let original = protox::compile([ORIGINAL], ["tests/fixtures"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .out_dir(out)
        .emit_rerun_if_changed(false)
        .compile_fds(original)?;
    Ok(())
}
