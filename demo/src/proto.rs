//! The greet service, generated from `proto/hello.proto` at build time.
//!
//! The file declares no proto package, so the method paths are
//! `/GreetService/SayHello` and `/GreetService/GetGreetStats`, as in the
//! original example: any gRPC client generated from that file calls
//! `greet-server` unchanged.

#![allow(missing_docs)]

tonic::include_proto!("_");

pub use greet_service_client::GreetServiceClient;
pub use greet_service_server::{GreetService, GreetServiceServer};

/// The gRPC service name.
pub const SERVICE_NAME: &str = "GreetService";
/// The full path of `SayHello`.
pub const SAY_HELLO: &str = "/GreetService/SayHello";
/// The full path of `GetGreetStats`.
pub const GET_GREET_STATS: &str = "/GreetService/GetGreetStats";
