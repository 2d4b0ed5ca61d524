//! The fyerrpc greet cluster.
pub mod proto {
    //! Code generated from `proto/hello.proto`.
    #![allow(missing_docs)]
    tonic::include_proto!("_");
}
