//! WireGuard data plane around boringtun's `noise::Tunn`.
//!
//! - [`peer`] (pure): one peer's `Tunn` with its endpoint, counters, handshake times.
//! - [`router`] (pure): which peer a datagram or inside packet belongs to; the shared handshake
//!   rate limiter (cookie replies under load); what is dropped and why.
//! - [`cookie_budget`] (pure): cookie replies per source address and second, bounded.
//! - [`packet`] (pure): the IP/UDP/ICMP forms the echo responder and the probe stream use.
//! - [`stats`]: counters shared with the telemetry tasks (atomics; the data plane never waits).
//! - [`device`] (shell): the UDP sockets (one per worker), the inside (echo responder or TUN),
//!   timers, peer updates.
//! - [`tun`] (shell): a Linux TUN device.
//!
//! Deliberately left out: boringtun's own `device` module (it owns peers by public key and
//! configures itself through the `wg` control protocol; the agent's peers come from the
//! database, and its receiver indexes must be the clients' stable peer indexes).

pub mod cookie_budget;
pub mod device;
pub mod packet;
pub mod peer;
pub mod router;
pub mod stats;
pub mod tun;

/// Most data-plane workers an agent runs (`tunnel.threads`); per-worker counters are sized by it.
pub const MAX_THREADS: usize = 32;

/// Why the data plane could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// Binding or configuring the UDP socket failed.
    #[error("cannot use UDP address {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Creating or configuring the TUN device failed.
    #[error("TUN device {name}: {message}")]
    Tun {
        /// Interface name.
        name: String,
        /// What failed.
        message: String,
    },
    /// The UDP socket failed while running.
    #[error("UDP socket failed: {0}")]
    Io(#[from] std::io::Error),
}
