//! Ports the demo hands its children (steering servers' DNS and admin listeners, the
//! appliances' WireGuard port), picked below the kernel's ephemeral range.
//!
//! The demo writes a port into a child's configuration and the child binds it later. A port
//! from the ephemeral range (what binding port 0 gives) can be handed out by the kernel in
//! between: to a Postgres cluster the demo starts next (whose own port comes from binding port
//! 0), to an outgoing connection, to any socket bound to port 0. That happened: a steering
//! server's admin port went to the next region's Postgres and the server exited. Below the
//! range the kernel hands out nothing on its own.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::bail;
use rand::Rng as _;

/// Lowest port picked.
const LOWEST: u16 = 10_000;
/// The kernel's default first ephemeral port (Linux `ip_local_port_range`).
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

/// The first port of the ephemeral range in `ip_local_port_range`'s text ("32768\t60999").
pub fn ephemeral_start(range: &str) -> Option<u16> {
    range.split_whitespace().next()?.parse().ok()
}

/// The ports to pick from on this machine: `LOWEST` up to the ephemeral range; `None` when the
/// range starts too low to leave room (then ports come from binding port 0, as before).
fn pickable() -> Option<std::ops::Range<u16>> {
    let start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| ephemeral_start(&t))
        .unwrap_or(DEFAULT_EPHEMERAL_START);
    (start > LOWEST + 1_000).then_some(LOWEST..start)
}

/// A port free for both TCP and UDP on `ip`.
pub fn free_tcp_udp(ip: IpAddr) -> anyhow::Result<u16> {
    let free = |port: u16| {
        std::net::TcpListener::bind((ip, port)).is_ok()
            && std::net::UdpSocket::bind((ip, port)).is_ok()
    };
    let kernel = || std::net::TcpListener::bind((ip, 0))?.local_addr();
    choose(free, kernel, 50).map_err(|e| e.context(format!("no free port on {ip}")))
}

/// A UDP port free on every one of `ips`.
pub fn free_udp_on_all(ips: &[Ipv4Addr]) -> anyhow::Result<u16> {
    let free = |port: u16| {
        ips.iter()
            .all(|ip| std::net::UdpSocket::bind((*ip, port)).is_ok())
    };
    let first = ips.first().copied().unwrap_or(Ipv4Addr::LOCALHOST);
    let kernel = || std::net::UdpSocket::bind((first, 0))?.local_addr();
    choose(free, kernel, 100).map_err(|e| e.context("no UDP port free on every appliance address"))
}

/// A port `free` accepts: below the ephemeral range where there is room, else one the kernel
/// gives for port 0 (`kernel`, up to `tries` of them), as before this module.
fn choose(
    free: impl Fn(u16) -> bool,
    kernel: impl Fn() -> std::io::Result<std::net::SocketAddr>,
    tries: usize,
) -> anyhow::Result<u16> {
    if let Some(range) = pickable() {
        return pick(range, free);
    }
    for _ in 0..tries {
        let port = kernel()?.port();
        if free(port) {
            return Ok(port);
        }
    }
    bail!("none of {tries} ports the kernel gave was free")
}

/// A random port of `range` that `free` accepts.
fn pick(range: std::ops::Range<u16>, free: impl Fn(u16) -> bool) -> anyhow::Result<u16> {
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let port = rng.gen_range(range.clone());
        if free(port) {
            return Ok(port);
        }
    }
    bail!("no free port in {}..{}", range.start, range.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ephemeral_range_is_read_from_the_kernels_text() {
        assert_eq!(ephemeral_start("32768\t60999\n"), Some(32_768));
        assert_eq!(ephemeral_start("1024 65535"), Some(1024));
        assert_eq!(ephemeral_start(""), None);
        assert_eq!(ephemeral_start("x 1"), None);
    }

    /// The fault this module mends: a port handed to a child must never be one the kernel
    /// may give away before the child binds it.
    #[test]
    fn a_childs_port_is_free_and_below_the_ephemeral_range() {
        let Some(range) = pickable() else {
            eprintln!("SKIPPED: this machine's ephemeral range starts below {LOWEST}");
            return;
        };
        for _ in 0..20 {
            let tcp_udp = free_tcp_udp(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
            assert!(range.contains(&tcp_udp), "{tcp_udp} is not in {range:?}");
            std::net::TcpListener::bind(("127.0.0.1", tcp_udp)).unwrap();
            std::net::UdpSocket::bind(("127.0.0.1", tcp_udp)).unwrap();
            let udp = free_udp_on_all(&[Ipv4Addr::LOCALHOST]).unwrap();
            assert!(range.contains(&udp), "{udp} is not in {range:?}");
        }
        // A port the kernel gives for port 0 is never one of them.
        let kernel = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(
            !range.contains(&kernel),
            "kernel gave {kernel}, inside {range:?}"
        );
    }

    #[test]
    fn a_port_nothing_accepts_is_an_error() {
        assert!(pick(20_000..20_010, |_| false).is_err());
        assert_eq!(pick(20_000..20_001, |p| p == 20_000).unwrap(), 20_000);
    }
}
