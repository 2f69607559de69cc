//! What the MQTT sinks and the MQTT subscriptions share to reach a broker:
//! TLS (the chain's CA, the shop's client certificate) on rustls with `ring`,
//! and the rumqttc event loop driven on a task of its own.

use std::sync::Arc;

use tokio::sync::mpsc;

use rumqttc::{Event, EventLoop};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::MqttTls;
use crate::tasks::Tasks;

/// Why a broker connection cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("{key} {path}: {reason}")]
    File {
        key: &'static str,
        path: String,
        reason: String,
    },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// rustls with the `ring` provider, either the chain's own CA file or the
/// built-in web roots, and the gateway's client certificate if it has one.
/// Built once when a sink or subscription starts, so a bad file stops it
/// with a clear error instead of failing every reconnect.
pub fn tls_config(tls: &MqttTls) -> Result<Arc<rustls::ClientConfig>, MqttError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let error = file_error("ca_file", path);
            for cert in certificates(path).map_err(&error)? {
                roots.add(cert).map_err(|e| error(e.to_string()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match &tls.identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            let chain = certificates(&identity.cert_file)
                .map_err(file_error("cert_file", &identity.cert_file))?;
            let key_error = file_error("key_file", &identity.key_file);
            let key = PrivateKeyDer::from_pem_file(&identity.key_file)
                .map_err(|e| key_error(format!("no PEM private key in it ({e})")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| key_error(format!("does not go with cert_file: {e}")))?
        }
    };
    Ok(Arc::new(config))
}

/// Every PEM certificate in `path`; none is an error.
fn certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificates in it".into());
    }
    Ok(certs)
}

fn file_error(key: &'static str, path: &std::path::Path) -> impl Fn(String) -> MqttError {
    let path = path.display().to_string();
    move |reason| MqttError::File {
        key,
        path: path.clone(),
        reason,
    }
}

/// The rumqttc event loop on its own task, its events on a channel, so the
/// caller never cancels a `poll` half way through a packet. Dropping it
/// stops the loop (the task ends with it).
pub struct Connection {
    pub events: mpsc::UnboundedReceiver<Result<Event, rumqttc::ConnectionError>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Drives `eventloop` on a task of `tasks`.
    pub fn drive(mut eventloop: EventLoop, tasks: &Tasks) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let driver = tasks.spawn("mqtt event loop", async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                // Stop at the first error: the next connection is a fresh
                // event loop, so rumqttc never resends on its own.
                if tx.send(event).is_err() || failed {
                    break;
                }
            }
        });
        Connection { events, driver }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}
