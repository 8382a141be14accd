//! The shared vocabulary: the words every layer uses (a resource's match, its protocol, what it
//! does without a server, how XDP attaches, a server's health). A leaf: it names no other module
//! of the controller, so config, the directory, the engine, the dataplane and the API can all use
//! it without depending on each other.
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use ftn_common::{
    addr, ResourceKey, ReturnKey, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
    PROTO_UDP,
};
use serde::{ser::SerializeStruct, Deserialize, Serialize, Serializer};

/// Transport protocol of a resource.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP echo (ICMPv6 echo for an IPv6 VIP); always every "port".
    Icmp,
}

impl Protocol {
    /// IP protocol number for a VIP of this family.
    pub fn number(self, vip: IpAddr) -> u8 {
        match (self, vip) {
            (Protocol::Tcp, _) => PROTO_TCP,
            (Protocol::Udp, _) => PROTO_UDP,
            (Protocol::Icmp, IpAddr::V4(_)) => PROTO_ICMP,
            (Protocol::Icmp, IpAddr::V6(_)) => PROTO_ICMPV6,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        })
    }
}

/// One (VIP, protocol, port) entry of a resource. Port 0 for ICMP echo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceMatch {
    pub vip: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

impl ResourceMatch {
    /// The match a map key stands for (None for a key no controller writes).
    pub fn from_key(k: &ResourceKey) -> Option<ResourceMatch> {
        let o = addr::octets(k.vip);
        let vip = match k.family {
            FAMILY_V4 => IpAddr::from([o[0], o[1], o[2], o[3]]),
            FAMILY_V6 => IpAddr::from(o),
            _ => return None,
        };
        let protocol = match k.proto {
            PROTO_TCP => Protocol::Tcp,
            PROTO_UDP => Protocol::Udp,
            PROTO_ICMP | PROTO_ICMPV6 => Protocol::Icmp,
            _ => return None,
        };
        Some(ResourceMatch {
            vip,
            protocol,
            port: u16::from_be(k.port),
        })
    }

    pub fn to_key(&self) -> ResourceKey {
        ResourceKey {
            vip: ip_words(self.vip),
            port: if self.protocol == Protocol::Icmp {
                0
            } else {
                self.port.to_be()
            },
            proto: self.protocol.number(self.vip),
            family: family(self.vip),
        }
    }
}

/// Where a resource server's replies come from: (server address, protocol, port), port 0 for
/// ICMP echo. The key of the dataplane's return table, which SNATs them to the VIP with no
/// per-flow state; the configuration lets one such key serve one VIP only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReturnMatch {
    pub server: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

impl ReturnMatch {
    fn as_resource(&self) -> ResourceMatch {
        ResourceMatch {
            vip: self.server,
            protocol: self.protocol,
            port: self.port,
        }
    }

    /// The match a map key stands for (None for a key no controller writes).
    pub fn from_key(k: &ReturnKey) -> Option<ReturnMatch> {
        let m = ResourceMatch::from_key(&ResourceKey {
            vip: k.server,
            port: k.port,
            proto: k.proto,
            family: k.family,
        })?;
        Some(ReturnMatch {
            server: m.vip,
            protocol: m.protocol,
            port: m.port,
        })
    }

    /// The map key (same layout and byte orders as a resource's).
    pub fn to_key(&self) -> ReturnKey {
        let k = self.as_resource().to_key();
        ReturnKey {
            server: k.vip,
            port: k.port,
            proto: k.proto,
            family: k.family,
        }
    }
}

/// What to do with a packet of a resource that has no live server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoServerAction {
    /// Drop silently (clients time out).
    #[default]
    Drop,
    /// Answer at once: TCP RST, ICMP port/host unreachable.
    Reject,
}

/// `ftn_common` address layout of an `IpAddr`.
pub fn ip_words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(a) => addr::v4(a.octets()),
        IpAddr::V6(a) => addr::v6(a.octets()),
    }
}

pub fn family(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => FAMILY_V4,
        IpAddr::V6(_) => FAMILY_V6,
    }
}

/// Where `ftn run` pins the dataplane by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/ftn";

/// How to attach XDP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpAttachMode {
    /// Native (driver) XDP, falling back to generic XDP with a warning when the driver refuses.
    #[default]
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP only: works everywhere, slower.
    Generic,
}

impl std::fmt::Display for XdpAttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XdpAttachMode::Auto => "auto",
            XdpAttachMode::Native => "native",
            XdpAttachMode::Generic => "generic",
        })
    }
}

/// Health of a server as the directory records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
}

/// Default `hold` of `failback = "hold"`.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(10);

/// When a resource goes back to a more preferred server (e.g. the primary) that came back up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failback {
    /// As soon as it is up.
    Immediate,
    /// Once it has stayed up for this long.
    Hold(Duration),
    /// Only when an operator says so.
    Manual,
}

impl Default for Failback {
    fn default() -> Self {
        Failback::Hold(DEFAULT_HOLD)
    }
}

impl fmt::Display for Failback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failback::Immediate => f.write_str("immediate"),
            Failback::Hold(d) => write!(f, "hold {}", humantime::format_duration(*d)),
            Failback::Manual => f.write_str("manual"),
        }
    }
}

/// `{"policy": "hold", "hold": "10s"}`, `{"policy": "immediate"}`, `{"policy": "manual"}`.
impl Serialize for Failback {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Failback::Hold(d) => {
                let mut st = s.serialize_struct("Failback", 2)?;
                st.serialize_field("policy", "hold")?;
                st.serialize_field("hold", &humantime::format_duration(*d).to_string())?;
                st.end()
            }
            Failback::Immediate | Failback::Manual => {
                let mut st = s.serialize_struct("Failback", 1)?;
                let policy = if *self == Failback::Immediate {
                    "immediate"
                } else {
                    "manual"
                };
                st.serialize_field("policy", policy)?;
                st.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_use_network_order() {
        let m = ResourceMatch {
            vip: "198.18.0.10".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        };
        let k = m.to_key();
        assert_eq!(k.port.to_ne_bytes(), [0, 80]);
        assert_eq!(&addr::octets(k.vip)[..4], &[198, 18, 0, 10]);
        assert_eq!((k.proto, k.family), (PROTO_TCP, FAMILY_V4));
        let m = ResourceMatch {
            vip: "2001:2::10".parse().unwrap(),
            protocol: Protocol::Icmp,
            port: 7,
        };
        let k = m.to_key();
        assert_eq!((k.port, k.proto, k.family), (0, PROTO_ICMPV6, FAMILY_V6));
        assert_eq!(
            ResourceMatch::from_key(&k),
            Some(ResourceMatch { port: 0, ..m })
        );
        let m4 = ResourceMatch {
            vip: "198.18.0.10".parse().unwrap(),
            protocol: Protocol::Udp,
            port: 53,
        };
        assert_eq!(ResourceMatch::from_key(&m4.to_key()), Some(m4));
    }
}

/// An IP prefix (`198.18.20.0/24`, `2001:2::/48`, a host route `198.18.100.1/32`): no bits set
/// past the length. Written and read as `address/length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl Prefix {
    /// The host route of `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> Prefix {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Prefix { addr, len }
    }

    pub fn is_host(&self) -> bool {
        self.len == if self.addr.is_ipv4() { 32 } else { 128 }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;

    fn from_str(s: &str) -> Result<Prefix, String> {
        let (a, l) = s.split_once('/').ok_or_else(|| {
            format!("{s:?} is not a prefix: write address/length, e.g. 198.18.20.0/24")
        })?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address (in prefix {s:?})"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = l
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{l:?} is not a prefix length of {s:?} (0 to {max})"))?;
        let bits = match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
            IpAddr::V6(a) => u128::from(a),
        };
        let host_bits = match len {
            0 => bits,
            128.. => 0,
            _ => bits << len,
        };
        if host_bits != 0 {
            return Err(format!(
                "{s:?} has bits set past its length /{len} (the network is written with them clear)"
            ));
        }
        Ok(Prefix { addr, len })
    }
}

impl serde::Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Prefix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Prefix, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
