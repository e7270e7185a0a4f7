//! Upstream's chain names, including the hashed per-service and per-endpoint chains
//! (`KUBE-SVC-XPGD46QRK7WJZT7O`).

use kube_proxy_model::{Endpoint, ServicePortName};
use sha2::{Digest, Sha256};

pub const KUBE_SERVICES: &str = "KUBE-SERVICES";
pub const KUBE_EXTERNAL_SERVICES: &str = "KUBE-EXTERNAL-SERVICES";
pub const KUBE_NODEPORTS: &str = "KUBE-NODEPORTS";
pub const KUBE_POSTROUTING: &str = "KUBE-POSTROUTING";
pub const KUBE_MARK_MASQ: &str = "KUBE-MARK-MASQ";
pub const KUBE_FORWARD: &str = "KUBE-FORWARD";
pub const KUBE_PROXY_FIREWALL: &str = "KUBE-PROXY-FIREWALL";
/// Shared in name with the kubelet of old releases, which created it too.
pub const KUBE_FIREWALL: &str = "KUBE-FIREWALL";
pub const KUBE_PROXY_CANARY: &str = "KUBE-PROXY-CANARY";

/// Prefixes of the per-service and per-endpoint chains (upstream's `isServiceChainName`).
const SERVICE_CHAIN_PREFIXES: [&str; 5] = [
    "KUBE-SVC-",
    "KUBE-SVL-",
    "KUBE-EXT-",
    "KUBE-FW-",
    "KUBE-SEP-",
];

/// Every fixed chain the iptables mode creates in any table.
pub const FIXED_CHAINS: [&str; 9] = [
    KUBE_SERVICES,
    KUBE_EXTERNAL_SERVICES,
    KUBE_NODEPORTS,
    KUBE_POSTROUTING,
    KUBE_MARK_MASQ,
    KUBE_FORWARD,
    KUBE_PROXY_FIREWALL,
    KUBE_FIREWALL,
    KUBE_PROXY_CANARY,
];

/// The chains of one service port. Which of them exist depends on policies and endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceChains {
    /// `KUBE-SVC-…`: endpoints for Cluster traffic policy.
    pub cluster: String,
    /// `KUBE-SVL-…`: endpoints for Local traffic policy.
    pub local: String,
    /// `KUBE-EXT-…`: entry point of NodePort, LoadBalancer and external IP traffic.
    pub external: String,
    /// `KUBE-FW-…`: `loadBalancerSourceRanges`.
    pub firewall: String,
}

impl ServiceChains {
    /// The chain names of `port`: all four share one hash of `ns/name:port` + protocol.
    pub fn new(port: &ServicePortName) -> Self {
        let hash = hash16(&format!("{port}{}", port.protocol.as_str()));
        ServiceChains {
            cluster: format!("KUBE-SVC-{hash}"),
            local: format!("KUBE-SVL-{hash}"),
            external: format!("KUBE-EXT-{hash}"),
            firewall: format!("KUBE-FW-{hash}"),
        }
    }
}

/// `KUBE-SEP-…`, the chain that DNATs to `ep` for `port` (also the name of its `-m recent`
/// affinity list).
pub fn endpoint_chain(port: &ServicePortName, ep: &Endpoint) -> String {
    // `addr()` prints as Go's net.JoinHostPort: `[fd00::1]:80` for IPv6.
    let hash = hash16(&format!("{port}{}{}", port.protocol.as_str(), ep.addr()));
    format!("KUBE-SEP-{hash}")
}

/// True for the per-service and per-endpoint chains.
pub fn is_service_chain(name: &str) -> bool {
    SERVICE_CHAIN_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// True for every chain the iptables mode creates.
pub fn is_ours(name: &str) -> bool {
    FIXED_CHAINS.contains(&name) || is_service_chain(name)
}

/// The chains only upstream's IPVS mode creates (it shares the others with iptables mode).
/// kube-proxy-rs's IPVS mode programs nftables instead, so these are leftovers for every
/// mode of ours.
pub const UPSTREAM_IPVS_MODE_CHAINS: [&str; 5] = [
    "KUBE-NODE-PORT",
    "KUBE-LOAD-BALANCER",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
];

/// True for every chain upstream's iptables or IPVS mode creates: what a clean-up removes.
pub fn is_leftover(name: &str) -> bool {
    is_ours(name) || UPSTREAM_IPVS_MODE_CHAINS.contains(&name)
}

/// The first 16 characters of the base32 of `SHA-256(s)`: short enough for iptables'
/// 28-character chain names with a 9-character prefix.
fn hash16(s: &str) -> String {
    let digest = Sha256::digest(s.as_bytes());
    // 16 base32 characters are 80 bits: exactly the first 10 bytes.
    base32(&digest[..10])
}

/// RFC 4648 base32 (upstream's `base32.StdEncoding`) of a multiple of 5 bytes.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    bytes
        .chunks(5)
        .flat_map(|chunk| {
            let bits = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            (0..8)
                .rev()
                .map(move |i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube_proxy_model::Protocol;

    fn spn(ns: &str, name: &str, port: &str) -> ServicePortName {
        ServicePortName {
            namespace: ns.into(),
            name: name.into(),
            port: port.into(),
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn matches_upstream_names() {
        // Expected values from upstream's TestOverallIPTablesRules.
        let chains = ServiceChains::new(&spn("ns1", "svc1", "p80"));
        assert_eq!(chains.cluster, "KUBE-SVC-XPGD46QRK7WJZT7O");
        let ep = Endpoint::ready("10.180.0.1".parse().unwrap(), 80, false);
        assert_eq!(
            endpoint_chain(&spn("ns1", "svc1", "p80"), &ep),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
        let chains = ServiceChains::new(&spn("ns5", "svc5", "p80"));
        assert_eq!(chains.firewall, "KUBE-FW-NUKIZ6OKUXPJNT4C");
        assert_eq!(chains.external, "KUBE-EXT-NUKIZ6OKUXPJNT4C");
        let ep = Endpoint::ready("10.180.0.3".parse().unwrap(), 80, false);
        assert_eq!(
            endpoint_chain(&spn("ns5", "svc5", "p80"), &ep),
            "KUBE-SEP-I77PXRDZVX7PMWMN"
        );
    }

    #[test]
    fn base32_is_rfc4648() {
        // RFC 4648 test vector.
        assert_eq!(base32(b"fooba"), "MZXW6YTB");
        assert_eq!(base32(b""), "");
    }

    #[test]
    fn recognizes_our_chains() {
        assert!(is_service_chain("KUBE-SEP-SXIVWICOYRO3J4NJ"));
        assert!(!is_service_chain(KUBE_SERVICES));
        assert!(is_ours(KUBE_SERVICES) && is_ours("KUBE-FW-X"));
        assert!(!is_ours("KUBE-KUBELET-CANARY") && !is_ours("INPUT"));
    }
}
