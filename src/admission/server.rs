//! The webhook's HTTPS server: `POST /validate-mappings` (AdmissionReview v1) and
//! `GET /healthz`, on its own port, with rustls. The certificate and key are read from
//! files and re-read when they change (cert-manager and the chart rotate the Secret
//! behind the mounted files), so a rotation needs no restart.
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use kube::Client;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::review::{self, Mapping};
use super::sar::{Authorizer, Requester};
use crate::config::WebhookConfig;

pub const VALIDATE_PATH: &str = "/validate-mappings";

/// How often the certificate files are checked for a change.
const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// A TLS handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it ({detail})")]
    Cert { path: PathBuf, detail: String },
    #[error("{path}: no usable PEM private key in it ({detail})")]
    Key { path: PathBuf, detail: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
}

// ---------------------------------------------------------------------------------------
// The review
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct WebhookState {
    authorizer: Authorizer,
    protected_roles: Arc<[String]>,
}

impl WebhookState {
    async fn review(&self, req: &AdmissionRequest<DynamicObject>) -> AdmissionResponse {
        let allow = AdmissionResponse::from(req);
        if !matches!(req.operation, Operation::Create | Operation::Update) {
            return allow;
        }
        let Some(object) = &req.object else {
            return allow.deny(review::ReviewError::NoObject);
        };
        if req.operation == Operation::Update
            && review::spec_unchanged(req.old_object.as_ref().map(|o| &o.data), &object.data)
        {
            return allow;
        }
        let mapping = match review::parse(&req.kind.kind, req.namespace.as_deref(), &object.data) {
            Ok(m) => m,
            Err(e) => return allow.deny(e),
        };
        let checks = review::checks(&mapping, &self.protected_roles);
        let who = requester(&req.user_info);
        let decision = match self.authorizer.answer(&who, &checks).await {
            Ok(results) => review::decide(&who.username, &results),
            Err(e) => {
                tracing::warn!(error = %e, "admission review could not ask the API server");
                Err(format!(
                    "kube-scim could not check {}'s rights: {e}",
                    who.username
                ))
            }
        };
        let (kind, scope) = match &mapping {
            Mapping::Namespaced { namespace, .. } => {
                (review::GROUP_ROLE_MAPPING, namespace.as_str())
            }
            Mapping::Cluster(_) => (review::CLUSTER_GROUP_ROLE_MAPPING, ""),
        };
        tracing::info!(
            target: "kube_scim::audit",
            user = %who.username,
            kind,
            namespace = scope,
            name = %req.name,
            operation = ?req.operation,
            checks = checks.len(),
            allowed = decision.is_ok(),
            reason = decision.as_ref().err().map(String::as_str).unwrap_or(""),
            "mapping admission"
        );
        match decision {
            Ok(()) => allow,
            Err(message) => allow.deny(message),
        }
    }
}

fn requester(user: &k8s_openapi::api::authentication::v1::UserInfo) -> Requester {
    Requester {
        username: user.username.clone().unwrap_or_default(),
        uid: user.uid.clone().filter(|u| !u.is_empty()),
        groups: user.groups.clone().unwrap_or_default(),
        extra: user.extra.clone().unwrap_or_default(),
    }
}

async fn validate(
    State(state): State<WebhookState>,
    body: Bytes,
) -> Json<AdmissionReview<DynamicObject>> {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Json(
                AdmissionResponse::invalid(format!("not an AdmissionReview: {e}")).into_review(),
            )
        }
    };
    let req: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return Json(AdmissionResponse::invalid(e).into_review()),
    };
    Json(state.review(&req).await.into_review())
}

pub fn router(client: Client, protected_roles: Vec<String>) -> Router {
    Router::new()
        .route(VALIDATE_PATH, post(validate))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(WebhookState {
            authorizer: Authorizer::new(client),
            protected_roles: protected_roles.into(),
        })
}

// ---------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------

/// The serving certificate, swapped in place when its files change.
struct FileCert {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<(Vec<u8>, Arc<CertifiedKey>)>,
}

impl std::fmt::Debug for FileCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileCert")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, WebhookError> {
    std::fs::read(path).map_err(|source| WebhookError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Both files' bytes (to notice a change) and the key pair they hold.
fn load(cert_file: &Path, key_file: &Path) -> Result<(Vec<u8>, Arc<CertifiedKey>), WebhookError> {
    let cert_pem = read(cert_file)?;
    let key_pem = read(key_file)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebhookError::Cert {
            path: cert_file.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(WebhookError::Cert {
            path: cert_file.to_path_buf(),
            detail: "empty".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| WebhookError::Key {
        path: key_file.to_path_buf(),
        detail: e.to_string(),
    })?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| WebhookError::Key {
            path: key_file.to_path_buf(),
            detail: e.to_string(),
        })?;
    let mut stamp = cert_pem;
    stamp.extend_from_slice(&key_pem);
    Ok((stamp, Arc::new(CertifiedKey::new(certs, signing))))
}

impl FileCert {
    fn new(cert_file: PathBuf, key_file: PathBuf) -> Result<FileCert, WebhookError> {
        let current = load(&cert_file, &key_file)?;
        Ok(FileCert {
            cert_file,
            key_file,
            current: RwLock::new(current),
        })
    }

    /// Re-read the files; swap when they changed and parse. A half-written pair (mid
    /// rotation) fails to parse and is retried on the next tick.
    fn reload(&self) {
        match load(&self.cert_file, &self.key_file) {
            Ok((stamp, key)) => {
                let Ok(mut current) = self.current.write() else {
                    return;
                };
                if current.0 != stamp {
                    *current = (stamp, key);
                    tracing::info!(cert = %self.cert_file.display(), "webhook certificate reloaded");
                }
            }
            Err(e) => tracing::warn!(error = %e, "webhook certificate not reloaded"),
        }
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.1.clone())
    }
}

/// Accepted TLS connections: TCP accepts and handshakes run in their own tasks (a slow
/// handshake never holds up the next connection); axum takes finished streams.
struct TlsListener {
    addr: std::net::SocketAddr,
    streams: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.streams.recv().await {
            Some(s) => s,
            // The acceptor stopped (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

fn spawn_acceptor(
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: CancellationToken,
) -> TlsListener {
    let addr = tcp
        .local_addr()
        .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = tcp.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, %peer, "webhook TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(%peer, "webhook TLS handshake timed out"),
                }
            });
        }
    });
    TlsListener { addr, streams: rx }
}

/// Serve the webhook until `shutdown`.
pub async fn run(
    client: Client,
    config: WebhookConfig,
    cert_file: PathBuf,
    key_file: PathBuf,
    protected_roles: Vec<String>,
    shutdown: CancellationToken,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cert = Arc::new(FileCert::new(cert_file, key_file)?);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(WebhookError::Tls)?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let addr = config.webhook_listen;
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Listen { addr, source })?;
    tracing::info!(%addr, path = VALIDATE_PATH, "admission webhook listening (HTTPS)");

    let reloader = {
        let (cert, shutdown) = (cert.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => cert.reload(),
                }
            }
        })
    };
    let listener = spawn_acceptor(tcp, acceptor, shutdown.clone());
    let served = axum::serve(listener, router(client, protected_roles))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(WebhookError::Serve);
    reloader.abort();
    served?;
    Ok(())
}
