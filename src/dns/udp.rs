//! The UDP fast path: one OS thread per worker, each with its own `SO_REUSEPORT` socket per
//! listen address, reading and writing up to [`BATCH`] datagrams per system call
//! (`recvmmsg`/`sendmmsg`). No task per packet, no allocation per packet: the kernel spreads
//! packets over the sockets, each thread answers from the current snapshot.
//!
//! Shutdown: sockets have a read timeout ([`POLL`]); a worker checks the token between batches
//! and returns after finishing the batch in hand.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;

use super::respond::{self, Context, Transport};
use super::rrl::{RateLimiter, Verdict};
use super::stats::Stats;
use super::zone::Snapshot;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Largest query read; longer datagrams are dropped (no legitimate query comes close).
const MAX_QUERY: usize = 4096;
/// How long a worker blocks before checking for shutdown.
pub const POLL: Duration = Duration::from_millis(200);

/// Binds one UDP socket with `SO_REUSEPORT` on `addr`.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    // Absorb bursts while a worker is descheduled; failures (limits) are not fatal.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_read_timeout(Some(POLL))?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn to_socket_addr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in, which it can contain.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// What a worker needs besides its socket.
pub struct Worker {
    /// The current snapshot.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// The rate limiter shared by all workers.
    pub limiter: Arc<RateLimiter>,
    /// This worker's counters.
    pub stats: Arc<Stats>,
    /// Stop signal.
    pub shutdown: CancellationToken,
}

impl Worker {
    /// Serves `socket` until shutdown. Blocking: run it on a thread of its own.
    pub fn run(self, socket: UdpSocket) {
        let fd = socket.as_raw_fd();
        let started = Instant::now();
        let mut inbufs = vec![[0u8; MAX_QUERY]; BATCH];
        let mut outbufs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(4096)).collect();
        // SAFETY (for the zeroed values): these are plain C structs for which all-zero is valid.
        let mut addrs: Vec<libc::sockaddr_storage> = (0..BATCH)
            .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
            .collect();
        let mut iovs: Vec<libc::iovec> = (0..BATCH)
            .map(|_| libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            })
            .collect();
        let mut hdrs: Vec<libc::mmsghdr> = (0..BATCH)
            .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
            .collect();
        let mut out_iovs = iovs.clone();
        let mut out_hdrs: Vec<libc::mmsghdr> = (0..BATCH)
            .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
            .collect();
        while !self.shutdown.is_cancelled() {
            for i in 0..BATCH {
                iovs[i] = libc::iovec {
                    iov_base: inbufs[i].as_mut_ptr().cast(),
                    iov_len: MAX_QUERY,
                };
                let h = &mut hdrs[i].msg_hdr;
                h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_iov = &mut iovs[i];
                h.msg_iovlen = 1;
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
                h.msg_flags = 0;
                hdrs[i].msg_len = 0;
            }
            // SAFETY: every header points at live buffers of the stated sizes, owned by this
            // frame and not touched until the call returns.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted => continue,
                    _ => {
                        tracing::warn!(error = %e, "UDP receive failed");
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
            }
            let n = n as usize;
            let t0 = Instant::now();
            let now = started.elapsed().as_secs();
            let snap = self.snapshot.load();
            let mut m = 0usize;
            for i in 0..n {
                let len = hdrs[i].msg_len as usize;
                if hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > MAX_QUERY {
                    self.stats
                        .dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    continue;
                }
                let Some(src) = to_socket_addr(&addrs[i]) else {
                    continue;
                };
                let slip = match self.limiter.check(src.ip(), now) {
                    Verdict::Send => false,
                    Verdict::Slip => {
                        self.stats.record_limited(true);
                        true
                    }
                    Verdict::Drop => {
                        self.stats.record_limited(false);
                        continue;
                    }
                };
                let ctx = Context {
                    transport: Transport::Udp,
                    entropy: src.port(),
                    slip,
                };
                let outcome = respond::respond(&inbufs[i][..len], &ctx, &snap, &mut outbufs[i]);
                self.stats.record(&outcome);
                if !outcome.send {
                    continue;
                }
                out_iovs[m] = libc::iovec {
                    iov_base: outbufs[i].as_mut_ptr().cast(),
                    iov_len: outbufs[i].len(),
                };
                let h = &mut out_hdrs[m].msg_hdr;
                h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_namelen = hdrs[i].msg_hdr.msg_namelen;
                h.msg_iov = &mut out_iovs[m];
                h.msg_iovlen = 1;
                h.msg_control = std::ptr::null_mut();
                h.msg_controllen = 0;
                h.msg_flags = 0;
                m += 1;
            }
            drop(snap);
            let mut sent = 0usize;
            while sent < m {
                // SAFETY: headers 0..m point at live response buffers and addresses.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        out_hdrs.as_mut_ptr().add(sent),
                        (m - sent) as libc::c_uint,
                        0,
                    )
                };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        // This datagram cannot go (e.g. unreachable source): skip it.
                        sent += 1;
                    }
                } else {
                    sent += (r as usize).max(1);
                }
            }
            if n > 0 {
                self.stats
                    .record_latency(t0.elapsed().as_nanos() as u64, n as u64);
            }
        }
    }
}
