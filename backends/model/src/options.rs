//! The proxy options a backend is built with, resolved from flags or the config file.

use ipnet::IpNet;

use crate::backend::BackendError;

/// How a backend tells traffic that comes from a pod on this node or cluster ("local")
/// from traffic that comes from outside, for masquerading and the short-circuit of
/// `externalTrafficPolicy: Local`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalDetector {
    /// Nothing is local (`detectLocalMode` ClusterCIDR with no cluster CIDR configured).
    #[default]
    None,
    /// Source address in one of these CIDRs (`ClusterCIDR` or `NodeCIDR` mode, resolved).
    Cidrs(Vec<IpNet>),
    /// Arrived on this bridge (`BridgeInterface` mode).
    BridgeInterface(String),
    /// Arrived on an interface whose name starts with this prefix (`InterfaceNamePrefix`).
    InterfaceNamePrefix(String),
}

/// One entry of `nodePortAddresses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePortAddress {
    Cidr(IpNet),
    /// The node's primary IP of each family.
    Primary,
}

/// How a backend picks an endpoint for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduling {
    /// Strict round-robin (`numgen inc`, `statistic --mode nth`, IPVS `rr`).
    #[default]
    RoundRobin,
    /// Upstream's random choice (`numgen random`, `statistic --mode random`).
    Random,
}

/// Everything a backend needs besides the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyOptions {
    /// `masqueradeAll`: SNAT all traffic sent to a ClusterIP.
    pub masquerade_all: bool,
    /// `iptables.masqueradeBit`: the fwmark bit used to flag packets for SNAT (0..=31).
    pub masquerade_bit: u8,
    pub local_detector: LocalDetector,
    /// `nodePortAddresses`; empty accepts NodePorts on every local address.
    pub node_port_addresses: Vec<NodePortAddress>,
    pub scheduling: Scheduling,
}

impl ProxyOptions {
    /// Rejects options no kube-proxy would start with, before they reach a rule of
    /// backend `mode`.
    pub fn validate(&self, mode: &'static str) -> Result<(), BackendError> {
        if self.masquerade_bit > 31 {
            return Err(BackendError::Unavailable {
                mode,
                message: format!(
                    "masqueradeBit {} is out of range 0..=31",
                    self.masquerade_bit
                ),
            });
        }
        Ok(())
    }
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            masquerade_all: false,
            masquerade_bit: 14,
            local_detector: LocalDetector::None,
            node_port_addresses: Vec::new(),
            scheduling: Scheduling::RoundRobin,
        }
    }
}

impl ProxyOptions {
    /// The fwmark value of the masquerade bit.
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }
}
