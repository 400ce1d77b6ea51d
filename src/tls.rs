//! TLS for the public listener: PEM files or a generated self-signed certificate, served
//! through a resolver whose certificate can be swapped while connections stay up.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;

/// File names of the generated certificate inside `tls.self_signed_dir`.
pub const SELF_SIGNED_CERT: &str = "selfsigned-cert.pem";
pub const SELF_SIGNED_KEY: &str = "selfsigned-key.pem";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("certificate and key do not form a usable pair: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The crypto provider used on both legs (ring: no C toolchain beyond cc needed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate being served, replaceable at run time.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    cert_path: PathBuf,
    key_path: PathBuf,
    /// Digest of the file contents last looked at, so each edit is tried (and logged) once.
    seen: Mutex<Option<[u8; 32]>>,
}

impl CertStore {
    /// Paths of the PEM files this store serves.
    pub fn paths(&self) -> (&Path, &Path) {
        (&self.cert_path, &self.key_path)
    }

    /// Re-reads the files if their content changed since last looked at. On error the old
    /// certificate stays in force. New handshakes use the new certificate; open connections
    /// keep theirs. Returns the new fingerprint when one was installed.
    pub fn reload_if_changed(&self) -> Result<Option<String>, TlsError> {
        let digest = files_digest(&self.cert_path, &self.key_path);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == Some(digest) {
                return Ok(None);
            }
            *seen = Some(digest);
        }
        let (key, fingerprint) = load_pair(&self.cert_path, &self.key_path)?;
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(key);
        }
        Ok(Some(fingerprint))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|k| Arc::clone(&k))
    }
}

/// What [`load`] produced: the rustls config, the store behind it, and facts for the log.
pub struct Loaded {
    pub server_config: Arc<ServerConfig>,
    pub store: Arc<CertStore>,
    pub fingerprint: String,
    pub generated: bool,
}

/// Builds the server TLS config: TLS 1.2 and 1.3, HTTP/1.1 ALPN, session tickets on.
pub fn load(cfg: &TlsConfig) -> Result<Loaded, TlsError> {
    let (cert_path, key_path, generated) = match cfg {
        TlsConfig::Files { cert, key } => (cert.clone(), key.clone(), false),
        TlsConfig::SelfSigned { dir } => {
            let (cert, key) = (dir.join(SELF_SIGNED_CERT), dir.join(SELF_SIGNED_KEY));
            let generated = !cert.exists() && !key.exists();
            if generated {
                generate_self_signed(&cert, &key)?;
            }
            (cert, key, generated)
        }
    };
    let seen = files_digest(&cert_path, &key_path);
    let (key, fingerprint) = load_pair(&cert_path, &key_path)?;
    let store = Arc::new(CertStore {
        current: RwLock::new(Arc::new(key)),
        cert_path,
        key_path,
        seen: Mutex::new(Some(seen)),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Loaded {
        server_config: Arc::new(config),
        store,
        fingerprint,
        generated,
    })
}

/// What [`load`] checks of `cfg`, without writing anything (for `check-config`): the
/// certificate and key files must form a usable pair. Returns the certificate's
/// fingerprint, or `None` when [`load`] would generate a self-signed one (neither file of
/// `tls.self_signed_dir` exists yet).
pub fn check(cfg: &TlsConfig) -> Result<Option<String>, TlsError> {
    let (cert, key) = match cfg {
        TlsConfig::Files { cert, key } => (cert.clone(), key.clone()),
        TlsConfig::SelfSigned { dir } => {
            let (cert, key) = (dir.join(SELF_SIGNED_CERT), dir.join(SELF_SIGNED_KEY));
            if !cert.exists() && !key.exists() {
                return Ok(None);
            }
            (cert, key)
        }
    };
    load_pair(&cert, &key).map(|(_, fingerprint)| Some(fingerprint))
}

/// SHA-256 over both files (an unreadable file counts as empty).
fn files_digest(cert: &Path, key: &Path) -> [u8; 32] {
    let mut h = Sha256::new();
    for path in [cert, key] {
        let bytes = std::fs::read(path).unwrap_or_default();
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    h.finalize().into()
}

fn load_pair(cert_path: &Path, key_path: &Path) -> Result<(CertifiedKey, String), TlsError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Read { path, source }
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .map_err(read_err(cert_path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(cert_path))?;
    let Some(leaf) = certs.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_path_buf(),
        });
    };
    let fingerprint = fingerprint(leaf);
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(read_err(key_path))?;
    let certified = CertifiedKey::from_der(certs, key, &provider())?;
    Ok((certified, fingerprint))
}

/// SHA-256 of a certificate's DER, as `AB:CD:...` (what `openssl x509 -fingerprint -sha256` shows).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, byte) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{byte:02X}");
    }
    out
}

/// Writes an ECDSA P-256 certificate for localhost, 127.0.0.1 and ::1 (key file mode 0600).
pub fn generate_self_signed(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ollama-gateway self-signed");
    let cert = params.self_signed(&key)?;
    if let Some(dir) = cert_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    write_private(key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, cert.pem()).map_err(|source| TlsError::Write {
        path: cert_path.to_path_buf(),
        source,
    })
}

/// What [`generate_ca_and_server`] wrote.
pub struct IssuedFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub fingerprint: String,
}

/// Makes a local CA and a server certificate for `names` (DNS names or IP addresses) in
/// `dir`: `ca.pem` (distribute to clients), `ca-key.pem`, `server.pem` (server certificate
/// then the CA, the chain to configure as tls.cert) and `server-key.pem` (tls.key). Keys are
/// ECDSA P-256, written mode 0600. Refuses to overwrite unless `force`.
pub fn generate_ca_and_server(
    dir: &Path,
    names: &[String],
    force: bool,
) -> Result<IssuedFiles, TlsError> {
    let files = IssuedFiles {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        fingerprint: String::new(),
    };
    let ca_key_path = dir.join("ca-key.pem");
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    for path in [
        &files.ca,
        &ca_key_path,
        &files.server_cert,
        &files.server_key,
    ] {
        if path.exists() && !force {
            return Err(TlsError::Write {
                path: path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists; pass --force to replace it",
                ),
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;

    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ollama-gateway local CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);

    let server_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        names.first().map_or("ollama-gateway", String::as_str),
    );
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params.signed_by(&server_key, &issuer)?;

    write_private(&ca_key_path, ca_key.serialize_pem().as_bytes())?;
    write_private(&files.server_key, server_key.serialize_pem().as_bytes())?;
    std::fs::write(&files.ca, ca_cert.pem()).map_err(write_err(&files.ca))?;
    let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
    std::fs::write(&files.server_cert, chain).map_err(write_err(&files.server_cert))?;
    Ok(IssuedFiles {
        fingerprint: fingerprint(server_cert.der()),
        ..files
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|source| TlsError::Write {
            path: path.to_path_buf(),
            source,
        })
}
