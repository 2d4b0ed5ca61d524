//! Makes a throw-away CA, a server certificate for `localhost`, `127.0.0.1`
//! and `::1`, and a client certificate, all signed by the CA, for running the
//! demo cluster over mutual TLS without openssl (the PowerShell script uses
//! it; `start_cluster.sh --tls` uses openssl when it is there).
//!
//! ```sh
//! cargo run -p fyerrpc-demo --example make_certs -- scripts/tls
//! ```
//!
//! Writes `ca.pem`, `server.pem`, `server.key`, `client.pem` and `client.key`
//! into the folder (created if missing). Nothing in it is secret beyond the
//! cluster it is made for.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

fn main() -> ExitCode {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: make_certs DIR");
        return ExitCode::from(2);
    };
    match make(&dir) {
        Ok(()) => {
            println!("certificates for mutual TLS in {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("make_certs: {e}");
            ExitCode::FAILURE
        }
    }
}

fn make(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "fyerrpc demo CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |name: &str,
                common_name: &str,
                sans: Vec<SanType>,
                usage: ExtendedKeyUsagePurpose|
     -> Result<(), Box<dyn std::error::Error>> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer)?;
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem())?;
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem())?;
        Ok(())
    };
    leaf(
        "server",
        "localhost",
        vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ],
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    leaf(
        "client",
        "greet-client",
        Vec::new(),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    Ok(())
}
