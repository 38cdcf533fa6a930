//! The few IP packet forms the data plane builds and reads itself: UDP datagrams and ICMP echo
//! over IPv4 and IPv6. Enough for the echo responder, the client helper's probe stream and the
//! tests; everything else inside the tunnel is carried as opaque bytes.
//!
//! Every parser checks lengths before it reads, so any byte string is safe input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of ICMP.
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IPv6 next-header number of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const UDP_HEADER: usize = 8;

/// The parts of an IP packet the data plane looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol (IPv4 protocol / IPv6 next header).
    pub protocol: u8,
    /// Offset of the transport header.
    pub payload_offset: usize,
    /// Total length of the packet per its header (never more than the bytes given).
    pub total_len: usize,
}

/// Reads the IP header of `packet`; `None` when it is not a well-formed, unfragmented IPv4 or
/// IPv6 packet whose stated length fits the bytes given.
pub fn parse_ip(packet: &[u8]) -> Option<IpHeader> {
    match packet.first()? >> 4 {
        4 => {
            let h = packet.get(..IPV4_HEADER)?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
            // More-fragments flag or a fragment offset: not handled here.
            let frag = u16::from_be_bytes([h[6], h[7]]) & 0x3fff;
            if ihl < IPV4_HEADER || total < ihl || total > packet.len() || frag != 0 {
                return None;
            }
            Some(IpHeader {
                src: IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
                dst: IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
                protocol: h[9],
                payload_offset: ihl,
                total_len: total,
            })
        }
        6 => {
            let h = packet.get(..IPV6_HEADER)?;
            let total = usize::from(u16::from_be_bytes([h[4], h[5]])) + IPV6_HEADER;
            if total > packet.len() {
                return None;
            }
            let src: [u8; 16] = h[8..24].try_into().ok()?;
            let dst: [u8; 16] = h[24..40].try_into().ok()?;
            Some(IpHeader {
                src: IpAddr::V6(Ipv6Addr::from(src)),
                dst: IpAddr::V6(Ipv6Addr::from(dst)),
                protocol: h[6],
                payload_offset: IPV6_HEADER,
                total_len: total,
            })
        }
        _ => None,
    }
}

/// One's-complement sum of `data` (RFC 1071), folded into 16 bits, starting from `initial`.
fn sum16(data: &[u8], initial: u32) -> u32 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// The Internet checksum of `data` after adding `initial`.
fn checksum(data: &[u8], initial: u32) -> u16 {
    !(sum16(data, initial) as u16)
}

/// Sum of the transport pseudo-header for `len` bytes of protocol `proto` between two addresses.
fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut sum = 0u32;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            sum = sum16(&s.octets(), sum);
            sum = sum16(&d.octets(), sum);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sum = sum16(&s.octets(), sum);
            sum = sum16(&d.octets(), sum);
        }
        _ => {}
    }
    // Lengths here are bounded by a 64 KiB packet, so the casts cannot truncate.
    sum16(&[0, proto], sum).wrapping_add(len as u32)
}

/// Writes an IP header for `payload_len` bytes of `protocol` into `buf`; returns its length.
/// `None` when the addresses mix families or `buf` is too short.
fn write_ip_header(
    buf: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    payload_len: usize,
) -> Option<usize> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let total = u16::try_from(IPV4_HEADER + payload_len).ok()?;
            let h = buf.get_mut(..IPV4_HEADER)?;
            h.fill(0);
            h[0] = 0x45;
            h[2..4].copy_from_slice(&total.to_be_bytes());
            h[6] = 0x40; // don't fragment
            h[8] = 64; // ttl
            h[9] = protocol;
            h[12..16].copy_from_slice(&s.octets());
            h[16..20].copy_from_slice(&d.octets());
            let c = checksum(h, 0);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            Some(IPV4_HEADER)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let len = u16::try_from(payload_len).ok()?;
            let h = buf.get_mut(..IPV6_HEADER)?;
            h.fill(0);
            h[0] = 0x60;
            h[4..6].copy_from_slice(&len.to_be_bytes());
            h[6] = protocol;
            h[7] = 64; // hop limit
            h[8..24].copy_from_slice(&s.octets());
            h[24..40].copy_from_slice(&d.octets());
            Some(IPV6_HEADER)
        }
        _ => None,
    }
}

/// A UDP endpoint inside the tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpAddr {
    /// Address.
    pub ip: IpAddr,
    /// Port.
    pub port: u16,
}

/// Builds a UDP datagram from `src` to `dst` carrying `payload` into `buf`; returns the packet
/// length, or `None` when `buf` is too short, the families differ or the packet exceeds 64 KiB.
pub fn build_udp(buf: &mut [u8], src: UdpAddr, dst: UdpAddr, payload: &[u8]) -> Option<usize> {
    let udp_len = UDP_HEADER + payload.len();
    let udp_len16 = u16::try_from(udp_len).ok()?;
    let ip_len = write_ip_header(buf, src.ip, dst.ip, PROTO_UDP, udp_len)?;
    let udp = buf.get_mut(ip_len..ip_len + udp_len)?;
    udp[0..2].copy_from_slice(&src.port.to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len16.to_be_bytes());
    udp[6..8].fill(0);
    udp[8..].copy_from_slice(payload);
    let mut c = checksum(udp, pseudo_header(src.ip, dst.ip, PROTO_UDP, udp_len));
    if c == 0 {
        c = 0xffff;
    }
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    Some(ip_len + udp_len)
}

/// A UDP datagram read from an IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpView<'a> {
    /// Sender.
    pub src: UdpAddr,
    /// Receiver.
    pub dst: UdpAddr,
    /// The datagram's payload.
    pub payload: &'a [u8],
}

/// Reads a UDP datagram; `None` for anything else or a malformed one.
pub fn parse_udp(packet: &[u8]) -> Option<UdpView<'_>> {
    let ip = parse_ip(packet)?;
    if ip.protocol != PROTO_UDP {
        return None;
    }
    let udp = packet.get(ip.payload_offset..ip.total_len)?;
    let h = udp.get(..UDP_HEADER)?;
    let len = usize::from(u16::from_be_bytes([h[4], h[5]]));
    if len < UDP_HEADER || len > udp.len() {
        return None;
    }
    Some(UdpView {
        src: UdpAddr {
            ip: ip.src,
            port: u16::from_be_bytes([h[0], h[1]]),
        },
        dst: UdpAddr {
            ip: ip.dst,
            port: u16::from_be_bytes([h[2], h[3]]),
        },
        payload: udp.get(UDP_HEADER..len)?,
    })
}

/// Builds an ICMP (or ICMPv6) echo request into `buf`; returns the packet length.
pub fn build_echo_request(
    buf: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    ident: u16,
    seq: u16,
    payload: &[u8],
) -> Option<usize> {
    let (proto, kind) = match src {
        IpAddr::V4(_) => (PROTO_ICMP, 8),
        IpAddr::V6(_) => (PROTO_ICMPV6, 128),
    };
    let icmp_len = 8 + payload.len();
    let ip_len = write_ip_header(buf, src, dst, proto, icmp_len)?;
    let icmp = buf.get_mut(ip_len..ip_len + icmp_len)?;
    icmp[0] = kind;
    icmp[1] = 0;
    icmp[2..4].fill(0);
    icmp[4..6].copy_from_slice(&ident.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    icmp[8..].copy_from_slice(payload);
    let initial = match src {
        IpAddr::V4(_) => 0,
        IpAddr::V6(_) => pseudo_header(src, dst, proto, icmp_len),
    };
    let c = checksum(icmp, initial);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    Some(ip_len + icmp_len)
}

/// An ICMP echo reply read from an IP packet: (source, identifier, sequence).
pub fn parse_echo_reply(packet: &[u8]) -> Option<(IpAddr, u16, u16)> {
    let ip = parse_ip(packet)?;
    let icmp = packet.get(ip.payload_offset..ip.total_len)?;
    let h = icmp.get(..8)?;
    let is_reply = matches!((ip.protocol, h[0]), (PROTO_ICMP, 0) | (PROTO_ICMPV6, 129));
    is_reply.then(|| {
        (
            ip.src,
            u16::from_be_bytes([h[4], h[5]]),
            u16::from_be_bytes([h[6], h[7]]),
        )
    })
}

/// Turns an echo request to `own` (ICMP echo, or UDP to port 7) into its reply, in place.
/// Returns the reply's length, or `None` when the packet is not such a request (or is
/// malformed, or its checksum is wrong).
pub fn echo_in_place(packet: &mut [u8], own: IpAddr) -> Option<usize> {
    let ip = parse_ip(packet)?;
    if ip.dst != own {
        return None;
    }
    let (off, end) = (ip.payload_offset, ip.total_len);
    match ip.protocol {
        PROTO_ICMP | PROTO_ICMPV6 => {
            let v6 = ip.protocol == PROTO_ICMPV6;
            let (request, reply) = if v6 { (128, 129) } else { (8, 0) };
            let icmp = packet.get_mut(off..end)?;
            if icmp.len() < 8 || icmp[0] != request || icmp[1] != 0 {
                return None;
            }
            let pseudo = if v6 {
                pseudo_header(ip.src, ip.dst, ip.protocol, icmp.len())
            } else {
                0
            };
            if checksum(icmp, pseudo) != 0 {
                return None;
            }
            icmp[0] = reply;
            icmp[2..4].fill(0);
            let c = checksum(icmp, pseudo);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
        }
        PROTO_UDP => {
            let udp = packet.get_mut(off..end)?;
            if udp.len() < UDP_HEADER || udp[2..4] != 7u16.to_be_bytes() {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
            if len != udp.len() {
                return None;
            }
            let stated = u16::from_be_bytes([udp[6], udp[7]]);
            let pseudo = pseudo_header(ip.src, ip.dst, PROTO_UDP, len);
            // A zero UDP checksum means "none" in IPv4; IPv6 requires one.
            if (stated != 0 || ip.dst.is_ipv6()) && checksum(udp, pseudo) != 0 {
                return None;
            }
            let (sport, dport) = ([udp[0], udp[1]], [udp[2], udp[3]]);
            udp[0..2].copy_from_slice(&dport);
            udp[2..4].copy_from_slice(&sport);
            udp[6..8].fill(0);
            // The pseudo-header sum is symmetric in source and destination.
            let mut c = checksum(udp, pseudo);
            if c == 0 {
                c = 0xffff;
            }
            udp[6..8].copy_from_slice(&c.to_be_bytes());
        }
        _ => return None,
    }
    swap_addresses(packet, ip.src.is_ipv4());
    Some(end)
}

/// Swaps source and destination address of an IP header (the IPv4 header checksum is unchanged
/// by a swap: the sum is commutative).
fn swap_addresses(packet: &mut [u8], v4: bool) {
    let (a, b, n) = if v4 { (12, 16, 4) } else { (8, 24, 16) };
    for i in 0..n {
        packet.swap(a + i, b + i);
    }
    if v4 && let Some(ttl) = packet.get_mut(8) {
        // Reset the TTL of the reply; recompute the header checksum for it.
        *ttl = 64;
        if packet.len() >= IPV4_HEADER {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            packet[10..12].fill(0);
            if let Some(h) = packet.get(..ihl) {
                let c = checksum(h, 0);
                packet[10..12].copy_from_slice(&c.to_be_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn udp_round_trip_and_echo_v4() {
        let mut buf = [0u8; 200];
        let src = UdpAddr {
            ip: a("10.77.0.2"),
            port: 40000,
        };
        let dst = UdpAddr {
            ip: a("10.77.0.1"),
            port: 7,
        };
        let n = build_udp(&mut buf, src, dst, b"hello").unwrap();
        let v = parse_udp(&buf[..n]).unwrap();
        assert_eq!((v.src, v.dst, v.payload), (src, dst, &b"hello"[..]));
        let m = echo_in_place(&mut buf[..n], a("10.77.0.1")).unwrap();
        let r = parse_udp(&buf[..m]).unwrap();
        assert_eq!((r.src, r.dst, r.payload), (dst, src, &b"hello"[..]));
        // The reply's checksums verify.
        let ip = parse_ip(&buf[..m]).unwrap();
        assert_eq!(checksum(&buf[..20], 0), 0);
        let pseudo = pseudo_header(ip.src, ip.dst, PROTO_UDP, m - 20);
        assert_eq!(checksum(&buf[20..m], pseudo), 0);
    }

    #[test]
    fn icmp_echo_v4_and_v6() {
        for (s, d) in [("10.77.0.2", "10.77.0.1"), ("fd00::2", "fd00::1")] {
            let mut buf = [0u8; 200];
            let n = build_echo_request(&mut buf, a(s), a(d), 7, 9, b"ping").unwrap();
            let m = echo_in_place(&mut buf[..n], a(d)).unwrap();
            assert_eq!(m, n);
            assert_eq!(parse_echo_reply(&buf[..m]), Some((a(d), 7, 9)));
        }
    }

    #[test]
    fn echo_ignores_other_targets() {
        let mut buf = [0u8; 200];
        let src = UdpAddr {
            ip: a("10.77.0.2"),
            port: 1,
        };
        let dst = UdpAddr {
            ip: a("10.77.0.1"),
            port: 53,
        };
        let n = build_udp(&mut buf, src, dst, b"x").unwrap();
        assert_eq!(echo_in_place(&mut buf[..n], a("10.77.0.1")), None);
        let n = build_echo_request(&mut buf, a("10.77.0.2"), a("10.77.0.9"), 1, 1, b"").unwrap();
        assert_eq!(echo_in_place(&mut buf[..n], a("10.77.0.1")), None);
        // A corrupted checksum is not answered.
        let n = build_echo_request(&mut buf, a("10.77.0.2"), a("10.77.0.1"), 1, 1, b"ab").unwrap();
        buf[n - 1] ^= 0xff;
        assert_eq!(echo_in_place(&mut buf[..n], a("10.77.0.1")), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_ip(&bytes);
            let _ = parse_udp(&bytes);
            let _ = parse_echo_reply(&bytes);
            let _ = echo_in_place(&mut bytes, a("10.77.0.1"));
        }

        #[test]
        fn udp_echo_swaps_endpoints(payload in proptest::collection::vec(any::<u8>(), 0..300), port in 1u16..) {
            let mut buf = [0u8; 400];
            let src = UdpAddr { ip: a("fd00::5"), port };
            let dst = UdpAddr { ip: a("fd00::1"), port: 7 };
            let n = build_udp(&mut buf, src, dst, &payload).unwrap();
            let m = echo_in_place(&mut buf[..n], dst.ip).unwrap();
            let r = parse_udp(&buf[..m]).unwrap();
            prop_assert_eq!(r.src, dst);
            prop_assert_eq!(r.dst, src);
            prop_assert_eq!(r.payload, &payload[..]);
        }
    }
}
