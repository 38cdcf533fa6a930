//! A Linux TUN device: IP packets between the data plane and the host's network stack.
//!
//! The device is created with `TUNSETIFF` (no packet information header) and configured with
//! iproute2 (`ip addr`, `ip link`), which also handles IPv6 addresses without a netlink
//! dependency. Needs `CAP_NET_ADMIN` and `/dev/net/tun`.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

use tokio::io::unix::AsyncFd;

use super::TunnelError;

/// An open TUN device.
#[derive(Debug)]
pub struct Tun {
    fd: AsyncFd<OwnedFd>,
    name: String,
}

impl Tun {
    /// Creates (or attaches to) the TUN interface `name`, gives it `address/prefix`, sets `mtu`
    /// and brings it up.
    pub fn create(name: &str, address: IpAddr, prefix: u8, mtu: u16) -> Result<Self, TunnelError> {
        let err = |message: String| TunnelError::Tun {
            name: name.to_owned(),
            message,
        };
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(err("interface names have 1 to 15 characters".into()));
        }
        // SAFETY: the path is a valid NUL-terminated string; the result is checked.
        let raw = unsafe {
            libc::open(
                c"/dev/net/tun".as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(err(format!(
                "cannot open /dev/net/tun: {}",
                io::Error::last_os_error()
            )));
        }
        // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF takes a pointer to an ifreq that lives across the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            return Err(err(format!(
                "TUNSETIFF failed: {}",
                io::Error::last_os_error()
            )));
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd, which owns it until dropped, so the
        // descriptor stays open and unchanged for the AsyncFd's lifetime.
        let fd = unsafe { AsyncFd::register(fd) }
            .map_err(|e| err(format!("cannot poll the device: {e}")))?;
        let ip = |args: &[&str]| -> Result<(), TunnelError> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| err(format!("cannot run `ip` (install iproute2): {e}")))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(err(format!(
                    "`ip {}` failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        };
        let cidr = format!("{address}/{prefix}");
        ip(&["addr", "replace", &cidr, "dev", name])?;
        ip(&["link", "set", "dev", name, "mtu", &mtu.to_string(), "up"])?;
        Ok(Self {
            fd,
            name: name.to_owned(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| read_fd(fd.get_ref().as_raw_fd(), buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads one packet if one is waiting.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        read_fd(self.fd.get_ref().as_raw_fd(), buf)
    }

    /// Writes one packet without waiting; a full queue drops it (as a NIC would).
    pub fn try_send(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: the buffer is valid for `packet.len()` bytes.
        let n = unsafe {
            libc::write(
                self.fd.get_ref().as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

fn read_fd(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid and writable for `buf.len()` bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
