//! One conntrack entry, reduced to what stale-entry clean-up looks at.

use std::net::{IpAddr, SocketAddr};

use kube_proxy_model::{IpFamily, Protocol};

/// A conntrack entry of a port-based protocol: its original tuple, and the source of its
/// reply tuple, which is where the original destination was DNATed to (equal to the
/// original destination when the entry was never DNATed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub family: IpFamily,
    pub proto: Protocol,
    pub orig_src: IpAddr,
    pub orig_dst: IpAddr,
    pub orig_sport: u16,
    pub orig_dport: u16,
    pub reply_src: IpAddr,
    pub reply_sport: u16,
}

impl Flow {
    /// Where the client sent its packets (`orig_dst:orig_dport`).
    pub fn frontend(&self) -> SocketAddr {
        SocketAddr::new(self.orig_dst, self.orig_dport)
    }

    /// Where the packets really went (`reply_src:reply_sport`): the DNAT target.
    pub fn target(&self) -> SocketAddr {
        SocketAddr::new(self.reply_src, self.reply_sport)
    }
}
