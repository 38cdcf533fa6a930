//! DNS over TLS to the steering server (RFC 7858): the same questions and answer checks as
//! [`super::resolve`], inside a TLS session whose certificate must chain to the configured
//! CA file and carry the configured name. The session is kept between lookups and opened
//! again when the server has closed it (servers close idle sessions after a few seconds).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::resolve::{Answer, ResolveError, build_query, parse_answer};
use crate::config::ResolverTls;

/// Longest wait for TCP connect and TLS handshake together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for one answer on an open session.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// A steering server reached over TLS.
pub struct DotUpstream {
    server: SocketAddr,
    name: ServerName<'static>,
    connector: TlsConnector,
    /// The open session, if any; one lookup at a time uses it.
    session: Mutex<Option<TlsStream<TcpStream>>>,
}

impl std::fmt::Debug for DotUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DotUpstream({}, {:?})", self.server, self.name)
    }
}

impl DotUpstream {
    /// The server at `server`, verified as `tls` says; an unusable CA file is an error here.
    pub fn new(server: SocketAddr, tls: &ResolverTls) -> Result<Self, ResolveError> {
        let name = ServerName::try_from(tls.server_name.clone())
            .map_err(|_| ResolveError::BadName(tls.server_name.clone()))?;
        let config = crate::tls::client_config(&tls.ca_file)
            .map_err(|e| ResolveError::Tls(format!("resolver_tls.ca_file: {e}")))?;
        Ok(Self {
            server,
            name,
            connector: TlsConnector::from(config),
            session: Mutex::new(None),
        })
    }

    /// Asks for the addresses of `name` (A, then AAAA if there is no A record).
    pub async fn lookup(&self, name: &str) -> Result<Answer, ResolveError> {
        let mut session = self.session.lock().await;
        let mut last = ResolveError::NoAddress(name.to_owned());
        for qtype in [RecordType::A, RecordType::AAAA] {
            let id: u16 = rand::random();
            let query = build_query(name, qtype, id)?;
            let reply = self.exchange(&mut session, &query).await?;
            match parse_answer(&reply, id, name, qtype) {
                Err(e @ ResolveError::NoAddress(_)) => last = e,
                Err(e @ ResolveError::Malformed) => {
                    // Answers come in order: one that is not ours means the stream is lost.
                    *session = None;
                    return Err(e);
                }
                r => return r,
            }
        }
        Err(last)
    }

    /// Sends `query` and reads its answer: on the open session, else (or when the server has
    /// closed that one) on a new one.
    async fn exchange(
        &self,
        session: &mut Option<TlsStream<TcpStream>>,
        query: &[u8],
    ) -> Result<Vec<u8>, ResolveError> {
        if let Some(open) = session.as_mut()
            && let Ok(Ok(reply)) =
                tokio::time::timeout(ANSWER_TIMEOUT, round_trip(open, query)).await
        {
            return Ok(reply);
        }
        *session = None;
        let fresh = session.insert(self.connect().await?);
        match tokio::time::timeout(ANSWER_TIMEOUT, round_trip(fresh, query)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                *session = None;
                Err(ResolveError::Io(format!(
                    "DNS over TLS with {}: {e}",
                    self.server
                )))
            }
            Err(_) => {
                *session = None;
                Err(ResolveError::Timeout(self.server))
            }
        }
    }

    /// A new TCP connection and TLS handshake, the certificate verified.
    async fn connect(&self) -> Result<TlsStream<TcpStream>, ResolveError> {
        let attempt = async {
            let tcp = TcpStream::connect(self.server).await?;
            let _ = tcp.set_nodelay(true);
            self.connector.connect(self.name.clone(), tcp).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(ResolveError::Tls(format!("{}: {e}", self.server))),
            Err(_) => Err(ResolveError::Timeout(self.server)),
        }
    }
}

/// One length-prefixed query and its length-prefixed answer (RFC 7766 framing), on any
/// stream (the DoT bench uses it on sessions it opens itself).
pub async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    query: &[u8],
) -> std::io::Result<Vec<u8>> {
    let len = u16::try_from(query.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "query too long"))?;
    let mut frame = Vec::with_capacity(query.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(query);
    stream.write_all(&frame).await?;
    stream.flush().await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await?;
    Ok(reply)
}

/// Where the helper's lookups go.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// Plain DNS over UDP.
    Udp(SocketAddr),
    /// DNS over TLS.
    Tls(Arc<DotUpstream>),
}

impl Upstream {
    /// Asks for the addresses of `name`.
    pub async fn lookup(&self, name: &str) -> Result<Answer, ResolveError> {
        match self {
            Self::Udp(server) => super::resolve::lookup(*server, name).await,
            Self::Tls(dot) => dot.lookup(name).await,
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Udp(server) => write!(f, "{server}"),
            Self::Tls(dot) => write!(f, "{} over TLS", dot.server),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The framing a DNS-over-TCP server reads and writes: length first, big-endian.
    #[tokio::test]
    async fn a_round_trip_frames_the_query_and_reads_one_framed_answer() {
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        let server = tokio::spawn(async move {
            let mut len = [0u8; 2];
            theirs.read_exact(&mut len).await.unwrap();
            let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
            theirs.read_exact(&mut q).await.unwrap();
            // Answer with the query reversed, then a second frame that must stay unread.
            q.reverse();
            let mut out = (q.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&q);
            out.extend_from_slice(&[0, 1, 9]);
            theirs.write_all(&out).await.unwrap();
            theirs
        });
        let reply = round_trip(&mut ours, b"abc").await.unwrap();
        assert_eq!(reply, b"cba");
        let mut rest = [0u8; 3];
        ours.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, [0, 1, 9]);
        drop(server.await.unwrap());
        // The peer gone mid-answer is an error, never a short answer.
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut buf = [0u8; 5];
            theirs.read_exact(&mut buf).await.unwrap();
            theirs.write_all(&[0, 10, 1, 2]).await.unwrap();
        });
        assert!(round_trip(&mut ours, b"abc").await.is_err());
    }
}
