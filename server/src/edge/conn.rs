//! Connection hygiene for the HTTP and gRPC listeners: a cap on open
//! connections per listener (beyond it a connection is closed at once and
//! counted), the HTTP server loop (hyper with a header-read timeout, HTTP/2
//! stream limits and keepalive pings, graceful shutdown), and the accept loop
//! that feeds tonic. TLS handshakes are bounded in `tls`, after admission here.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Limits on connections, from flags.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// Open connections per listener; more are closed at once.
    pub max_connections: usize,
    /// HTTP/1: time to send a request's headers, counted from when the
    /// connection starts waiting for them (so it also closes idle keep-alive
    /// connections after this long).
    pub header_read_timeout: Duration,
    /// HTTP/2 and gRPC: concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 and gRPC: ping an idle peer this often; drop it when a ping goes unanswered.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// TLS handshakes in progress per listener; more connections are closed at once.
    pub max_tls_handshakes: usize,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        ConnectionSettings {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(30),
            max_concurrent_streams: 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_tls_handshakes: 256,
        }
    }
}

/// Admission to one listener: a permit per open connection.
#[derive(Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    listener: &'static str,
    metrics: crate::metrics::Metrics,
}

impl Admission {
    pub fn new(listener: &'static str, limit: usize, metrics: crate::metrics::Metrics) -> Self {
        metrics.expose_listener(listener);
        Admission {
            permits: Arc::new(Semaphore::new(limit.max(1))),
            listener,
            metrics,
        }
    }

    /// Wraps an accepted connection if there is room; `None` means: close it now.
    pub fn admit<Io>(&self, io: Io) -> Option<Admitted<Io>> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics.connection_opened(self.listener);
                Some(Admitted {
                    io,
                    _permit: permit,
                    _closed: Closed {
                        listener: self.listener,
                        metrics: self.metrics.clone(),
                    },
                })
            }
            Err(_) => {
                self.refuse("max_connections");
                None
            }
        }
    }

    /// Counts a connection closed unserved, and says so at a bounded rate.
    pub fn refuse(&self, reason: &'static str) {
        let refused = self.metrics.connection_refused(self.listener, reason);
        if refused.is_power_of_two() {
            warn!(
                listener = self.listener,
                reason, refused, "Connection refused: the listener is at its limit."
            );
        }
    }

    pub fn listener(&self) -> &'static str {
        self.listener
    }
}

struct Closed {
    listener: &'static str,
    metrics: crate::metrics::Metrics,
}

impl Drop for Closed {
    fn drop(&mut self) {
        self.metrics.connection_closed(self.listener);
    }
}

/// An admitted connection: its permit and gauge go when it closes.
pub struct Admitted<Io> {
    io: Io,
    _permit: OwnedSemaphorePermit,
    _closed: Closed,
}

impl<Io> Admitted<Io> {
    pub fn get_ref(&self) -> &Io {
        &self.io
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Admitted<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for Admitted<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for Admitted<TcpStream> {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Accepts TCP connections: admitted ones come back, others are closed at once.
pub async fn accept_tcp(
    listener: &TcpListener,
    admission: &Admission,
) -> Option<Admitted<TcpStream>> {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                // Small request/response exchanges: Nagle's algorithm would add ~40 ms stalls.
                let _ = tcp.set_nodelay(true);
                if let Some(admitted) = admission.admit(tcp) {
                    return Some(admitted);
                }
            }
            Err(err) => {
                // Out of file descriptors, mostly: back off instead of spinning.
                debug!(error = %err, "Accept failed.");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The gRPC listener's admitted connections, for tonic.
pub fn grpc_incoming(
    listener: TcpListener,
    admission: Admission,
) -> impl futures::Stream<Item = Result<Admitted<TcpStream>, std::io::Error>> + Send + 'static {
    futures::stream::unfold((listener, admission), |(listener, admission)| async move {
        let admitted = accept_tcp(&listener, &admission).await?;
        Some((Ok(admitted), (listener, admission)))
    })
}

/// A source of connections for `serve_http`: plain TCP or TLS.
pub trait Incoming: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection; `None` once the listener is done.
    fn next(&mut self) -> impl std::future::Future<Output = Option<Self::Io>> + Send;
}

/// Plain TCP, admitted.
pub struct TcpIncoming {
    pub listener: TcpListener,
    pub admission: Admission,
}

impl Incoming for TcpIncoming {
    type Io = Admitted<TcpStream>;
    async fn next(&mut self) -> Option<Self::Io> {
        accept_tcp(&self.listener, &self.admission).await
    }
}

/// Serves HTTP/1 and HTTP/2 on `incoming` until `stop`, then lets open
/// connections finish their requests (the caller bounds how long).
pub async fn serve_http(
    mut incoming: impl Incoming,
    router: axum::Router,
    settings: ConnectionSettings,
    stop: CancellationToken,
) -> Result<(), std::io::Error> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .keep_alive_interval(Some(settings.keepalive_interval))
        .keep_alive_timeout(settings.keepalive_timeout);
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let io = tokio::select! {
            _ = stop.cancelled() => break,
            io = incoming.next() => match io {
                Some(io) => io,
                None => break,
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(error = %err, "HTTP connection ended with an error.");
            }
        });
    }
    drop(incoming);
    graceful.shutdown().await;
    Ok(())
}
