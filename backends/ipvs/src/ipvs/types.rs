//! The IPVS objects, as small typed values (include/uapi/linux/ip_vs.h).

use std::fmt;
use std::net::IpAddr;
use std::ops::{BitOr, BitOrAssign};
use std::time::Duration;

use kube_proxy_model::{IpFamily, Protocol};

use crate::Error;

/// What identifies a virtual service to the kernel: address, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// The virtual address (a ClusterIP, externalIP, LoadBalancer or node IP).
    pub addr: IpAddr,
    /// The service port.
    pub port: u16,
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
}

impl ServiceKey {
    /// The IP family of the service.
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.addr)
    }
}

impl fmt::Display for ServiceKey {
    /// As `ipvsadm` prints it: `TCP 10.96.0.1:443`, `UDP [fd00::10]:53`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = self.protocol.as_str().to_ascii_uppercase();
        match self.addr {
            IpAddr::V4(ip) => write!(f, "{proto} {ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "{proto} [{ip}]:{}", self.port),
        }
    }
}

/// An IPVS virtual service: the address, port and protocol clients connect to, and how
/// connections are spread over its real servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualServer {
    /// The virtual address.
    pub addr: IpAddr,
    /// The service port.
    pub port: u16,
    /// TCP, UDP or SCTP.
    pub protocol: Protocol,
    /// How new connections pick a real server.
    pub scheduler: Scheduler,
    /// Persistence and scheduler options.
    pub flags: ServiceFlags,
    /// How long a client sticks to its real server, in seconds, with
    /// [`ServiceFlags::PERSISTENT`] (upstream: the Service's affinity timeout).
    pub timeout: u32,
    /// Which clients count as one for persistence, as a prefix length: 32 (IPv4) or 128
    /// (IPv6), upstream's value, means each client address on its own.
    pub netmask: u8,
}

impl VirtualServer {
    /// A service without persistence, with upstream's netmask (the full address length).
    pub fn new(addr: IpAddr, port: u16, protocol: Protocol, scheduler: Scheduler) -> Self {
        VirtualServer {
            addr,
            port,
            protocol,
            scheduler,
            flags: ServiceFlags::NONE,
            timeout: 0,
            netmask: max_prefix(IpFamily::of(&addr)),
        }
    }

    /// What identifies this service to the kernel.
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            addr: self.addr,
            port: self.port,
            protocol: self.protocol,
        }
    }
}

/// The longest prefix of `family`'s addresses.
pub(crate) fn max_prefix(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => 32,
        IpFamily::V6 => 128,
    }
}

/// The name of an IPVS scheduler (`rr`, `wrr`, `lc`, `sh`, `mh`, ...). The kernel loads
/// module `ip_vs_<name>` on first use and refuses names it has no module for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scheduler(String);

impl Scheduler {
    /// Round robin, upstream's default.
    pub const DEFAULT: &'static str = "rr";

    /// A scheduler name: lower-case letters and digits, at most 15 of them, as the
    /// kernel's `IP_VS_SCHEDNAME_MAXLEN` (16 with the NUL) allows.
    pub fn new(name: &str) -> Result<Self, Error> {
        let valid = !name.is_empty()
            && name.len() < 16
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid {
            return Err(Error::Invalid(format!("IPVS scheduler name {name:?}")));
        }
        Ok(Scheduler(name.to_owned()))
    }

    /// The name, as the kernel knows it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler(Self::DEFAULT.to_owned())
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Virtual service flags (`IP_VS_SVC_F_*`).
///
/// `IP_VS_SVC_F_HASHED` (0x2) is not among them: it is the kernel's own bookkeeping bit,
/// set on every service it holds. It is never sent (the kernel would then refuse to hash
/// the new service, leaving it unreachable) and is cleared from what is read back, as
/// upstream does, so a service reads back as it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ServiceFlags(u32);

impl ServiceFlags {
    /// No flag.
    pub const NONE: ServiceFlags = ServiceFlags(0);
    /// Clients stick to their real server for the service's timeout (session affinity).
    pub const PERSISTENT: ServiceFlags = ServiceFlags(0x0001);
    /// Schedule each packet on its own (UDP).
    pub const ONE_PACKET: ServiceFlags = ServiceFlags(0x0004);
    /// Scheduler flag 1: for `sh` and `mh`, fall back to another real server when the
    /// chosen one is unavailable.
    pub const SCHED1: ServiceFlags = ServiceFlags(0x0008);
    /// Scheduler flag 2: for `sh` and `mh`, hash the source port too.
    pub const SCHED2: ServiceFlags = ServiceFlags(0x0010);
    /// Scheduler flag 3.
    pub const SCHED3: ServiceFlags = ServiceFlags(0x0020);
    /// `IP_VS_SVC_F_SCHED_MH_FALLBACK`, upstream's `FlagSourceHash` for `mh`.
    pub const SCHED_MH_FALLBACK: ServiceFlags = Self::SCHED1;
    /// `IP_VS_SVC_F_SCHED_MH_PORT`.
    pub const SCHED_MH_PORT: ServiceFlags = Self::SCHED2;
    /// `IP_VS_SVC_F_SCHED_SH_FALLBACK`.
    pub const SCHED_SH_FALLBACK: ServiceFlags = Self::SCHED1;
    /// `IP_VS_SVC_F_SCHED_SH_PORT`.
    pub const SCHED_SH_PORT: ServiceFlags = Self::SCHED2;

    /// The kernel's bookkeeping bit, see the type's documentation.
    pub(crate) const HASHED: u32 = 0x0002;

    /// The flags of a raw value as the kernel reports it, without the hashed bit.
    pub fn from_bits(bits: u32) -> Self {
        ServiceFlags(bits & !Self::HASHED)
    }

    /// The raw value.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Whether all of `other`'s flags are set.
    pub fn contains(self, other: ServiceFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for ServiceFlags {
    type Output = ServiceFlags;

    fn bitor(self, rhs: ServiceFlags) -> ServiceFlags {
        ServiceFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for ServiceFlags {
    fn bitor_assign(&mut self, rhs: ServiceFlags) {
        self.0 |= rhs.0;
    }
}

/// How IPVS forwards a connection to a real server (`IP_VS_CONN_F_*` of
/// `IP_VS_CONN_F_FWD_MASK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FwdMethod {
    /// NAT: the destination address is rewritten. What kube-proxy uses.
    #[default]
    Masq,
    /// The real server is this host.
    Local,
    /// IP-in-IP (or GUE, GRE) encapsulation.
    Tunnel,
    /// Direct routing: only the MAC address is rewritten.
    DirectRoute,
    /// Cache bypass.
    Bypass,
}

impl FwdMethod {
    /// The kernel's value.
    pub(crate) fn bits(self) -> u32 {
        match self {
            FwdMethod::Masq => 0,
            FwdMethod::Local => 1,
            FwdMethod::Tunnel => 2,
            FwdMethod::DirectRoute => 3,
            FwdMethod::Bypass => 4,
        }
    }

    /// The method of a kernel value.
    pub(crate) fn from_bits(bits: u32) -> Result<Self, Error> {
        Ok(match bits {
            0 => FwdMethod::Masq,
            1 => FwdMethod::Local,
            2 => FwdMethod::Tunnel,
            3 => FwdMethod::DirectRoute,
            4 => FwdMethod::Bypass,
            _ => return Err(Error::Malformed(format!("forwarding method {bits}"))),
        })
    }
}

/// A real server (the kernel's "destination") of a virtual service: an endpoint. The
/// kernel identifies it within its service by address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RealServer {
    /// The endpoint's address, of the service's family.
    pub addr: IpAddr,
    /// The endpoint's port.
    pub port: u16,
    /// Its share of new connections; 0 takes it out of scheduling while its connections
    /// live on (upstream's graceful termination).
    pub weight: u32,
    /// How packets reach it.
    pub fwd_method: FwdMethod,
    /// No new connections while it has this many; 0 means no limit.
    pub upper_threshold: u32,
    /// New connections again once it is down to this many; 0 means no limit.
    pub lower_threshold: u32,
}

impl RealServer {
    /// A NAT real server without thresholds, as kube-proxy creates them.
    pub fn new(addr: IpAddr, port: u16, weight: u32) -> Self {
        RealServer {
            addr,
            port,
            weight,
            fwd_method: FwdMethod::Masq,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }
}

/// The connection counters of a real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RealServerStats {
    /// Established connections (TCP `ESTABLISHED`; for UDP, every connection).
    pub active_conns: u32,
    /// Connections in any other state (TCP `SYN_RECV`, `FIN_WAIT`, `TIME_WAIT`, ...).
    pub inactive_conns: u32,
    /// Persistence templates pointing at it.
    pub persistent_conns: u32,
}

/// A real server as read back, with its counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The real server as it is programmed.
    pub server: RealServer,
    /// Its connection counters.
    pub stats: RealServerStats,
}

/// IPVS's global connection timeouts (`ipvsadm --set tcp tcpfin udp`). The kernel counts
/// whole seconds. In [`IpvsClient::set_config`](crate::IpvsClient::set_config) a zero
/// leaves that timeout as it is, as upstream's zero-valued `ipvs.*Timeout` settings do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Timeouts {
    /// Established TCP connections.
    pub tcp: Duration,
    /// TCP connections after a FIN.
    pub tcp_fin: Duration,
    /// UDP flows.
    pub udp: Duration,
}
