//! TLS for end-to-end tests: a throwaway PKI made with the `openssl` CLI in
//! a temp dir, a Mosquitto broker that requires client certificates, and the
//! rustls client configs to reach it.
//!
//! The PKI: a CA; a server certificate for `localhost` and `127.0.0.1`
//! signed by it; client certificates whose CN is a named identity (the
//! broker takes the CN as the MQTT user name); and a second, unrelated
//! "rogue" CA with a client certificate of its own, which the broker must
//! refuse. Keys are P-256, PKCS#8 PEM (`BEGIN PRIVATE KEY`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::mqtt::Mosquitto;

/// The identity of the rogue CA's client certificate: a real shop's name,
/// so only the signature tells it apart.
pub const ROGUE_IDENTITY: &str = "shop-1";

/// Whether the `openssl` CLI is here; in CI a missing one is a failure.
pub fn openssl_available() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || std::env::var_os("CI").is_none(),
        "openssl is not installed (apt-get install openssl)"
    );
    if !found {
        eprintln!("skipped: openssl is not installed (apt-get install openssl)");
    }
    found
}

/// A throwaway PKI in a temp dir, removed on drop.
pub struct Pki {
    pub dir: tempfile::TempDir,
    /// The CA that signs the server and the client certificates.
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    /// For `localhost` and IP `127.0.0.1`, signed by the CA.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// A CA nobody trusts.
    pub rogue_ca_cert: PathBuf,
    pub rogue_ca_key: PathBuf,
    /// A client certificate with CN [`ROGUE_IDENTITY`], signed by the rogue CA.
    pub rogue_client_cert: PathBuf,
    pub rogue_client_key: PathBuf,
}

impl Pki {
    /// Makes the CA, the server certificate and the rogue CA with its
    /// client certificate.
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name);
        let pki = Pki {
            ca_cert: path("ca.crt"),
            ca_key: path("ca.key"),
            server_cert: path("server.crt"),
            server_key: path("server.key"),
            rogue_ca_cert: path("rogue-ca.crt"),
            rogue_ca_key: path("rogue-ca.key"),
            rogue_client_cert: path("rogue-client.crt"),
            rogue_client_key: path("rogue-client.key"),
            dir,
        };
        self_signed_ca(&pki.ca_cert, &pki.ca_key, "soundbox test CA");
        self_signed_ca(&pki.rogue_ca_cert, &pki.rogue_ca_key, "rogue test CA");
        issue(
            (&pki.ca_cert, &pki.ca_key),
            &pki.server_cert,
            &pki.server_key,
            "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        issue(
            (&pki.rogue_ca_cert, &pki.rogue_ca_key),
            &pki.rogue_client_cert,
            &pki.rogue_client_key,
            ROGUE_IDENTITY,
            "extendedKeyUsage=clientAuth\n",
        );
        pki
    }

    /// A client certificate with CN `name`, signed by the CA: its
    /// certificate and key paths. Made on the first call for a name.
    pub fn client_cert(&self, name: &str) -> (PathBuf, PathBuf) {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "identity {name:?}: letters, digits, - _ . only"
        );
        let cert = self.dir.path().join(format!("client-{name}.crt"));
        let key = self.dir.path().join(format!("client-{name}.key"));
        if !cert.is_file() {
            issue(
                (&self.ca_cert, &self.ca_key),
                &cert,
                &key,
                name,
                "extendedKeyUsage=clientAuth\n",
            );
        }
        (cert, key)
    }

    /// A rustls client config that trusts `roots` (PEM file) and, if given,
    /// presents the client certificate `(cert, key)`.
    pub fn rustls_config(roots: &Path, client: Option<(&Path, &Path)>) -> rustls::ClientConfig {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        let mut store = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(roots).expect("read roots") {
            store.add(cert.expect("root PEM")).expect("add root");
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(store);
        match client {
            Some((cert, key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .expect("read client cert")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client cert PEM");
                let key = PrivateKeyDer::from_pem_file(key).expect("client key PEM");
                builder
                    .with_client_auth_cert(certs, key)
                    .expect("client cert and key")
            }
            None => builder.with_no_client_auth(),
        }
    }

    /// [`Pki::rustls_config`] trusting this CA, as client `name` (a
    /// certificate from [`Pki::client_cert`]), or without a certificate.
    pub fn client_config(&self, name: Option<&str>) -> rustls::ClientConfig {
        match name {
            Some(name) => {
                let (cert, key) = self.client_cert(name);
                Self::rustls_config(&self.ca_cert, Some((&cert, &key)))
            }
            None => Self::rustls_config(&self.ca_cert, None),
        }
    }

    /// [`Pki::rustls_config`] trusting this CA, presenting the rogue CA's
    /// client certificate.
    pub fn rogue_client_config(&self) -> rustls::ClientConfig {
        Self::rustls_config(
            &self.ca_cert,
            Some((&self.rogue_client_cert, &self.rogue_client_key)),
        )
    }
}

/// The rumqttc transport for `config`.
pub fn mqtt_transport(config: rustls::ClientConfig) -> rumqttc::Transport {
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
}

impl Mosquitto {
    /// Starts a broker whose only listener is TLS with `pki`'s server
    /// certificate and requires a client certificate signed by `pki`'s CA;
    /// the certificate's CN is the client's user name. With `acl` (the
    /// lines of a Mosquitto ACL file, e.g. `user gateway\ntopic write
    /// chain/#\npattern read chain/%u/payments\n`), only what it grants is
    /// allowed; without, every client may do anything.
    pub fn start_tls(pki: &Pki, acl: Option<&str>) -> Mosquitto {
        let acl_line = match acl {
            Some(acl) => {
                let path = pki.dir.path().join(format!("acl-{}", crate::free_port()));
                std::fs::write(&path, acl).expect("write ACL file");
                format!("acl_file {}\n", path.display())
            }
            None => String::new(),
        };
        // The listener lines apply to `listener <port> 127.0.0.1`, which
        // `start_with` writes first.
        Mosquitto::start_with(&format!(
            "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
             use_identity_as_username true\n{acl_line}",
            pki.ca_cert.display(),
            pki.server_cert.display(),
            pki.server_key.display(),
        ))
    }
}

/// Runs `openssl` with `args`, failing the test with its output if it fails.
fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 temp path")
}

/// A new P-256 key and a self-signed CA certificate for it, ten years.
fn self_signed_ca(cert: &Path, key: &Path, cn: &str) {
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        path_str(key),
        "-out",
        path_str(cert),
        "-days",
        "3650",
        "-subj",
        &format!("/CN={cn}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
}

/// A new P-256 key and a certificate for `cn` signed by `ca`, with the
/// X.509 v3 extensions `extensions` (one `name=value` a line) besides
/// `basicConstraints=CA:FALSE`.
fn issue(ca: (&Path, &Path), cert: &Path, key: &Path, cn: &str, extensions: &str) {
    let csr = cert.with_extension("csr");
    let ext = cert.with_extension("ext");
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{extensions}"
        ),
    )
    .expect("write extensions");
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        path_str(key),
        "-out",
        path_str(&csr),
        "-subj",
        &format!("/CN={cn}"),
    ]);
    let serial = format!("{}", fastrand::u64(1..u64::MAX >> 1));
    openssl(&[
        "x509",
        "-req",
        "-in",
        path_str(&csr),
        "-CA",
        path_str(ca.0),
        "-CAkey",
        path_str(ca.1),
        "-set_serial",
        &serial,
        "-days",
        "3650",
        "-extfile",
        path_str(&ext),
        "-out",
        path_str(cert),
    ]);
}
