//! The node's local addresses, and which of them accept NodePort traffic
//! (`nodePortAddresses`).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use kube_proxy_model::{IpFamily, NodePortAddress};

/// Where the backend learns the addresses of the node's interfaces.
pub trait AddressSource: Send + Sync {
    /// Every address configured on a local interface.
    fn local_addresses(&self) -> io::Result<Vec<IpAddr>>;
}

/// The addresses of this network namespace's interfaces (`getifaddrs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemAddresses;

impl AddressSource for SystemAddresses {
    fn local_addresses(&self) -> io::Result<Vec<IpAddr>> {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs.
        if unsafe { libc::getifaddrs(&mut head) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut cur = head;
        while !cur.is_null() {
            // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
            let ifa = unsafe { &*cur };
            if let Some(ip) = unsafe { sockaddr_ip(ifa.ifa_addr) } {
                out.push(ip);
            }
            cur = ifa.ifa_next;
        }
        // SAFETY: `head` came from getifaddrs and is freed once.
        unsafe { libc::freeifaddrs(head) };
        Ok(out)
    }
}

/// The IP address in a `sockaddr`, when it is one.
///
/// # Safety
/// `sa` must be null or point to a valid `sockaddr` of the size its family implies.
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    match i32::from((*sa).sa_family) {
        libc::AF_INET => {
            let sin = &*(sa as *const libc::sockaddr_in);
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            let sin6: libc::sockaddr_in6 = std::ptr::read_unaligned(sa.cast());
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// A fixed list of addresses, for tests and for rendering without touching the host.
#[derive(Debug, Clone, Default)]
pub struct StaticAddresses(pub Vec<IpAddr>);

impl AddressSource for StaticAddresses {
    fn local_addresses(&self) -> io::Result<Vec<IpAddr>> {
        Ok(self.0.clone())
    }
}

/// Which destination addresses of one family accept NodePort traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortIps {
    /// Every local address but loopback (`fib daddr type local`).
    All,
    /// Only these (the `nodeport-ips` set).
    Only(Vec<IpAddr>),
}

/// Resolves `nodePortAddresses` for `family` as upstream does: the local addresses inside
/// the family's CIDRs, plus the node's primary IP for `primary`; no entry of this family,
/// or a `/0`, means every local address. Loopback addresses never accept NodePorts.
///
/// A loopback node IP is the fallback for a Node without an address of this family, not
/// a real one: upstream drops it before expanding `primary`, so the family then has no
/// entry and accepts NodePorts on every local address.
pub fn node_port_ips(
    entries: &[NodePortAddress],
    family: IpFamily,
    node_ip: Option<IpAddr>,
    source: &dyn AddressSource,
) -> io::Result<NodePortIps> {
    let mut cidrs: Vec<IpNet> = Vec::new();
    let mut primary = None;
    for entry in entries {
        match entry {
            NodePortAddress::Cidr(net) if IpFamily::of_net(net) == family => cidrs.push(*net),
            NodePortAddress::Cidr(_) => {}
            NodePortAddress::Primary => {
                primary = node_ip.filter(|ip| IpFamily::of(ip) == family && !ip.is_loopback())
            }
        }
    }
    if (cidrs.is_empty() && primary.is_none()) || cidrs.iter().any(|c| c.prefix_len() == 0) {
        return Ok(NodePortIps::All);
    }
    let mut ips: Vec<IpAddr> = if cidrs.is_empty() {
        Vec::new()
    } else {
        source
            .local_addresses()?
            .into_iter()
            .filter(|ip| cidrs.iter().any(|c| c.contains(ip)))
            .collect()
    };
    ips.extend(primary);
    ips.retain(|ip| !ip.is_loopback());
    ips.sort();
    ips.dedup();
    Ok(NodePortIps::Only(ips))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> NodePortAddress {
        NodePortAddress::Cidr(s.parse().unwrap())
    }

    #[test]
    fn resolves_node_port_addresses() {
        let src = StaticAddresses(vec![
            ip("127.0.0.1"),
            ip("10.0.0.5"),
            ip("192.168.1.2"),
            ip("fd00::5"),
        ]);
        let v4 = IpFamily::V4;
        assert_eq!(
            node_port_ips(&[], v4, None, &src).unwrap(),
            NodePortIps::All
        );
        assert_eq!(
            node_port_ips(&[cidr("0.0.0.0/0")], v4, None, &src).unwrap(),
            NodePortIps::All
        );
        // Only IPv6 CIDRs given: IPv4 accepts NodePorts everywhere.
        assert_eq!(
            node_port_ips(&[cidr("fd00::/64")], v4, None, &src).unwrap(),
            NodePortIps::All
        );
        assert_eq!(
            node_port_ips(&[cidr("10.0.0.0/8"), cidr("127.0.0.0/8")], v4, None, &src).unwrap(),
            NodePortIps::Only(vec![ip("10.0.0.5")])
        );
        assert_eq!(
            node_port_ips(
                &[NodePortAddress::Primary],
                v4,
                Some(ip("192.168.1.2")),
                &src
            )
            .unwrap(),
            NodePortIps::Only(vec![ip("192.168.1.2")])
        );
        // The loopback fallback node IP is no node IP: every local address accepts.
        for node_ip in ["127.0.0.1", "::1"] {
            let family = IpFamily::of(&ip(node_ip));
            assert_eq!(
                node_port_ips(&[NodePortAddress::Primary], family, Some(ip(node_ip)), &src)
                    .unwrap(),
                NodePortIps::All,
                "{node_ip}"
            );
        }
        assert_eq!(
            node_port_ips(&[cidr("fd00::/64")], IpFamily::V6, None, &src).unwrap(),
            NodePortIps::Only(vec![ip("fd00::5")])
        );
    }

    #[test]
    fn system_addresses_include_loopback() {
        let addrs = SystemAddresses.local_addresses().unwrap();
        assert!(addrs.iter().any(|a| a.is_loopback()), "{addrs:?}");
    }
}
