//! The UDP fast path: one OS thread per worker, each with its own `SO_REUSEPORT` socket per
//! listen address, reading and writing up to [`BATCH`] datagrams per system call
//! (`recvmmsg`/`sendmmsg`). No task per packet, no allocation per packet: the kernel spreads
//! packets over the sockets, each thread answers from the served zones in force.
//!
//! Rate limiting happens after a query is answered ([`super::rrl`] keys buckets by the kind of
//! response); every worker counts seconds from one shared epoch, so they agree on the current
//! second of the buckets they share.
//!
//! A worker that panics is restarted on its thread with fresh buffers (the batch in hand is
//! lost), counted in [`Stats::restarts`] and logged; the other workers never notice.
//!
//! Shutdown: sockets have a read timeout ([`POLL`]); a worker checks the token between batches
//! and returns after finishing the batch in hand.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::respond::{self, Context, Transport};
use super::rrl::{RateLimiter, Verdict};
use super::stats::Stats;
use super::zone::ServedZones;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Largest query read; longer datagrams are dropped (no legitimate query comes close).
const MAX_QUERY: usize = 4096;
/// How long a worker blocks before checking for shutdown.
pub const POLL: Duration = Duration::from_millis(200);
/// Least time between two log lines about worker panics (a packet of death repeated by an
/// attacker must not flood the log; the counter has every one).
const PANIC_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Binds one UDP socket with `SO_REUSEPORT` on `addr`.
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = crate::reuseport::socket(addr, true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
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
    /// What to answer from; the publisher swaps it whole.
    pub served: Arc<ArcSwap<ServedZones>>,
    /// The rate limiter shared by all workers.
    pub limiter: Arc<RateLimiter>,
    /// Start of the seconds the rate limiter counts: one instant for every worker, so that
    /// workers sharing a bucket agree on the current second.
    pub epoch: Instant,
    /// This worker's counters.
    pub stats: Arc<Stats>,
    /// Stop signal.
    pub shutdown: CancellationToken,
    /// Test hook: when set, the worker panics at its next batch (and clears it).
    #[cfg(test)]
    pub fault: Arc<std::sync::atomic::AtomicBool>,
}

/// The text of a panic payload.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

impl Worker {
    /// Serves `socket` until shutdown. Blocking: run it on a thread of its own. A panic while
    /// answering restarts the loop (with new buffers) instead of ending the thread.
    pub fn run(self, socket: UdpSocket) {
        let mut last_log: Option<Instant> = None;
        let mut unlogged = 0u64;
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.serve(&socket))) {
                Ok(()) => return,
                Err(payload) => {
                    self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                    if last_log.is_none_or(|t| t.elapsed() >= PANIC_LOG_INTERVAL) {
                        tracing::error!(
                            panic = panic_text(payload.as_ref()),
                            restarts_not_logged = unlogged,
                            "UDP worker panicked; restarting it (the datagrams of its batch are lost)"
                        );
                        last_log = Some(Instant::now());
                        unlogged = 0;
                    } else {
                        unlogged += 1;
                    }
                    if self.shutdown.is_cancelled() {
                        return;
                    }
                }
            }
        }
    }

    /// The receive-answer-send loop.
    fn serve(&self, socket: &UdpSocket) {
        let fd = socket.as_raw_fd();
        let mut batch = Batch::new();
        while !self.shutdown.is_cancelled() {
            let n = match batch.receive(fd) {
                Ok(n) => n,
                Err(e) => {
                    match e.kind() {
                        io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted => {}
                        _ => {
                            tracing::warn!(error = %e, "UDP receive failed");
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    continue;
                }
            };
            #[cfg(test)]
            if self.fault.swap(false, Ordering::Relaxed) {
                panic!("injected fault");
            }
            let t0 = Instant::now();
            let m = self.answer(&mut batch, n);
            batch.send(fd, m);
            if n > 0 {
                self.stats
                    .record_latency(t0.elapsed().as_nanos() as u64, n as u64);
            }
        }
    }

    /// Answers the `n` datagrams received into `batch`, then rate-limits the answers; returns
    /// how many responses are queued for sending.
    fn answer(&self, batch: &mut Batch, n: usize) -> usize {
        let now = self.epoch.elapsed().as_secs();
        let served = self.served.load();
        let mut m = 0usize;
        for i in 0..n {
            let len = batch.hdrs[i].msg_len as usize;
            if batch.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0 || len > MAX_QUERY {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some(src) = to_socket_addr(&batch.addrs[i]) else {
                continue;
            };
            let mut ctx = Context {
                transport: Transport::Udp,
                entropy: src.port(),
                slip: false,
            };
            let packet = &batch.inbufs[i][..len];
            let out = &mut batch.outbufs[i];
            let outcome = respond::respond(packet, &ctx, &served, out);
            self.stats.record(&outcome);
            if !outcome.send {
                continue;
            }
            match self.limiter.check(src.ip(), &outcome.rrl, now) {
                Verdict::Send => {}
                Verdict::Slip => {
                    self.stats.record_limited(true);
                    ctx.slip = true;
                    respond::respond(packet, &ctx, &served, out);
                }
                Verdict::Drop => {
                    self.stats.record_limited(false);
                    continue;
                }
            }
            batch.queue(m, i);
            m += 1;
        }
        m
    }
}

/// The buffers and message headers of one batch, allocated once per worker (re-allocated
/// after a panic).
struct Batch {
    inbufs: Vec<[u8; MAX_QUERY]>,
    outbufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    out_iovs: Vec<libc::iovec>,
    out_hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Self {
        let iov = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        // SAFETY (for the zeroed values): these are plain C structs for which all-zero is valid.
        let zeroed_hdrs = || -> Vec<libc::mmsghdr> {
            (0..BATCH)
                .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
                .collect()
        };
        Self {
            inbufs: vec![[0u8; MAX_QUERY]; BATCH],
            outbufs: (0..BATCH).map(|_| Vec::with_capacity(4096)).collect(),
            addrs: (0..BATCH)
                .map(|_| unsafe { MaybeUninit::zeroed().assume_init() })
                .collect(),
            iovs: vec![iov; BATCH],
            hdrs: zeroed_hdrs(),
            out_iovs: vec![iov; BATCH],
            out_hdrs: zeroed_hdrs(),
        }
    }

    /// Receives up to [`BATCH`] datagrams (blocking up to [`POLL`] for the first).
    fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.inbufs[i].as_mut_ptr().cast(),
                iov_len: MAX_QUERY,
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            self.hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at live buffers of the stated sizes, owned by `self` and
        // not touched until the call returns.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Queues the response in `outbufs[i]` as outgoing message `m`, to the sender of datagram
    /// `i`.
    fn queue(&mut self, m: usize, i: usize) {
        self.out_iovs[m] = libc::iovec {
            iov_base: self.outbufs[i].as_mut_ptr().cast(),
            iov_len: self.outbufs[i].len(),
        };
        let h = &mut self.out_hdrs[m].msg_hdr;
        h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = self.hdrs[i].msg_hdr.msg_namelen;
        h.msg_iov = &mut self.out_iovs[m];
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
    }

    /// Sends the first `m` queued responses.
    fn send(&mut self, fd: RawFd, m: usize) {
        let mut sent = 0usize;
        while sent < m {
            // SAFETY: headers 0..m point at live response buffers and addresses.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.out_hdrs.as_mut_ptr().add(sent),
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
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::dns::catalog;
    use crate::dns::rrl::Limits;

    fn soa_query(id: u16) -> Vec<u8> {
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        q.extend_from_slice(b"\x03vpn\x04test\x00\x00\x06\x00\x01");
        q
    }

    /// A worker on a real loopback socket: after a panic in the middle of its loop it is
    /// restarted, counted, and keeps answering.
    #[test]
    fn a_panicking_worker_is_restarted_and_keeps_answering() {
        let text = "[dns]\nlisten = [\"127.0.0.1:1\"]\n[[dns.zones]]\nname = \"vpn.test\"\n";
        let cfg: crate::config::SteeringConfig =
            crate::config::parse(Path::new("t.toml"), text).unwrap();
        let statics = Arc::new(catalog::build(&cfg.dns, 1, &|_| unreachable!()).unwrap());
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let stats = Arc::new(Stats::default());
        let fault = Arc::new(AtomicBool::new(false));
        let shutdown = CancellationToken::new();
        let worker = Worker {
            served: Arc::new(ArcSwap::from_pointee(ServedZones::empty(statics))),
            limiter: Arc::new(RateLimiter::new(
                Limits::from_config(&cfg.dns.rate_limit),
                9,
            )),
            epoch: Instant::now(),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
            fault: fault.clone(),
        };
        let thread = std::thread::spawn(move || worker.run(socket));
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        // Asks until an answer with our id arrives (a query sent while the worker panics is
        // lost, like any datagram).
        let ask = |id: u16| {
            for _ in 0..50 {
                client.send_to(&soa_query(id), addr).unwrap();
                let mut buf = [0u8; 512];
                if let Ok((n, _)) = client.recv_from(&mut buf)
                    && n > 2
                    && buf[..2] == id.to_be_bytes()
                {
                    return true;
                }
            }
            false
        };
        assert!(ask(1));
        for round in 0..3u16 {
            fault.store(true, Ordering::Relaxed);
            client.send_to(&soa_query(100 + round), addr).unwrap();
            assert!(ask(200 + round), "no answer after panic {round}");
        }
        assert_eq!(stats.restarts.load(Ordering::Relaxed), 3);
        assert!(!thread.is_finished());
        shutdown.cancel();
        thread.join().unwrap();
    }
}
