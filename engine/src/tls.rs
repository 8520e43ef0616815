//! Mutual TLS between every node, client and ctl (rustls, TLS 1.3 or 1.2): who may connect,
//! and in which role.
//!
//! A cluster has its own certificate authority. Every process is given the CA, a
//! certificate the CA signed and the certificate's key (`--ca`, `--cert`, `--key`); both
//! sides of every connection present theirs and check the other's against the CA. A
//! certificate also says what its holder may be: each of its subject's organizational
//! units `neo-master`, `neo-storage`, `neo-admin` and `neo-client` is a role (one
//! certificate may carry several, for a host that runs several nodes: several OUs, or
//! one OU listing them separated by commas). A peer's hello
//! names its node type; a connection whose peer's certificate does not carry that role is
//! refused (`net`), so a client's certificate cannot identify as a storage, nor reach a
//! master's admin requests.
//!
//! Host names are not checked: the CA is the cluster's own, so a certificate it signed is
//! the membership; what the peer may do is its role, not its address (a storage reaches
//! masters by whatever address it was given, and a secondary master may take over at
//! another).
//!
//! API Boundary: everything here is loaded once, at start; a bad file is an error that
//! names the file and what is wrong with it, before the node listens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use wire::NodeType;

/// The CA, certificate and key files of a process (each PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster's CA certificate(s): a peer's certificate must chain to one.
    pub ca: PathBuf,
    /// This process's certificate, intermediates after it if any.
    pub cert: PathBuf,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The three files, from three options that must be given together or not at all.
    pub fn from_options(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (ca, cert, key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Ok(Some(TlsFiles { ca, cert, key })),
            (ca, cert, key) => {
                let missing: Vec<&str> = [("--ca", ca.is_none()), ("--cert", cert.is_none())]
                    .into_iter()
                    .chain([("--key", key.is_none())])
                    .filter(|(_, missing)| *missing)
                    .map(|(name, _)| name)
                    .collect();
                Err(TlsError::Incomplete(missing.join(", ")))
            }
        }
    }
}

/// The roles a certificate carries: a set of node types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

const NODE_TYPES: [NodeType; 4] =
    [NodeType::Master, NodeType::Storage, NodeType::Client, NodeType::Admin];

impl Roles {
    pub const NONE: Roles = Roles(0);

    pub fn of(node_types: &[NodeType]) -> Roles {
        Roles(node_types.iter().fold(0, |bits, &t| bits | Roles::bit(t)))
    }

    fn bit(node_type: NodeType) -> u8 {
        1 << (node_type as u8)
    }

    pub fn allows(self, node_type: NodeType) -> bool {
        self.0 & Roles::bit(node_type) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("no neo role");
        }
        let names: Vec<&str> =
            NODE_TYPES.into_iter().filter(|&t| self.allows(t)).map(role_name).collect();
        f.write_str(&names.join(", "))
    }
}

/// The organizational unit that gives a certificate the role of `node_type`.
pub fn role_name(node_type: NodeType) -> &'static str {
    match node_type {
        NodeType::Master => "neo-master",
        NodeType::Storage => "neo-storage",
        NodeType::Client => "neo-client",
        NodeType::Admin => "neo-admin",
    }
}

/// The roles a DER certificate's subject carries (none for one that does not parse).
pub fn roles_of(certificate: &[u8]) -> Roles {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate) else {
        return Roles::NONE;
    };
    let mut roles = Roles::NONE;
    for unit in parsed.subject().iter_organizational_unit() {
        let Ok(unit) = unit.as_str() else { continue };
        for word in unit.split(|c: char| c == ',' || c.is_whitespace()) {
            for node_type in NODE_TYPES {
                if word == role_name(node_type) {
                    roles.0 |= Roles::bit(node_type);
                }
            }
        }
    }
    roles
}

/// The roles and subject of a peer's certificate (rustls gives the chain, leaf first).
pub fn peer_roles(chain: Option<&[CertificateDer<'_>]>) -> (Roles, String) {
    match chain.and_then(<[_]>::first) {
        Some(leaf) => (roles_of(leaf), subject_of(leaf)),
        None => (Roles::NONE, "no certificate".to_owned()),
    }
}

/// The subject of a DER certificate, for messages.
pub fn subject_of(certificate: &[u8]) -> String {
    x509_parser::parse_x509_certificate(certificate)
        .map_or_else(|_| "an unreadable certificate".to_owned(), |(_, c)| c.subject().to_string())
}

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "TLS needs the CA, the certificate and its key together (--ca, --cert, --key; in \
         Python: ca, cert, key): {0} missing"
    )]
    Incomplete(String),
    #[error("{}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: no PEM certificate in it{}", path.display(), detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NoCertificate { path: PathBuf, detail: Option<String> },
    #[error("{}: no PEM private key in it ({detail})", path.display())]
    NoKey { path: PathBuf, detail: String },
    #[error("{}: the CA certificate cannot be used: {detail}", path.display())]
    BadCa { path: PathBuf, detail: String },
    #[error("{} and {}: the key is not the certificate's ({detail})", cert.display(), key.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf, detail: String },
    #[error("{}: the certificate is not valid with the CA in {}: {detail}", cert.display(), ca.display())]
    NotTrusted { cert: PathBuf, ca: PathBuf, detail: String },
    #[error(
        "{}: the certificate ({subject}) carries {roles}, and this process runs as {node_type}: \
         its subject needs the organizational unit (OU) {}",
        cert.display(), role_name(*node_type)
    )]
    MissingRole { cert: PathBuf, subject: String, roles: Roles, node_type: NodeType },
    #[error("TLS setup: {0}")]
    Setup(#[from] rustls::Error),
}

/// A process's TLS configuration: both ends (it accepts and it connects), and the roles
/// of its own certificate.
#[derive(Clone)]
pub struct Tls {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    roles: Roles,
    files: TlsFiles,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).field("roles", &self.roles).finish()
    }
}

/// ring: it builds with cc alone (aws-lc-rs wants cmake and a long C build on every fresh
/// machine); rustls marks it deprecated because it lacks post-quantum key exchange.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certificates: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certificates {
        Ok(certificates) if !certificates.is_empty() => Ok(certificates),
        Ok(_) => Err(TlsError::NoCertificate { path: path.to_owned(), detail: None }),
        Err(error) => {
            Err(TlsError::NoCertificate { path: path.to_owned(), detail: Some(error.to_string()) })
        }
    }
}

impl Tls {
    /// Loads and checks the files: the CA parses, the certificate chains to it and is
    /// valid now for both ends of a connection, the key is the certificate's.
    pub fn load(files: &TlsFiles) -> Result<Tls, TlsError> {
        let provider = provider();
        let ca = certificates(&files.ca)?;
        let mut roots = RootCertStore::empty();
        for certificate in ca {
            roots.add(certificate).map_err(|error| TlsError::BadCa {
                path: files.ca.clone(),
                detail: error.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let chain = certificates(&files.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|error| {
            TlsError::NoKey { path: files.key.clone(), detail: error.to_string() }
        })?;
        let mismatch = |detail: String| TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            detail,
        };
        let signing = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|error| mismatch(format!("the key cannot be used: {error}")))?;
        rustls::sign::CertifiedKey::new(chain.clone(), signing)
            .keys_match()
            .map_err(|error| mismatch(error.to_string()))?;

        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|error| TlsError::BadCa {
                    path: files.ca.clone(),
                    detail: error.to_string(),
                })?;
        let server_verifier = Arc::new(CaOnly {
            inner: rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::clone(&roots),
                Arc::clone(&provider),
            )
            .build()
            .map_err(|error| TlsError::BadCa {
                path: files.ca.clone(),
                detail: error.to_string(),
            })?,
        });
        // Our own certificate, checked as our peers will check it, now rather than at
        // each peer's first connection.
        let now = UnixTime::now();
        let not_trusted = |error: rustls::Error| TlsError::NotTrusted {
            cert: files.cert.clone(),
            ca: files.ca.clone(),
            detail: explain_error(&error),
        };
        client_verifier.verify_client_cert(&chain[0], &chain[1..], now).map_err(not_trusted)?;
        let any_name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        server_verifier
            .verify_server_cert(&chain[0], &chain[1..], &any_name, &[], now)
            .map_err(not_trusted)?;

        let versions = &[&rustls::version::TLS13, &rustls::version::TLS12];
        let server = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .dangerous()
            .with_custom_certificate_verifier(server_verifier)
            .with_client_auth_cert(chain.clone(), key)?;
        Ok(Tls {
            server: Arc::new(server),
            client: Arc::new(client),
            roles: roles_of(&chain[0]),
            files: files.clone(),
        })
    }

    /// `load`, then checks that the certificate lets this process be each of `node_types`.
    pub fn load_for(files: &TlsFiles, node_types: &[NodeType]) -> Result<Tls, TlsError> {
        let tls = Tls::load(files)?;
        for &node_type in node_types {
            tls.require(node_type)?;
        }
        Ok(tls)
    }

    /// An error unless this process's certificate carries the role of `node_type`.
    pub fn require(&self, node_type: NodeType) -> Result<(), TlsError> {
        if self.roles.allows(node_type) {
            return Ok(());
        }
        let subject = std::fs::read(&self.files.cert)
            .ok()
            .and_then(|pem| CertificateDer::pem_slice_iter(&pem).next()?.ok())
            .map_or_else(|| "?".to_owned(), |der| subject_of(&der));
        Err(TlsError::MissingRole {
            cert: self.files.cert.clone(),
            subject,
            roles: self.roles,
            node_type,
        })
    }

    /// The roles of this process's certificate.
    pub fn roles(&self) -> Roles {
        self.roles
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server)
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.client)
    }
}

/// The name a connecting side gives: an address (host names are not checked, see the
/// module's documentation).
pub fn server_name(address: std::net::SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(address.ip().into())
}

/// Checks a server's certificate against the CA, not against the name it was reached by.
#[derive(Debug)]
struct CaOnly {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain is checked first: a name error means the chain is good.
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A rustls error as a sentence an operator can act on.
pub fn explain_error(error: &rustls::Error) -> String {
    use rustls::{AlertDescription, Error};
    let hint = match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the certificate is not signed by the cluster's CA (--ca)"
        }
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the certificate has expired",
        Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "the certificate is not valid yet (is a clock wrong?)",
        Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        ) => {
            "the certificate's extended key usage must allow both serverAuth and clientAuth \
             (every node both accepts and makes connections)"
        }
        Error::NoCertificatesPresented => {
            "the peer presented no certificate: it runs without --cert (TLS is mutual here)"
        }
        Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            "the peer does not speak TLS: is TLS configured on this side only?"
        }
        Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied,
        ) => "the peer refused this side's certificate (signed by another CA? expired?)",
        Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the peer requires a certificate from this side (--cert, --key)"
        }
        _ => "",
    };
    if hint.is_empty() { error.to_string() } else { format!("{hint} ({error})") }
}

/// An I/O error from a TLS stream, explained when it carries a rustls error.
pub fn explain_io(error: &std::io::Error) -> Option<String> {
    let inner = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(explain_error(inner))
}

#[cfg(test)]
#[path = "tls_testing.rs"]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::testing::Authority;
    use super::*;

    #[test]
    fn a_certificate_carries_its_roles_and_a_node_needs_its_own() {
        let directory = tempfile::tempdir().unwrap();
        let ca = Authority::new(directory.path(), "ca");
        let files = ca.issue("host1", &[NodeType::Master, NodeType::Storage]);
        let tls = Tls::load(&files).unwrap();
        assert_eq!(tls.roles(), Roles::of(&[NodeType::Master, NodeType::Storage]));
        assert_eq!(tls.roles().to_string(), "neo-master, neo-storage");
        tls.require(NodeType::Storage).unwrap();
        let error = Tls::load_for(&files, &[NodeType::Admin]).unwrap_err().to_string();
        assert!(error.contains("carries neo-master, neo-storage"), "{error}");
        assert!(error.contains("needs the organizational unit (OU) neo-admin"), "{error}");
        let none = ca.issue("nobody", &[]);
        let error = Tls::load_for(&none, &[NodeType::Client]).unwrap_err().to_string();
        assert!(error.contains("carries no neo role"), "{error}");
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        let directory = tempfile::tempdir().unwrap();
        let ca = Authority::new(directory.path(), "ca");
        let other = Authority::new(directory.path(), "other-ca");
        let good = ca.issue("good", &[NodeType::Client]);
        let load = |files: &TlsFiles| Tls::load(files).unwrap_err().to_string();

        let missing = TlsFiles { cert: directory.path().join("nope.crt"), ..good.clone() };
        assert!(load(&missing).contains("nope.crt: No such file"), "{}", load(&missing));

        let garbage = directory.path().join("garbage.crt");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let error = load(&TlsFiles { cert: garbage.clone(), ..good.clone() });
        assert!(error.contains("no PEM certificate"), "{error}");
        let error = load(&TlsFiles { key: garbage, ..good.clone() });
        assert!(error.contains("no PEM private key"), "{error}");

        let foreign = other.issue("foreign", &[NodeType::Client]);
        let error = load(&TlsFiles { ca: good.ca.clone(), ..foreign.clone() });
        assert!(error.contains("not signed by the cluster's CA"), "{error}");

        let error = load(&TlsFiles { key: foreign.key.clone(), ..good.clone() });
        assert!(error.contains("the key is not the certificate's"), "{error}");

        let expired = ca.issue_with("expired", &[NodeType::Client], |params| {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        });
        let error = load(&expired);
        assert!(error.contains("has expired"), "{error}");

        let server_only = ca.issue_with("server-only", &[NodeType::Storage], |params| {
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        });
        let error = load(&server_only);
        assert!(error.contains("serverAuth and clientAuth"), "{error}");

        let error = TlsFiles::from_options(Some(good.ca.clone()), None, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "TLS needs the CA, the certificate and its key together (--ca, --cert, --key; in \
             Python: ca, cert, key): --cert, --key missing"
        );
        assert_eq!(TlsFiles::from_options(None, None, None).unwrap(), None);
    }
}
