//! TLS for the HTTP and gRPC listeners (rustls), with an optional client-CA
//! for mutual TLS. Certificate, key and CA files are re-read when they change
//! (checked every few seconds); a broken new file is logged and the previous
//! certificate keeps serving. Handshakes run concurrently, each bounded in
//! time and their number bounded per listener, so slow or silent clients
//! can hold up neither the accept loop nor memory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::edge::conn::{Admission, Admitted};

/// How long a client has to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are checked for changes.
const RELOAD_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn modified(&self) -> Vec<Option<SystemTime>> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    fn build(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|iter| iter.collect())
            .map_err(|e| format!("{}: {e}", self.cert.display()))?;
        if certs.is_empty() {
            return Err(format!("{}: no certificate found", self.cert.display()));
        }
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .map_err(|e| format!("{}: {e}", self.key.display()))?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("{}: {e}", ca.display()))?
                {
                    roots
                        .add(cert.map_err(|e| format!("{}: {e}", ca.display()))?)
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| format!("{} and {}: {e}", self.cert.display(), self.key.display()))?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// Server configs for HTTP (h2 + http/1.1) and gRPC (h2), swapped on reload.
pub struct Tls {
    files: TlsFiles,
    http: ArcSwap<ServerConfig>,
    grpc: ArcSwap<ServerConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
const GRPC_ALPN: &[&[u8]] = &[b"h2"];

impl Tls {
    /// Loads the files; fails (before any port is bound) when they are unusable.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, String> {
        let http = files.build(HTTP_ALPN)?;
        let grpc = files.build(GRPC_ALPN)?;
        Ok(Arc::new(Tls {
            files,
            http: ArcSwap::new(http),
            grpc: ArcSwap::new(grpc),
        }))
    }

    /// Re-reads the files whenever they change, until `cancel`.
    pub async fn watch(self: Arc<Self>, cancel: CancellationToken) {
        let mut seen = self.files.modified();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(RELOAD_CHECK) => {}
            }
            let now = self.files.modified();
            if now == seen {
                continue;
            }
            seen = now;
            match (self.files.build(HTTP_ALPN), self.files.build(GRPC_ALPN)) {
                (Ok(http), Ok(grpc)) => {
                    self.http.store(http);
                    self.grpc.store(grpc);
                    info!(cert = %self.files.cert.display(), "TLS certificate reloaded.");
                }
                (Err(err), _) | (_, Err(err)) => {
                    warn!(error = %err, "New TLS files are unusable; the previous certificate keeps serving.");
                }
            }
        }
    }

    /// Accepts admitted TCP connections and completes up to `max_handshakes`
    /// handshakes at once (more connections are closed at once and counted);
    /// ready streams come out of the returned channel.
    fn accept(
        self: &Arc<Self>,
        listener: TcpListener,
        grpc: bool,
        admission: Admission,
        max_handshakes: usize,
        cancel: CancellationToken,
    ) -> mpsc::Receiver<(TlsStream<Admitted<TcpStream>>, SocketAddr)> {
        let (ready, incoming) = mpsc::channel(128);
        let tls = self.clone();
        let handshakes = Arc::new(tokio::sync::Semaphore::new(max_handshakes.max(1)));
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = cancel.cancelled() => break,
                    tcp = crate::edge::conn::accept_tcp(&listener, &admission) => match tcp {
                        Some(tcp) => tcp,
                        None => break,
                    },
                };
                let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
                    admission.refuse("tls_handshakes");
                    continue;
                };
                let Ok(peer) = tcp.get_ref().peer_addr() else {
                    continue;
                };
                let config = if grpc {
                    tls.grpc.load_full()
                } else {
                    tls.http.load_full()
                };
                let ready = ready.clone();
                // Not tracked: bounded by the handshake timeout.
                tokio::spawn(async move {
                    let result = tokio::time::timeout(
                        HANDSHAKE_TIMEOUT,
                        TlsAcceptor::from(config).accept(tcp),
                    )
                    .await;
                    drop(handshake);
                    match result {
                        Ok(Ok(stream)) => {
                            let _ = ready.send((stream, peer)).await;
                        }
                        Ok(Err(err)) => debug!(%peer, error = %err, "TLS handshake failed."),
                        Err(_) => debug!(%peer, "TLS handshake timed out."),
                    }
                });
            }
        });
        incoming
    }

    /// TLS connections for the HTTP server.
    pub fn http_incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        admission: Admission,
        max_handshakes: usize,
        cancel: CancellationToken,
    ) -> TlsIncoming {
        TlsIncoming {
            incoming: self.accept(listener, false, admission, max_handshakes, cancel),
        }
    }

    /// A stream of TLS connections for tonic.
    pub fn grpc_incoming(
        self: &Arc<Self>,
        listener: TcpListener,
        admission: Admission,
        max_handshakes: usize,
        cancel: CancellationToken,
    ) -> impl futures::Stream<Item = Result<TlsConnection, std::io::Error>> + Send + 'static {
        let incoming = self.accept(listener, true, admission, max_handshakes, cancel);
        futures::stream::unfold(incoming, |mut incoming| async move {
            incoming
                .recv()
                .await
                .map(|(stream, peer)| (Ok(TlsConnection { stream, peer }), incoming))
        })
    }
}

pub struct TlsIncoming {
    incoming: mpsc::Receiver<(TlsStream<Admitted<TcpStream>>, SocketAddr)>,
}

impl crate::edge::conn::Incoming for TlsIncoming {
    type Io = TlsStream<Admitted<TcpStream>>;

    async fn next(&mut self) -> Option<Self::Io> {
        self.incoming.recv().await.map(|(stream, _)| stream)
    }
}

/// A TLS connection as tonic wants it (connection info for request extensions).
pub struct TlsConnection {
    stream: TlsStream<Admitted<TcpStream>>,
    peer: SocketAddr,
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = SocketAddr;
    fn connect_info(&self) -> SocketAddr {
        self.peer
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
