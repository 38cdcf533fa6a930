//! DNS over TCP (RFC 7766): for truncated answers and clients that prefer it; and DNS over
//! TLS (RFC 7858), the same exchange inside a TLS session, on listeners of its own.
//!
//! Bounded: at most `max_connections` at once (further connections are closed at once), each
//! closed after `idle_timeout` without a complete query, queries answered one after another
//! (a client can pipeline; answers come back in order). No rate limiting: a TCP client has
//! completed a handshake, so it cannot be a spoofed reflection victim. A TLS connection takes
//! a TCP slot from accept on, and has `idle_timeout` to complete its handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::respond::{self, Context, Transport};
use super::status::{DnsStatus, HandshakeFailure};
use super::zone::ServedZones;

/// Binds a TCP listener on `addr` (address reuse on, so a restart does not wait for
/// TIME_WAIT).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Shared state of the TCP servers.
#[derive(Clone)]
pub struct TcpServer {
    /// What to answer from; the publisher swaps it whole.
    pub served: Arc<ArcSwap<ServedZones>>,
    /// Counters and connection slots (shared by all TCP servers and connections).
    pub status: Arc<DnsStatus>,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// With an acceptor, a listener for DNS over TLS: each connection is a TLS session first.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl TcpServer {
    /// Accepts connections on `listener` until shutdown; waits for open connections to finish
    /// their current query.
    pub async fn run(self, listener: TcpListener, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(permit) = self.status.admit_tcp() else {
                drop(stream);
                continue;
            };
            let server = self.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                if let Err(e) = server.connection(stream, shutdown).await {
                    tracing::debug!(%peer, error = %e, "TCP connection ended");
                }
                drop(permit);
            });
        }
        tracker.close();
        tracker.wait().await;
    }

    /// One accepted connection: the TLS handshake first on a TLS listener, then queries.
    async fn connection(
        &self,
        stream: TcpStream,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        let entropy = stream.peer_addr().map(|a| a.port()).unwrap_or(0);
        let Some(acceptor) = &self.tls else {
            return self.serve_queries(stream, entropy, shutdown).await;
        };
        let handshake = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            h = tokio::time::timeout(self.idle_timeout, acceptor.accept(stream)) => h,
        };
        let handshake = handshake.unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            ))
        });
        match handshake {
            Ok(tls) => self.serve_queries(tls, entropy, shutdown).await,
            Err(e) => {
                self.status.tls_handshake_failed(HandshakeFailure::of(&e));
                Err(e)
            }
        }
    }

    /// Answers `stream`'s queries, then closes it politely: a FIN, and over TLS a
    /// close_notify first, so a client can tell a closed session from a cut one.
    async fn serve_queries<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        entropy: u16,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let served = self.queries(&mut stream, entropy, shutdown).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
        served
    }

    /// Length-prefixed queries, answered in order, until the peer closes, idles or errs.
    async fn queries<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        entropy: u16,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let mut query = vec![0u8; u16::MAX as usize];
        let mut out = Vec::with_capacity(4096);
        loop {
            let mut len = [0u8; 2];
            let read = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                r = tokio::time::timeout(self.idle_timeout, stream.read_exact(&mut len)) => r,
            };
            match read {
                Err(_) => return Ok(()),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(r) => r?,
            };
            let n = usize::from(u16::from_be_bytes(len));
            let body = &mut query[..n];
            match tokio::time::timeout(self.idle_timeout, stream.read_exact(body)).await {
                Err(_) => return Ok(()),
                Ok(r) => r?,
            };
            let started = std::time::Instant::now();
            let ctx = Context {
                transport: Transport::Tcp,
                entropy,
                slip: false,
            };
            let outcome = respond::respond(body, &ctx, &self.served.load(), &mut out);
            let stats = self.status.tcp_stats();
            stats.record(&outcome);
            stats.record_latency(started.elapsed().as_nanos() as u64, 1);
            if !outcome.send {
                // Nothing sensible to say to this peer.
                return Ok(());
            }
            let Ok(rlen) = u16::try_from(out.len()) else {
                return Ok(());
            };
            let mut frame = Vec::with_capacity(out.len() + 2);
            frame.extend_from_slice(&rlen.to_be_bytes());
            frame.extend_from_slice(&out);
            // A TLS stream holds what it is given until flushed.
            tokio::time::timeout(self.idle_timeout, async {
                stream.write_all(&frame).await?;
                stream.flush().await
            })
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        }
    }
}
