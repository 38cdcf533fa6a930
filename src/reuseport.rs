//! UDP sockets that several workers bind to one address (`SO_REUSEPORT`): the kernel spreads
//! datagrams over them by a hash of the sender's address and port, so one sender keeps meeting
//! the same socket while it keeps its address. Shared by the DNS server's UDP workers and the
//! WireGuard data plane; each sets blocking mode and binds itself.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Buffer size asked for each way: absorbs bursts while a worker is descheduled. The kernel
/// caps it at `net.core.{r,w}mem_max`; a smaller buffer only costs throughput under bursts.
pub const BUFFER: usize = 4 << 20;

/// A UDP socket for `addr`, not bound yet, with [`BUFFER`]-sized buffers (best effort) and,
/// if `shared`, `SO_REUSEPORT` (one socket alone goes without, so that a second process
/// cannot quietly take half of its traffic).
pub fn socket(addr: SocketAddr, shared: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if shared {
        socket.set_reuse_port(true)?;
    }
    let _ = socket.set_recv_buffer_size(BUFFER);
    let _ = socket.set_send_buffer_size(BUFFER);
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_sockets_bind_one_address_and_lone_ones_do_not() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let first = socket(any, true).unwrap();
        first.bind(&any.into()).unwrap();
        let addr = first.local_addr().unwrap().as_socket().unwrap();
        let second = socket(addr, true).unwrap();
        second.bind(&addr.into()).unwrap();
        let lone = socket(addr, false).unwrap();
        assert!(lone.bind(&addr.into()).is_err());
    }
}
