//! Field types used across configuration files, each deserialising from the form a person
//! writes and failing with a message that quotes the bad value.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A socket address to listen on or connect to, e.g. `127.0.0.1:5300` or `[::1]:5300`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenAddr(pub SocketAddr);

impl FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(Self)
            .map_err(|_| format!("invalid socket address {s:?}"))
    }
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A duration written as people write them: `100ms`, `10s`, `5m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(pub std::time::Duration);

impl FromStr for Duration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s).map(Self).map_err(|e| {
            format!("invalid duration {s:?} ({e}); write e.g. \"500ms\", \"10s\", \"5m\"")
        })
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(self.0))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

/// An IP network in CIDR form, e.g. `10.77.0.0/24`; host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    /// The first host address (the network address plus one): where an appliance answers.
    pub fn first_host(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a).wrapping_add(1)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a).wrapping_add(1)).into()),
        }
    }
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid network {s:?}; write e.g. \"10.77.0.0/24\"");
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        let net = Self { addr, prefix };
        let host_bits_zero = match addr {
            IpAddr::V4(a) => {
                u32::from(a) & !u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0) == 0
            }
            IpAddr::V6(a) => {
                u128::from(a) & !u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0) == 0
            }
        };
        if !host_bits_zero {
            return Err(format!("network {s:?} has host bits set"));
        }
        Ok(net)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for IpNet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addr_messages_quote_input() {
        assert_eq!(
            "127.0.0.1:99999".parse::<ListenAddr>().unwrap_err(),
            r#"invalid socket address "127.0.0.1:99999""#
        );
        assert!("[::1]:53".parse::<ListenAddr>().is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!("10s".parse::<Duration>().unwrap().0.as_secs(), 10);
        assert_eq!("1h 30m".parse::<Duration>().unwrap().0.as_secs(), 5400);
        assert!("ten".parse::<Duration>().is_err());
    }

    #[test]
    fn networks() {
        let net: IpNet = "10.77.0.0/24".parse().unwrap();
        assert!(net.contains("10.77.0.9".parse().unwrap()));
        assert!(!net.contains("10.78.0.9".parse().unwrap()));
        assert_eq!(net.first_host().to_string(), "10.77.0.1");
        assert!("10.77.0.1/24".parse::<IpNet>().is_err());
        assert!("10.77.0.0/33".parse::<IpNet>().is_err());
        let v6: IpNet = "fd00:77::/64".parse().unwrap();
        assert!(v6.contains("fd00:77::5".parse().unwrap()));
        assert!(
            "0.0.0.0/0"
                .parse::<IpNet>()
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
    }
}
