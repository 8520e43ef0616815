// Compiled into engine's unit tests (`tls::testing`) and its integration tests
// (`tests/common/certs.rs` includes this file): `engine` names this crate in both.
//! Certificates made on the fly for tests: a CA, and certificates it signs with the
//! roles asked for.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use wire::NodeType;

use engine::tls::{TlsFiles, role_name};

/// A CA that signs test certificates.
pub struct Authority {
    name: String,
    key: KeyPair,
    certificate: rcgen::Certificate,
    pub directory: PathBuf,
}

impl Authority {
    pub fn new(directory: &Path, name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        std::fs::write(directory.join(format!("{name}.pem")), certificate.pem()).unwrap();
        Authority { name: name.to_owned(), key, certificate, directory: directory.to_owned() }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.directory.join(format!("{}.pem", self.name))
    }

    /// A certificate for `name` with `roles`, valid from `not_before` to `not_after`
    /// (defaults: now, a year).
    pub fn issue(&self, name: &str, roles: &[NodeType]) -> TlsFiles {
        self.issue_with(name, roles, |_| {})
    }

    pub fn issue_with(
        &self,
        name: &str,
        roles: &[NodeType],
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> TlsFiles {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        // One OU listing the roles (rcgen keeps one value per attribute type).
        let roles: Vec<&str> = roles.iter().map(|&role| role_name(role)).collect();
        if !roles.is_empty() {
            params.distinguished_name.push(DnType::OrganizationalUnitName, roles.join(","));
        }
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.certificate, &self.key).unwrap();
        let cert = self.directory.join(format!("{name}.crt"));
        let key_path = self.directory.join(format!("{name}.key"));
        std::fs::write(&cert, certificate.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        TlsFiles { ca: self.ca_path(), cert, key: key_path }
    }
}
