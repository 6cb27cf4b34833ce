//! A test PKI made at run time: a CA and the certificates it signs (etcd members' server
//! and peer certificates, clients' certificates with a given common name), written as PEM
//! files into a directory of the test's, keys with mode 0600. Generated in pure Rust
//! (`rcgen`, ECDSA P-256 with SHA-256, X.509 v3 with the extensions Go's `crypto/tls` and
//! rustls/webpki insist on), so no `openssl` CLI is needed.
//!
//! A second [`Pki`] is a stranger's CA: its certificates must be refused by whoever trusts
//! only the first. [`Pki::expired_client`] makes a certificate the CA did sign but whose
//! validity ended long ago.
//!
//! Errors are `Err(String)` saying what could not be made or written; tests turn them
//! into failures.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFiles {
    /// The certificate (`NAME.crt`).
    pub cert: PathBuf,
    /// The private key (`NAME.key`, PKCS#8, mode 0600).
    pub key: PathBuf,
}

/// What a certificate is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A member's server or peer side: `127.0.0.1` (an IP address entry) and `localhost`
    /// (a DNS entry) as subject alternative names, what a client on the machine dials; and
    /// both `serverAuth` and `clientAuth` (a member dials its peers with its peer
    /// certificate, and etcd's gRPC gateway dials its own server with the server one).
    Server,
    /// A client: `clientAuth` only, no alternative names.
    Client,
}

/// A CA whose key lives in memory and whose certificate is `DIR/ca.crt`; it writes the
/// certificates it signs into `DIR`.
#[derive(Clone, Debug)]
pub struct Pki {
    dir: PathBuf,
    ca_params: CertificateParams,
    ca_key: String,
    ca_file: PathBuf,
}

impl Pki {
    /// A new CA called `name` (its common name), written to `dir` (created, mode 0700, if
    /// missing): `ca.crt`, and `ca.key` (mode 0600).
    pub fn new(dir: &Path, name: &str) -> Result<Pki, String> {
        if !dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = params
            .clone()
            .self_signed(&key)
            .map_err(|e| format!("cannot sign the CA `{name}`: {e}"))?;
        let ca_file = dir.join("ca.crt");
        write(&ca_file, &ca.pem(), 0o644)?;
        write(&dir.join("ca.key"), &key.serialize_pem(), 0o600)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            ca_params: params,
            ca_key: key.serialize_pem(),
            ca_file,
        })
    }

    /// The CA certificate (PEM), what a peer that trusts this PKI is given.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The directory the files are written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A server certificate with the common name `name` and `127.0.0.1` and `localhost` as
    /// alternative names, usable as a client certificate too (etcd members: both their
    /// client-facing and their peer side): `DIR/NAME.crt` and `DIR/NAME.key`.
    pub fn server(&self, name: &str) -> Result<CertFiles, String> {
        self.issue(name, Role::Server, false)
    }

    /// A client certificate with the common name `cn` (what etcd would take for the user
    /// name, were its authentication on): `DIR/CN.crt` and `DIR/CN.key`.
    pub fn client(&self, cn: &str) -> Result<CertFiles, String> {
        self.issue(cn, Role::Client, false)
    }

    /// A client certificate signed by this CA that expired on 2001-01-01 (valid from
    /// 2000-01-01): `DIR/CN.crt` and `DIR/CN.key`.
    pub fn expired_client(&self, cn: &str) -> Result<CertFiles, String> {
        self.issue(cn, Role::Client, true)
    }

    fn issue(&self, name: &str, role: Role, expired: bool) -> Result<CertFiles, String> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "`{name}` cannot name a certificate file (letters, digits, `-`, `_`, `.`)"
            ));
        }
        let fail = |e: rcgen::Error| format!("cannot make the certificate `{name}`: {e}");
        let ca_key = KeyPair::from_pem(&self.ca_key).map_err(fail)?;
        let ca: Certificate = self.ca_params.clone().self_signed(&ca_key).map_err(fail)?;
        let key = KeyPair::generate().map_err(fail)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        match role {
            Role::Server => {
                params.subject_alt_names = vec![
                    SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                    SanType::DnsName(
                        "localhost"
                            .try_into()
                            .map_err(|e| format!("cannot name `localhost`: {e}"))?,
                    ),
                ];
                params.extended_key_usages = vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ];
            }
            Role::Client => {
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(fail)?;
        let files = CertFiles {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        write(&files.key, &key.serialize_pem(), 0o600)?;
        write(&files.cert, &cert.pem(), 0o644)?;
        Ok(files)
    }
}

/// Writes `contents` to a new or truncated file with `mode`.
fn write(path: &Path, contents: &str, mode: u32) -> Result<(), String> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| {
            // `mode` applies only to a new file: an old one gets it here.
            f.set_permissions(fs::Permissions::from_mode(mode))?;
            f.write_all(contents.as_bytes())
        })
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
