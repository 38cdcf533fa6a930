//! The client helper (`shadowsteer client run`): a WireGuard client on boringtun that finds its
//! appliance through the steering DNS and follows the answer.
//!
//! - [`probe`] (pure): the probe stream and its exact measurements.
//! - [`resolve`] (pure + shell): DNS queries for the per-client name, answers with their TTL.
//! - [`dot`] (shell): the same queries over TLS to the steering server (RFC 7858).
//! - [`standby`] (pure): the active and standby sessions, and when to switch.
//! - [`run`] (shell): the UDP socket, the tunnel, roaming, TUN or probe inside, reports.
//! - [`timeline`]: the probe stream as it happened, for programs embedding the helper (demo).

pub mod dot;
pub mod probe;
pub mod resolve;
pub mod run;
pub mod standby;
pub mod timeline;
