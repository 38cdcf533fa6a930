//! `demo --stock-clients`: stock `wireguard-go` clients, each in a network namespace of its
//! own, instead of the client helper. Needs root, `ip`, `wireguard-go` and `wg`.
//!
//! Layout: the appliances' addresses (10.215.0.11, ...) are added to `lo` in the root
//! namespace (a dummy interface would do, but its module is not everywhere); each client namespace reaches them over a veth pair (a /30 from 10.216.0.0/16)
//! with its default route through the root side. Inside, `wireguard-go` runs the tunnel with
//! the client's key, the service's public key and the primary's endpoint, exactly as
//! `shadowsteer client config` writes it; the probe stream is an ordinary UDP socket of that
//! namespace sending to the appliance's echo port through the tunnel. A stock client never
//! re-resolves DNS: it moves only when an appliance of its pair initiates a handshake, which
//! is what takeover does. Where its tunnel goes is read from the sessions' holders.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use tokio_util::sync::CancellationToken;

use super::configs::{LOSS_TIMEOUT, PROBE_RATE};
use crate::client::probe::ProbeStream;
use crate::client::timeline::Timeline;
use crate::domain::{PublicKey, SecretKey};

/// The appliance tunnel address the echo responder answers on (first host of 10.77.0.0/16).
const APPLIANCE_TUNNEL_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);

/// Why stock clients cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("--stock-clients needs root (network namespaces)".into());
    }
    for tool in ["ip", "wireguard-go", "wg"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            return Some(format!("--stock-clients needs `{tool}` on the PATH"));
        }
    }
    None
}

/// The address of appliance slot `k` (0-based) with stock clients.
pub fn appliance_ip(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 215, 0, u8::try_from(11 + k).unwrap_or(250))
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The network of a run: the appliances' addresses and the clients' namespaces.
pub struct StockNet {
    tag: String,
    addresses: Vec<String>,
    namespaces: Vec<String>,
    wireguard: Vec<Child>,
    /// `wireguard-go` leaves its control socket behind when killed.
    sockets: Vec<PathBuf>,
}

/// Runs of this process so far: each run's names differ from the last's.
static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl StockNet {
    /// Adds the `appliances` addresses to the root namespace's `lo`.
    pub fn create(appliances: &[Ipv4Addr]) -> anyhow::Result<Self> {
        let mut net = Self {
            tag: format!(
                "{}{}",
                std::process::id() % 100_000,
                RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10
            ),
            addresses: Vec::new(),
            namespaces: Vec::new(),
            wireguard: Vec::new(),
            sockets: Vec::new(),
        };
        for a in appliances {
            let cidr = format!("{a}/32");
            ip(&["addr", "add", &cidr, "dev", "lo"])?;
            net.addresses.push(cidr);
        }
        Ok(net)
    }

    /// Starts client `k`: its namespace, veth, `wireguard-go` towards `primary`.
    pub fn start_client(
        &mut self,
        k: usize,
        key_file: &Path,
        service: &PublicKey,
        primary: SocketAddr,
        tunnel_ip: Ipv4Addr,
    ) -> anyhow::Result<String> {
        let ns = format!("sd{}c{k}", self.tag);
        let host = format!("sd{}h{k}", self.tag);
        let inner = format!("sd{}i{k}", self.tag);
        let wg = format!("sd{}w{k}", self.tag);
        let base = u32::from(Ipv4Addr::new(10, 216, 0, 0)) + 4 * u32::try_from(k)?;
        let (h, c) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        ip(&["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        ip(&["link", "add", &host, "type", "veth", "peer", "name", &inner])?;
        ip(&["link", "set", &inner, "netns", &ns])?;
        ip(&["addr", "add", &format!("{h}/30"), "dev", &host])?;
        ip(&["link", "set", &host, "up"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{c}/30"), "dev", &inner])?;
        ip(&["-n", &ns, "link", "set", &inner, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "route", "add", "default", "via", &h.to_string()])?;
        let sock = PathBuf::from(format!("/var/run/wireguard/{wg}.sock"));
        let _ = std::fs::remove_file(&sock);
        self.sockets.push(sock.clone());
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "wireguard-go", "-f", &wg])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wireguard-go")?;
        self.wireguard.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if Instant::now() > deadline {
                bail!("wireguard-go did not start for client {k}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "wg", "set", &wg, "private-key"])
            .arg(key_file)
            .args([
                "peer",
                &service.to_base64(),
                "endpoint",
                &primary.to_string(),
            ])
            .args(["allowed-ips", "10.77.0.0/16"])
            .stdin(Stdio::null())
            .output()
            .context("running wg")?;
        if !out.status.success() {
            bail!("wg set: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{tunnel_ip}/16"),
            "dev",
            &wg,
        ])?;
        ip(&["-n", &ns, "link", "set", &wg, "up"])?;
        Ok(ns)
    }

    /// Removes every namespace, interface and `wireguard-go` of the run.
    pub fn remove(&mut self) {
        for mut c in self.wireguard.drain(..) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for sock in self.sockets.drain(..) {
            let _ = std::fs::remove_file(sock);
        }
        for ns in self.namespaces.drain(..) {
            let _ = ip(&["netns", "del", &ns]);
        }
        for cidr in self.addresses.drain(..) {
            let _ = ip(&["addr", "del", &cidr, "dev", "lo"]);
        }
    }
}

impl Drop for StockNet {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A UDP socket created inside namespace `ns` (a thread enters it, binds, and ends; the
/// socket stays in the namespace it was made in).
fn socket_in(ns: &str, bind: SocketAddr) -> anyhow::Result<UdpSocket> {
    let path = PathBuf::from(format!("/var/run/netns/{ns}"));
    std::thread::spawn(move || -> anyhow::Result<UdpSocket> {
        let f =
            std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: setns on this short-lived thread only; the fd is valid while `f` lives.
        let rc = unsafe {
            libc::setns(
                std::os::unix::io::AsRawFd::as_raw_fd(&f),
                libc::CLONE_NEWNET,
            )
        };
        if rc != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        let s = UdpSocket::bind(bind)?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .join()
    .map_err(|_| anyhow!("the namespace thread panicked"))?
}

/// Runs a probe stream from namespace `ns` through its tunnel until `stop`, recording into
/// `timeline`.
pub async fn probe(
    ns: String,
    tunnel_ip: Ipv4Addr,
    timeline: Arc<Timeline>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let std_socket = socket_in(&ns, SocketAddr::from((tunnel_ip, 0)))?;
    let socket = tokio::net::UdpSocket::from_std(std_socket)?;
    socket
        .connect(SocketAddr::from((
            APPLIANCE_TUNNEL_IP,
            crate::client::probe::ECHO_PORT,
        )))
        .await?;
    let mut stream = ProbeStream::new(Instant::now(), 64, LOSS_TIMEOUT);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / PROBE_RATE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; 64];
    let mut stop_at: Option<tokio::time::Instant> = None;
    loop {
        let sending = stop_at.is_none();
        tokio::select! {
            () = stop.cancelled(), if sending => {
                stop_at = Some(tokio::time::Instant::now() + LOSS_TIMEOUT);
            }
            () = tokio::time::sleep_until(stop_at.unwrap_or_else(tokio::time::Instant::now)), if !sending => break,
            _ = tick.tick(), if sending => {
                let now = Instant::now();
                if let Some(n) = stream.next_probe(now, &mut out) {
                    // A send can fail while the tunnel has no session yet; that probe is lost.
                    let _ = socket.send(&out[..n]).await;
                    timeline.sent(now);
                }
            }
            r = socket.recv(&mut buf) => {
                let Ok(n) = r else { continue };
                let now = Instant::now();
                let sent = stream.sent_time(&buf[..n]);
                if stream.handle_reply(now, &buf[..n])
                    && let Some(sent) = sent
                {
                    timeline.reply(sent, now);
                }
            }
        }
    }
    Ok(())
}

/// Writes a client key file (for `wg set ... private-key`).
pub fn key_file(dir: &Path, id: &str, key: &SecretKey) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("client-{id}.key"));
    crate::keyfile::write_secret_key(&path, key)
        .map_err(|e| anyhow!("writing a client key: {e}"))?;
    Ok(path)
}
