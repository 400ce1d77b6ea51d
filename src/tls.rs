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

/// How long a certificate the gateway makes is valid (CA/Browser Forum's limit is 398 days).
pub const CERT_VALIDITY_DAYS: i64 = 365;
/// A generated self-signed certificate this close to its expiry is made anew at start.
pub const RENEW_WITHIN_DAYS: i64 = 30;
/// The local CA of `certs new` lives longer than the certificates it signs.
const CA_VALIDITY_DAYS: i64 = 10 * 365;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("certificate and key do not form a usable pair: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path} is not a readable X.509 certificate")]
    Unparsable { path: PathBuf },
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
            let missing = !cert.exists() && !key.exists();
            let expiring = !missing && expires_within(&cert, RENEW_WITHIN_DAYS)?;
            if expiring {
                tracing::warn!(
                    path = %cert.display(),
                    days_left = days_left(&cert)?,
                    renew_within_days = RENEW_WITHIN_DAYS,
                    "the self-signed certificate expires within the renewal window: making a new one"
                );
            }
            if missing || expiring {
                generate_self_signed(&cert, &key)?;
            }
            (cert, key, missing || expiring)
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
    // HTTP/1.1 only: the gateway does not serve HTTP/2 (see `listener`).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The server's order of cipher suites, not the client's: ours puts AEADs with forward
    // secrecy first, and a client cannot talk it into a weaker one it happens to list first.
    config.ignore_client_order = true;
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    Ok(Loaded {
        server_config: Arc::new(config),
        store,
        fingerprint,
        generated,
    })
}

/// Whether the first certificate in `path` expires within `days` from now.
pub fn expires_within(path: &Path, days: i64) -> Result<bool, TlsError> {
    let not_after = not_after(path)?;
    Ok(not_after - unix_now() < days * 86_400)
}

/// Whole days until the first certificate in `path` expires (negative once it has).
pub fn days_left(path: &Path) -> Result<i64, TlsError> {
    Ok((not_after(path)? - unix_now()).div_euclid(86_400))
}

/// The expiry of the first certificate in `path`, in seconds since the Unix epoch.
pub fn not_after(path: &Path) -> Result<i64, TlsError> {
    let cert = CertificateDer::pem_file_iter(path)
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .next()
        .ok_or_else(|| TlsError::NoCertificate {
            path: path.to_path_buf(),
        })?
        .map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| TlsError::Unparsable {
            path: path.to_path_buf(),
        })?;
    Ok(parsed.validity().not_after.timestamp())
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Validity from an hour ago (clocks disagree a little) for `days` days.
fn validity(params: &mut rcgen::CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// What [`load`] checks of `cfg`, leaving nothing behind (for `check-config`): the
/// certificate and key files must form a usable pair, or, where [`load`] would generate a
/// self-signed one (neither file of `tls.self_signed_dir` exists yet, or the certificate
/// expires within [`RENEW_WITHIN_DAYS`]), the directory must be one it can create and
/// write. Returns the certificate's fingerprint, or `None` when one would be generated.
pub fn check(cfg: &TlsConfig) -> Result<Option<String>, TlsError> {
    let (cert, key) = match cfg {
        TlsConfig::Files { cert, key } => (cert.clone(), key.clone()),
        TlsConfig::SelfSigned { dir } => {
            let (cert, key) = (dir.join(SELF_SIGNED_CERT), dir.join(SELF_SIGNED_KEY));
            let missing = !cert.exists() && !key.exists();
            if missing || expires_within(&cert, RENEW_WITHIN_DAYS)? {
                probe_writable(dir)?;
                return Ok(None);
            }
            (cert, key)
        }
    };
    load_pair(&cert, &key).map(|(_, fingerprint)| Some(fingerprint))
}

/// Whether [`generate_self_signed`] could write into `dir`: creates it (with any missing
/// parents), writes and removes a probe file, then removes the directories it created.
fn probe_writable(dir: &Path) -> Result<(), TlsError> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let write_err = |source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    };
    // The directories that do not exist yet, deepest first.
    let created: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    let result = std::fs::create_dir_all(dir)
        .map_err(write_err)
        .and_then(|()| {
            let probe = dir.join(format!(".check-config-{}.tmp", std::process::id()));
            std::fs::write(&probe, b"")
                .and_then(|()| std::fs::remove_file(&probe))
                .map_err(write_err)
        });
    for made in created {
        let _ = std::fs::remove_dir(made);
    }
    result
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
    let certified = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        },
        e => TlsError::Rustls(e),
    })?;
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

/// Writes an ECDSA P-256 certificate for localhost, 127.0.0.1 and ::1, valid for
/// [`CERT_VALIDITY_DAYS`] (key file mode 0600).
pub fn generate_self_signed(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    write_self_signed(cert_path, key_path, CERT_VALIDITY_DAYS)
}

fn write_self_signed(cert_path: &Path, key_path: &Path, days: i64) -> Result<(), TlsError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ollama-gateway self-signed");
    validity(&mut params, days);
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
    validity(&mut ca_params, CA_VALIDITY_DAYS);
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
    validity(&mut params, CERT_VALIDITY_DAYS);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ogw-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    fn days_left(path: &Path) -> i64 {
        super::days_left(path).unwrap_or(-1)
    }

    #[test]
    fn generated_certificates_last_a_year() {
        let dir = temp_dir("year");
        let cfg = TlsConfig::SelfSigned { dir: dir.clone() };
        let loaded = load(&cfg).map_err(|e| e.to_string());
        assert!(
            loaded.as_ref().is_ok_and(|l| l.generated),
            "{:?}",
            loaded.err()
        );
        let left = days_left(&dir.join(SELF_SIGNED_CERT));
        assert!((364..=365).contains(&left), "{left} days");
        // Reused while it is not close to expiry.
        let again = load(&cfg).map_err(|e| e.to_string());
        assert!(again.is_ok_and(|l| !l.generated));

        let issued = generate_ca_and_server(&dir.join("ca"), &["gw.example".into()], false);
        assert!(issued.is_ok());
        assert!((364..=365).contains(&days_left(&dir.join("ca/server.pem"))));
        assert!(days_left(&dir.join("ca/ca.pem")) > 3000);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_self_signed_certificate_near_expiry_is_made_anew_at_start() {
        let dir = temp_dir("renew");
        let (cert, key) = (dir.join(SELF_SIGNED_CERT), dir.join(SELF_SIGNED_KEY));
        assert!(write_self_signed(&cert, &key, 10).is_ok());
        let old = std::fs::read(&cert).unwrap_or_default();
        let loaded = load(&TlsConfig::SelfSigned { dir: dir.clone() });
        assert!(loaded.is_ok_and(|l| l.generated));
        assert_ne!(std::fs::read(&cert).unwrap_or_default(), old);
        assert!(days_left(&cert) >= 364);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn check_probes_the_self_signed_dir_and_leaves_nothing() {
        let dir = temp_dir("probe");
        let new_dir = dir.join("a/b/certs");
        let cfg = TlsConfig::SelfSigned {
            dir: new_dir.clone(),
        };
        assert!(matches!(check(&cfg), Ok(None)));
        assert!(!dir.join("a").exists(), "the directories made are removed");
        let cfg = TlsConfig::SelfSigned {
            dir: PathBuf::from("/proc/nope/certs"),
        };
        let e = check(&cfg).map(|_| ()).map_err(|e| e.to_string());
        assert!(
            e.as_ref()
                .is_err_and(|e| e.starts_with("cannot write /proc/nope/certs")),
            "{e:?}"
        );
        // An expiring certificate would be made anew: probed too, not fingerprinted.
        let (cert, key) = (dir.join(SELF_SIGNED_CERT), dir.join(SELF_SIGNED_KEY));
        assert!(write_self_signed(&cert, &key, 10).is_ok());
        // Whole days: 10 days from now is 10, or 9 once the second it was made is over.
        assert!((9..=10).contains(&days_left(&cert)));
        let cfg = TlsConfig::SelfSigned { dir: dir.clone() };
        assert!(matches!(check(&cfg), Ok(None)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_of_another_certificate_is_said_in_words() {
        let dir = temp_dir("mismatch");
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        let other = dir.join("other.pem");
        assert!(write_self_signed(&cert, &key, 10).is_ok());
        assert!(write_self_signed(&other, &key, 10).is_ok());
        // `key` now belongs to `other`; `cert`'s own key is gone.
        let e = load_pair(&cert, &key)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(
            e,
            Err(format!(
                "the private key in {} does not belong to the certificate in {}",
                key.display(),
                cert.display()
            ))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_configured_certificate_is_never_replaced() {
        let dir = temp_dir("files");
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        assert!(write_self_signed(&cert, &key, 10).is_ok());
        let old = std::fs::read(&cert).unwrap_or_default();
        let loaded = load(&TlsConfig::Files {
            cert: cert.clone(),
            key,
        });
        assert!(loaded.is_ok_and(|l| !l.generated));
        assert_eq!(std::fs::read(&cert).unwrap_or_default(), old);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
