//! `tls_context` blocks → rustls configs. Reads the PEM files named by the config (paths as the
//! config layer resolved them); every error names the file and what is wrong with it.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::TlsError;
use crate::config::{AgentTlsConfig, ServerTlsConfig, TlsMinVersion};

/// The TLS versions offered at and above `min`.
fn versions(min: TlsMinVersion) -> &'static [&'static SupportedProtocolVersion] {
    static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    static TLS12_UP: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    match min {
        TlsMinVersion::V1_3 => &TLS13_ONLY,
        TlsMinVersion::V1_2 => &TLS12_UP,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's rustls config: its certificate chain and key and, when `ca_file` is set, client
/// certificates required and verified against that CA.
pub fn server_config(tls: &ServerTlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(tls.min_version))
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &tls.ca_file {
        Some(ca_file) => {
            let roots = load_roots(ca_file)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::BadFile {
                    what: "CA file",
                    file: ca_file.clone(),
                    reason: format!("cannot verify client certificates with it: {e}"),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let certs = load_certs("certificate chain file", &tls.cert_chain_file)?;
    let key = load_key(&tls.private_key_file)?;
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::KeyPair {
            cert: tls.cert_chain_file.clone(),
            key: tls.private_key_file.clone(),
            reason: e.to_string(),
        })?;
    Ok(Arc::new(config))
}

/// The agent's rustls config: server certificates verified against `ca_file` (system roots when
/// absent), and a client certificate when `cert_chain_file` and `private_key_file` are set.
pub fn client_config(tls: &AgentTlsConfig) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match &tls.ca_file {
        Some(ca_file) => load_roots(ca_file)?,
        None => system_roots()?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(tls.min_version))
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match (&tls.cert_chain_file, &tls.private_key_file) {
        (Some(cert_file), Some(key_file)) => {
            let certs = load_certs("certificate chain file", cert_file)?;
            let key = load_key(key_file)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError::KeyPair {
                    cert: cert_file.clone(),
                    key: key_file.clone(),
                    reason: e.to_string(),
                })?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError::Config(
                "cert_chain_file and private_key_file must be set together".into(),
            ))
        }
    };
    Ok(Arc::new(config))
}

/// The name the server's certificate is verified against: `server_name` when set, else the host
/// part of `server_address` (`host:port`, `[v6]:port`; an IP address is verified as an IP SAN).
pub fn server_name(
    tls: &AgentTlsConfig,
    server_address: &str,
) -> Result<ServerName<'static>, TlsError> {
    let name = match &tls.server_name {
        Some(name) => name.as_str(),
        None => host_of(server_address),
    };
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.to_string()))
}

/// `host` of `host:port` or `[v6]:port`; the whole string when there is no port.
fn host_of(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => address,
    }
}

fn read_file(what: &'static str, file: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|source| TlsError::ReadFile {
        what,
        file: file.to_string(),
        source,
    })
}

fn pem_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::NoItemsFound => "holds no PEM item".into(),
        other => format!("is not valid PEM: {other:?}"),
    }
}

/// Every certificate in a PEM file; at least one.
fn load_certs(what: &'static str, file: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(what, file)?;
    let bad = |reason: String| TlsError::BadFile {
        what,
        file: file.to_string(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(pem_reason(&e)))?;
    if certs.is_empty() {
        return Err(bad(
            "holds no certificate (expected \"-----BEGIN CERTIFICATE-----\")".into(),
        ));
    }
    Ok(certs)
}

/// The first private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn load_key(file: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key file";
    let bytes = read_file(what, file)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::BadFile {
        what,
        file: file.to_string(),
        reason: match e {
            pem::Error::NoItemsFound => "holds no private key (expected \"-----BEGIN PRIVATE \
                                         KEY-----\", RSA PRIVATE KEY or EC PRIVATE KEY)"
                .into(),
            other => pem_reason(&other),
        },
    })
}

/// The CA certificates of a PEM file as trust anchors.
fn load_roots(file: &str) -> Result<RootCertStore, TlsError> {
    let certs = load_certs("CA file", file)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsError::BadFile {
            what: "CA file",
            file: file.to_string(),
            reason: format!("certificate #{} is not a usable CA certificate: {e}", i + 1),
        })?;
    }
    Ok(roots)
}

/// The operating system's CA certificates (for an agent with no `ca_file`).
fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = if found.errors.is_empty() {
            "the system store is empty".to_string()
        } else {
            found
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(TlsError::SystemRoots(why));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_strips_the_port() {
        assert_eq!(host_of("tunnel.example.com:7070"), "tunnel.example.com");
        assert_eq!(host_of("10.0.0.1:7070"), "10.0.0.1");
        assert_eq!(host_of("[::1]:7070"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
        assert_eq!(host_of("::1"), "::1");
    }
}
