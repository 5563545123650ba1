//! The cluster's certificate authority and the nodes' identities.
//!
//! Every node holds a leaf certificate signed by the cluster CA and trusts
//! only that CA, in both directions (mutual TLS). The CA key is needed only
//! where identities are issued; a worker machine needs `ca.pem`,
//! `NAME.pem` and `NAME.key.pem`.
//!
//! Files in a cluster directory:
//! - `ca.pem`, `ca.key.pem`: the CA certificate and key;
//! - `NAME.pem`, `NAME.key.pem`: node NAME's certificate and key.
//!
//! Key files are created with mode 0600 on unix, and no function here
//! overwrites a key file.

use crate::{Error, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::path::Path;

/// The name every node certificate also carries; clients verify servers
/// against it because they dial addresses, not names.
pub(crate) const SHARED_SAN: &str = "baton-node";

const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca.key.pem";

/// The cluster's certificate authority: its certificate and signing key.
pub struct ClusterCa {
    cert_pem: String,
    cert: CertificateDer<'static>,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa").finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA (ECDSA P-256) for the cluster named `cluster_name`.
    pub fn generate(cluster_name: &str) -> Result<ClusterCa> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_err("CA"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "baton");
        dn.push(DnType::CommonName, format!("baton cluster CA {cluster_name}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(cert_err("CA key"))?;
        let cert = params.self_signed(&key).map_err(cert_err("CA"))?;
        Ok(ClusterCa { cert_pem: cert.pem(), cert: cert.der().clone(), key })
    }

    /// A leaf certificate for `node_name`, signed by this CA, good for both
    /// server and client authentication. Its names: `node_name`,
    /// `baton-node`, `localhost`, 127.0.0.1 and ::1.
    pub fn issue(&self, node_name: &str) -> Result<Identity> {
        validate_name(node_name)?;
        let issuer = Issuer::from_ca_cert_der(&self.cert, &self.key).map_err(cert_err("CA"))?;
        let sans: Vec<String> =
            [node_name, SHARED_SAN, "localhost", "127.0.0.1", "::1"].iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).map_err(cert_err(node_name))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "baton");
        dn.push(DnType::CommonName, node_name);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(cert_err(node_name))?;
        let cert = params.signed_by(&key, &issuer).map_err(cert_err(node_name))?;
        Identity::from_pems(node_name, cert.pem(), key.serialize_pem(), self.cert_pem.clone())
    }

    /// Writes `ca.pem` and `ca.key.pem` into `dir` (created if missing);
    /// refuses if either exists.
    pub fn save(&self, dir: &Path) -> Result<()> {
        create_dir(dir)?;
        for file in [CA_CERT_FILE, CA_KEY_FILE] {
            refuse_existing(&dir.join(file))?;
        }
        write_new(&dir.join(CA_KEY_FILE), &self.key.serialize_pem(), true)?;
        write_new(&dir.join(CA_CERT_FILE), &self.cert_pem, false)
    }

    /// Reads the CA that [`ClusterCa::save`] wrote into `dir`.
    pub fn load(dir: &Path) -> Result<ClusterCa> {
        let cert_pem = read(&dir.join(CA_CERT_FILE))?;
        let key_pem = read(&dir.join(CA_KEY_FILE))?;
        let cert = parse_cert(&cert_pem, &dir.join(CA_CERT_FILE))?;
        let key = KeyPair::from_pem(&key_pem)
            .map_err(|e| Error::Certificate(format!("{}: {e}", dir.join(CA_KEY_FILE).display())))?;
        Ok(ClusterCa { cert_pem, cert, key })
    }
}

/// One node's certificate, key and the CA certificate it trusts.
pub struct Identity {
    name: String,
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) ca: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            name: self.name.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
            ca_pem: self.ca_pem.clone(),
            cert: self.cert.clone(),
            ca: self.ca.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Identity {
    fn from_pems(name: &str, cert_pem: String, key_pem: String, ca_pem: String) -> Result<Self> {
        let source = Path::new(name);
        let cert = parse_cert(&cert_pem, source)?;
        let ca = parse_cert(&ca_pem, Path::new(CA_CERT_FILE))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| Error::Certificate(format!("private key of {name}: {e}")))?;
        Ok(Identity { name: name.to_string(), cert_pem, key_pem, ca_pem, cert, ca, key })
    }

    /// The node name the certificate was issued for.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// Writes `NAME.pem`, `NAME.key.pem` and (unless the same file is there
    /// already) `ca.pem` into `dir`; never overwrites a different file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        create_dir(dir)?;
        let ca_path = dir.join(CA_CERT_FILE);
        let (cert_path, key_path) = node_files(dir, &self.name);
        refuse_existing(&cert_path)?;
        refuse_existing(&key_path)?;
        match fs::read_to_string(&ca_path) {
            Ok(existing) if existing == self.ca_pem => {}
            Ok(_) => return Err(Error::AlreadyExists { path: ca_path }),
            Err(_) => write_new(&ca_path, &self.ca_pem, false)?,
        }
        write_new(&key_path, &self.key_pem, true)?;
        write_new(&cert_path, &self.cert_pem, false)
    }

    /// The identity as one text (its name, then the certificate, key and CA
    /// certificate as PEM), for handing to a child process through a pipe
    /// so that the key never touches a disk. [`Identity::from_bundle`]
    /// reads it back; the text ends with [`BUNDLE_END`] on a line of its own.
    pub fn to_bundle(&self) -> String {
        let mut text = format!("{BUNDLE_START} {}\n", self.name);
        for pem in [&self.cert_pem, &self.key_pem, &self.ca_pem] {
            text.push_str(pem.trim_end());
            text.push('\n');
        }
        text.push_str(BUNDLE_END);
        text.push('\n');
        text
    }

    /// Reads an identity written by [`Identity::to_bundle`].
    pub fn from_bundle(text: &str) -> Result<Identity> {
        let bad = |why: &str| Error::Certificate(format!("identity bundle: {why}"));
        let (first, rest) = text.split_once('\n').ok_or_else(|| bad("it is empty or has no newline"))?;
        let name = first.strip_prefix(BUNDLE_START).map(str::trim).ok_or_else(|| bad("no header line"))?;
        validate_name(name)?;
        let body = rest.trim_end().strip_suffix(BUNDLE_END).ok_or_else(|| bad("it does not end with its end line"))?;
        let blocks = pem_blocks(body);
        let [cert, key, ca] = blocks.as_slice() else {
            return Err(bad(&format!("expected 3 PEM blocks (certificate, key, CA), found {}", blocks.len())));
        };
        Identity::from_pems(name, cert.clone(), key.clone(), ca.clone())
    }

    /// Reads node `node_name`'s identity from `dir`.
    pub fn load(dir: &Path, node_name: &str) -> Result<Identity> {
        validate_name(node_name)?;
        let (cert_path, key_path) = node_files(dir, node_name);
        let cert_pem = read(&cert_path)?;
        let key_pem = read(&key_path)?;
        let ca_pem = read(&dir.join(CA_CERT_FILE))?;
        Identity::from_pems(node_name, cert_pem, key_pem, ca_pem)
    }
}

/// The first line of an identity bundle ([`Identity::to_bundle`]), before the name.
pub const BUNDLE_START: &str = "baton-identity";
/// The last line of an identity bundle: a reader of a pipe stops there.
pub const BUNDLE_END: &str = "end baton-identity";

/// The PEM blocks of `text`, each from its `-----BEGIN` line to its `-----END` line.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
            if line.starts_with("-----END ") {
                blocks.extend(current.take());
            }
        }
    }
    blocks
}

/// `baton cluster init DIR`: a new CA and an identity for each of `nodes`,
/// written into `dir`. Refuses to touch a directory that already has a CA.
pub fn init_cluster(dir: &Path, nodes: &[String]) -> Result<()> {
    let mut seen = HashSet::new();
    for node in nodes {
        validate_name(node)?;
        if !seen.insert(node) {
            return Err(Error::InvalidName(format!("{node} (listed twice)")));
        }
    }
    for file in [CA_CERT_FILE, CA_KEY_FILE] {
        refuse_existing(&dir.join(file))?;
    }
    let cluster = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "baton".into());
    let ca = ClusterCa::generate(&cluster)?;
    ca.save(dir)?;
    for node in nodes {
        ca.issue(node)?.save(dir)?;
    }
    Ok(())
}

/// Node names become DNS names in certificates and file names on disk.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let ok_ends = !name.starts_with(['-', '.']) && !name.ends_with(['-', '.']);
    let reserved = ["localhost", SHARED_SAN, "ca"].contains(&name);
    if name.is_empty() || name.len() > 63 || !ok_chars || !ok_ends || reserved {
        return Err(Error::InvalidName(name.to_string()));
    }
    Ok(())
}

fn node_files(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key.pem")))
}

fn cert_err(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Certificate(format!("could not make the certificate for {what}: {e}"))
}

fn parse_cert(pem: &str, source: &Path) -> Result<CertificateDer<'static>> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| Error::Certificate(format!("{} holds no PEM certificate: {e}", source.display())))
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|source| Error::Io { action: "create directory", path: dir.to_path_buf(), source })
}

fn refuse_existing(path: &Path) -> Result<()> {
    if path.exists() {
        return Err(Error::AlreadyExists { path: path.to_path_buf() });
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| Error::Io { action: "read", path: path.to_path_buf(), source })
}

/// Creates `path` (failing if it exists), private files with mode 0600.
fn write_new(path: &Path, contents: &str, private: bool) -> Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let io_err = |source| Error::Io { action: "write", path: path.to_path_buf(), source };
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::AlreadyExists { path: path.to_path_buf() }
        } else {
            io_err(e)
        }
    })?;
    file.write_all(contents.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["coordinator", "worker-0", "w1.rack2"] {
            validate_name(good).unwrap();
        }
        for bad in ["", "-x", "x.", "a b", "ca", "localhost", "baton-node", "x_y", "é"] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn an_identity_survives_its_bundle() {
        let ca = ClusterCa::generate("t").unwrap();
        let id = ca.issue("worker-3").unwrap();
        let text = id.to_bundle();
        assert!(text.ends_with(&format!("{BUNDLE_END}\n")));
        let back = Identity::from_bundle(&text).unwrap();
        assert_eq!((back.name(), &back.cert, &back.ca), ("worker-3", &id.cert, &id.ca));
        assert_eq!(back.key_pem, id.key_pem);
        for bad in ["", "x\n", &text[..text.len() / 2], &text.replace("worker-3", "bad name")] {
            assert!(Identity::from_bundle(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn issued_identity_carries_the_ca() {
        let ca = ClusterCa::generate("t").unwrap();
        let id = ca.issue("worker-0").unwrap();
        assert_eq!(id.name(), "worker-0");
        assert_eq!(id.ca, ca.cert);
        assert!(ca.issue("bad name").is_err());
    }
}
