//! Upstream's names for everything in the table, including the hashed per-service and
//! per-endpoint chain names (`service-ULMVA6XW-ns1/svc1/tcp/p80`).

use kube_proxy_model::{Endpoint, ServicePortName};
use sha2::{Digest, Sha256};

/// Maximum length of an nftables object name.
const NAME_LENGTH_MAX: usize = 256;
/// Room kept for the longest prefix (`endpoint-`, `affinity-`, ...).
const PREFIX_LENGTH_MAX: usize = 16;
const BASE_LENGTH_MAX: usize = NAME_LENGTH_MAX - PREFIX_LENGTH_MAX;

pub const FILTER_PREROUTING: &str = "filter-prerouting";
pub const FILTER_INPUT: &str = "filter-input";
pub const FILTER_FORWARD: &str = "filter-forward";
pub const FILTER_OUTPUT: &str = "filter-output";
pub const FILTER_OUTPUT_POST_DNAT: &str = "filter-output-post-dnat";
pub const NAT_PREROUTING: &str = "nat-prerouting";
pub const NAT_OUTPUT: &str = "nat-output";
pub const NAT_POSTROUTING: &str = "nat-postrouting";

pub const SERVICES: &str = "services";
pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const NODEPORT_IPS: &str = "nodeport-ips";
pub const CLUSTER_IPS: &str = "cluster-ips";
pub const SERVICE_ENDPOINTS_CHECK: &str = "service-endpoints-check";
pub const NODEPORT_ENDPOINTS_CHECK: &str = "nodeport-endpoints-check";
pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
pub const REJECT_CHAIN: &str = "reject-chain";
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
pub const FIREWALL_IPS: &str = "firewall-ips";
pub const FIREWALL_CHECK: &str = "firewall-check";
pub const MARK_MASQ: &str = "mark-for-masquerade";
pub const MASQUERADING: &str = "masquerading";

/// The chains of one service port. Only some exist, depending on policy and endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceChains {
    /// `service-…`: endpoints for Cluster traffic policy.
    pub cluster: String,
    /// `local-…`: endpoints for Local traffic policy.
    pub local: String,
    /// `external-…`: entry point of NodePort, LoadBalancer and external IP traffic.
    pub external: String,
    /// `firewall-…`: `loadBalancerSourceRanges`.
    pub firewall: String,
}

impl ServiceChains {
    /// The chain names of `port`.
    pub fn new(port: &ServicePortName) -> Self {
        let base = hash_and_truncate(&format!(
            "{}/{}/{}/{}",
            port.namespace,
            port.name,
            port.protocol.as_str(),
            port.port
        ));
        ServiceChains {
            cluster: format!("service-{base}"),
            local: format!("local-{base}"),
            external: format!("external-{base}"),
            firewall: format!("firewall-{base}"),
        }
    }
}

/// The chain and affinity set of one endpoint of a service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointNames {
    /// `endpoint-…`: DNATs to the endpoint.
    pub chain: String,
    /// `affinity-…`: clients recently sent to this endpoint (ClientIP affinity).
    pub affinity_set: String,
}

impl EndpointNames {
    /// The names for `ep` of `port`.
    pub fn new(port: &ServicePortName, ep: &Endpoint) -> Self {
        // Colons are not allowed in names: IPv6 addresses use dots instead.
        let ip = ep.ip.to_string().replace(':', ".");
        let base = hash_and_truncate(&format!(
            "{}/{}/{}/{}__{}/{}",
            port.namespace,
            port.name,
            port.protocol.as_str(),
            port.port,
            ip,
            ep.port
        ));
        EndpointNames {
            chain: format!("endpoint-{base}"),
            affinity_set: format!("affinity-{base}"),
        }
    }
}

/// True for the per-service and per-endpoint chains: only they contain a `/`.
pub fn is_service_chain(name: &str) -> bool {
    name.contains('/')
}

/// Prefixes `name` with 8 base32 characters of its SHA-256, which keeps names unique and
/// visually distinct, then truncates it to fit any prefix.
fn hash_and_truncate(name: &str) -> String {
    let hash = Sha256::digest(name.as_bytes());
    let mut out = base32_prefix(&hash[..5]);
    out.push('-');
    out.push_str(name);
    if out.len() > BASE_LENGTH_MAX {
        // Upstream cuts at a byte; names from manifests the API server never validated may
        // hold multi-byte characters, and a Rust string can only be cut between them.
        out.truncate(floor_char_boundary(&out, BASE_LENGTH_MAX - 3));
        out.push_str("...");
    }
    out
}

/// The largest index not above `i` where a character of `s` starts (what
/// `str::floor_char_boundary` does, which is newer than our minimum Rust version).
fn floor_char_boundary(s: &str, i: usize) -> usize {
    (0..=i).rev().find(|&j| s.is_char_boundary(j)).unwrap_or(0)
}

/// RFC 4648 base32 of exactly 5 bytes: 8 characters, no padding.
fn base32_prefix(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let bits = bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    (0..8)
        .rev()
        .map(|i| ALPHABET[((bits >> (i * 5)) & 31) as usize] as char)
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
        // Expected values from upstream's proxier tests.
        let chains = ServiceChains::new(&spn("ns1", "svc1", "p80"));
        assert_eq!(chains.cluster, "service-ULMVA6XW-ns1/svc1/tcp/p80");
        let ep = Endpoint::ready("10.180.0.1".parse().unwrap(), 80, false);
        let names = EndpointNames::new(&spn("ns1", "svc1", "p80"), &ep);
        assert_eq!(
            names.chain,
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
        assert_eq!(
            names.affinity_set,
            "affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn ipv6_endpoints_and_long_names() {
        let ep = Endpoint::ready("fd00::1".parse().unwrap(), 8080, false);
        let names = EndpointNames::new(&spn("ns", "s", "p"), &ep);
        assert!(
            names.chain.ends_with("-ns/s/tcp/p__fd00..1/8080"),
            "{}",
            names.chain
        );
        let long = "a".repeat(63);
        let ep = Endpoint::ready(
            "fd00:1111:2222:3333:4444:5555:6666:7777".parse().unwrap(),
            65535,
            false,
        );
        let names = EndpointNames::new(&spn(&long, &long, &long), &ep);
        assert_eq!(names.chain.len(), "endpoint-".len() + BASE_LENGTH_MAX);
        assert!(names.chain.ends_with("..."));
        assert!(is_service_chain(&names.chain));
        assert!(!is_service_chain(SERVICES));
    }

    #[test]
    fn long_multi_byte_names_are_cut_between_characters() {
        // "HASHHASH-ns/" is 12 bytes and every "é" 2: byte BASE_LENGTH_MAX - 3 = 237 falls
        // inside one, so the cut moves back a byte.
        let chains = ServiceChains::new(&spn("ns", &"é".repeat(150), "p"));
        assert!(chains.cluster.ends_with("é..."), "{}", chains.cluster);
        assert_eq!(chains.cluster.len(), "service-".len() + BASE_LENGTH_MAX - 1);
    }
}
