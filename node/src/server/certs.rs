//! The cluster credential: a private cluster CA and one node certificate it signed.
//!
//! Node-to-node QUIC uses mutual TLS: a node accepts a connection only from a peer whose
//! certificate chains to the cluster CA, and dials only peers that prove the same. The
//! credential directory is the secret: whoever holds it is a member. It also holds the
//! admin token (`admin.token`) that `/admin/*` HTTP calls must present (`chorus leave` and
//! `chorus remove` read it with `--certs`). This module creates and loads them; it does
//! not open sockets (see `transport`).

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS server name every node presents and checks; identity is the CA signature, not the name.
pub const NODE_SERVER_NAME: &str = "chorus-node";

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
const NODE_CERT: &str = "node.pem";
const NODE_KEY: &str = "node.key";
/// The admin token's file: 64 hex digits, sent as `Authorization: Bearer <token>`.
pub const ADMIN_TOKEN: &str = "admin.token";

/// What a node needs to take part in the cluster's mutual TLS.
#[derive(Debug)]
pub struct Credential {
    pub ca: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Credential {
    fn clone(&self) -> Self {
        Credential {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Creates a fresh CA and node certificate in `dir`. Refuses to overwrite an existing
/// credential unless `force`, because replacing it splits the cluster in two.
pub fn init(dir: &Path, force: bool) -> Result<(), String> {
    let paths: Vec<PathBuf> = [CA_CERT, CA_KEY, NODE_CERT, NODE_KEY, ADMIN_TOKEN]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    if !force {
        if let Some(existing) = paths.iter().find(|p| p.exists()) {
            return Err(format!(
                "{} already exists; use --force to replace the cluster credential",
                existing.display()
            ));
        }
    }
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let files = generate().map_err(|e| format!("cannot generate certificates: {e}"))?;
    // Write to temporary names first and rename, so a failure leaves nothing half-written.
    for (path, contents) in paths.iter().zip(files.iter()) {
        let tmp = temporary_path(path);
        write_private(&tmp, contents)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    for path in &paths {
        let tmp = temporary_path(path);
        fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// PEM texts of [ca cert, ca key, node cert, node key], and the admin token.
fn generate() -> Result<[String; 5], rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "chorus cluster CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut node_params = CertificateParams::new(vec![NODE_SERVER_NAME.to_string()])?;
    node_params
        .distinguished_name
        .push(DnType::CommonName, NODE_SERVER_NAME);
    node_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let node_key = KeyPair::generate()?;
    let node_cert = node_params.signed_by(&node_key, &ca_cert, &ca_key)?;
    let token: [u8; 32] = rand::random();
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    Ok([
        ca_cert.pem(),
        ca_key.serialize_pem(),
        node_cert.pem(),
        node_key.serialize_pem(),
        format!("{token}\n"),
    ])
}

/// The admin token of a credential directory; `None` when it has none (made by an
/// older chorus: `chorus certs init --force` makes a new credential with one).
pub fn load_admin_token(dir: &Path) -> Result<Option<String>, String> {
    let path = dir.join(ADMIN_TOKEN);
    match fs::read_to_string(&path) {
        Ok(text) if text.trim().len() >= 32 => Ok(Some(text.trim().to_string())),
        Ok(_) => Err(format!(
            "{} is too short to be an admin token",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Compares a presented token with ours in time independent of where they differ.
pub fn token_matches(presented: &str, ours: &str) -> bool {
    presented.len() == ours.len()
        && presented
            .bytes()
            .zip(ours.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

/// Loads the credential from a directory made by [`init`].
pub fn load(dir: &Path) -> Result<Credential, String> {
    let read_cert = |name: &str| {
        let path = dir.join(name);
        CertificateDer::from_pem_file(&path).map_err(|e| {
            format!(
                "cannot read certificate {}: {e} (create one with `chorus certs init --dir {}`)",
                path.display(),
                dir.display()
            )
        })
    };
    let ca = read_cert(CA_CERT)?;
    let cert = read_cert(NODE_CERT)?;
    let key_path = dir.join(NODE_KEY);
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("cannot read key {}: {e}", key_path.display()))?;
    Ok(Credential { ca, cert, key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_then_load_round_trips_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false).unwrap();
        let credential = load(dir.path()).unwrap();
        assert!(!credential.ca.is_empty() && !credential.cert.is_empty());
        let err = init(dir.path(), false).unwrap_err();
        assert!(err.contains("already exists"), "{err}");
        let token = load_admin_token(dir.path())
            .unwrap()
            .expect("an admin token");
        assert_eq!(token.len(), 64);
        init(dir.path(), true).unwrap();
        let replaced = load(dir.path()).unwrap();
        assert_ne!(replaced.ca, credential.ca, "--force must create a new CA");
        assert_ne!(load_admin_token(dir.path()).unwrap().unwrap(), token);
        assert!(token_matches(&token, &token));
        assert!(!token_matches(&token[1..], &token));
        assert!(!token_matches(&token.replace('a', "b"), &token) || !token.contains('a'));
    }

    #[test]
    fn load_of_missing_dir_says_how_to_make_one() {
        let err = load(Path::new("/nonexistent/chorus-certs")).unwrap_err();
        assert!(err.contains("chorus certs init"), "{err}");
    }
}
