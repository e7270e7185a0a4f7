//! From the file's shape to what the proxy runs with: the effective mode, its sync
//! periods, the node name and the backend's [`ProxyOptions`].
//!
//! v1alpha1 keeps per-mode copies of some settings (`iptables.masqueradeAll` and
//! `nftables.masqueradeAll`, three pairs of sync periods); as upstream's conversion to
//! its internal config does, only the copy of the effective mode counts.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use ipnet::IpNet;
use kube_proxy_model::{LocalDetector, NodePortAddress, ProxyOptions, Scheduling};

use super::duration::Duration;
use super::types::KubeProxyConfiguration;
use super::validation::{FieldError, ValidationErrors};
use super::ConfigError;

/// Which backend programs the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyMode {
    /// `iptables`, upstream's default on Linux.
    IpTables,
    /// `ipvs`.
    Ipvs,
    /// `nftables`.
    NfTables,
}

impl ProxyMode {
    /// The mode a `mode` field selects (blank means iptables), or `None` if unknown.
    pub fn from_config(mode: &str) -> Option<Self> {
        match mode {
            "" | "iptables" => Some(ProxyMode::IpTables),
            "ipvs" => Some(ProxyMode::Ipvs),
            "nftables" => Some(ProxyMode::NfTables),
            _ => None,
        }
    }

    /// The name used in `mode` and `--proxy-mode`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::IpTables => "iptables",
            ProxyMode::Ipvs => "ipvs",
            ProxyMode::NfTables => "nftables",
        }
    }
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProxyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProxyMode::from_config(s).ok_or_else(|| {
            format!("unknown proxy mode {s:?} (expected iptables, ipvs or nftables)")
        })
    }
}

/// How local traffic is told apart (`detectLocalMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalMode {
    /// Source in `clusterCIDR` (the default).
    ClusterCidr,
    /// Source in the node's `spec.podCIDRs`.
    NodeCidr,
    /// Arrived on `detectLocal.bridgeInterface`.
    BridgeInterface,
    /// Arrived on an interface named `detectLocal.interfaceNamePrefix*`.
    InterfaceNamePrefix,
}

impl LocalMode {
    /// The mode a `detectLocalMode` field selects (blank means ClusterCIDR).
    pub fn from_config(mode: &str) -> Option<Self> {
        match mode {
            "" | "ClusterCIDR" => Some(LocalMode::ClusterCidr),
            "NodeCIDR" => Some(LocalMode::NodeCidr),
            "BridgeInterface" => Some(LocalMode::BridgeInterface),
            "InterfaceNamePrefix" => Some(LocalMode::InterfaceNamePrefix),
            _ => None,
        }
    }
}

impl KubeProxyConfiguration {
    /// The proxy mode in effect. A validated configuration always names a known mode;
    /// an unknown one is treated like blank (iptables).
    pub fn effective_mode(&self) -> ProxyMode {
        ProxyMode::from_config(&self.mode).unwrap_or(ProxyMode::IpTables)
    }

    /// How `detectLocalMode` tells local traffic apart (unknown values: ClusterCIDR).
    pub fn local_mode(&self) -> LocalMode {
        LocalMode::from_config(&self.detect_local_mode).unwrap_or(LocalMode::ClusterCidr)
    }

    /// The full-resync period of the effective mode (`<mode>.syncPeriod`). Validation
    /// guarantees it is positive; an unvalidated negative value reads as zero.
    pub fn sync_period(&self) -> std::time::Duration {
        self.mode_sync_periods().0.to_std().unwrap_or_default()
    }

    /// The minimum time between syncs of the effective mode (`<mode>.minSyncPeriod`).
    pub fn min_sync_period(&self) -> std::time::Duration {
        self.mode_sync_periods().1.to_std().unwrap_or_default()
    }

    /// `(syncPeriod, minSyncPeriod)` of the effective mode's section, as written.
    pub(crate) fn mode_sync_periods(&self) -> (Duration, Duration) {
        let section = match self.effective_mode() {
            ProxyMode::IpTables => (&self.iptables.sync_period, &self.iptables.min_sync_period),
            ProxyMode::Ipvs => (&self.ipvs.sync_period, &self.ipvs.min_sync_period),
            ProxyMode::NfTables => (&self.nftables.sync_period, &self.nftables.min_sync_period),
        };
        (*section.0, *section.1)
    }

    /// `masqueradeAll` of the effective mode (ipvs reads the iptables copy).
    pub fn masquerade_all(&self) -> bool {
        self.masquerade_section().1
    }

    /// Sets `masqueradeAll` of the effective mode, as `--masquerade-all` does.
    pub fn set_masquerade_all(&mut self, value: bool) {
        match self.effective_mode() {
            ProxyMode::NfTables => self.nftables.masquerade_all = value,
            ProxyMode::IpTables | ProxyMode::Ipvs => self.iptables.masquerade_all = value,
        }
    }

    /// `masqueradeBit` of the effective mode (ipvs reads the iptables copy), defaulted.
    pub fn masquerade_bit(&self) -> i32 {
        let bit = self.masquerade_section().2;
        bit.unwrap_or(super::defaults::MASQUERADE_BIT)
    }

    /// The section holding the effective mode's masquerade settings, with its
    /// `masqueradeAll` and `masqueradeBit`.
    fn masquerade_section(&self) -> (&'static str, bool, Option<i32>) {
        match self.effective_mode() {
            ProxyMode::NfTables => (
                "nftables",
                self.nftables.masquerade_all,
                self.nftables.masquerade_bit,
            ),
            ProxyMode::IpTables | ProxyMode::Ipvs => (
                "iptables",
                self.iptables.masquerade_all,
                self.iptables.masquerade_bit,
            ),
        }
    }

    /// The health check server's address; `None` when disabled (empty).
    pub fn healthz_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        server_addr("healthzBindAddress", &self.healthz_bind_address)
    }

    /// The metrics server's address; `None` when disabled (empty).
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        server_addr("metricsBindAddress", &self.metrics_bind_address)
    }

    /// The `nf_conntrack_max` to set, as upstream's `getConntrackMax`: `maxPerCore`
    /// times the CPUs, but at least `min`; `None` leaves the kernel's value alone.
    pub fn conntrack_max(&self, num_cpus: usize) -> Option<u64> {
        let per_core = u64::try_from(self.conntrack.max_per_core?).ok()?;
        if per_core == 0 {
            return None;
        }
        let floor = self.conntrack.min.and_then(|m| u64::try_from(m).ok());
        let scaled = per_core.saturating_mul(num_cpus as u64);
        Some(scaled.max(floor.unwrap_or(0)))
    }

    /// The node's name: `hostnameOverride` or the host name, trimmed and lower-cased
    /// (upstream's `GetHostname`).
    pub fn node_name(&self) -> Result<String, ConfigError> {
        let name = if self.hostname_override.is_empty() {
            system_hostname()?
        } else {
            self.hostname_override.clone()
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(ConfigError::Hostname("empty hostname is invalid".into()));
        }
        Ok(name.to_lowercase())
    }

    /// What a backend needs from the configuration. `node_pod_cidrs` is the Node's
    /// `spec.podCIDRs`, used only when `detectLocalMode` is NodeCIDR.
    pub fn proxy_options(&self, node_pod_cidrs: &[IpNet]) -> Result<ProxyOptions, ConfigError> {
        let masquerade_bit = u8::try_from(self.masquerade_bit())
            .ok()
            .filter(|bit| *bit <= 31)
            .ok_or_else(|| {
                let field = format!("{}.masqueradeBit", self.masquerade_section().0);
                invalid(
                    field,
                    self.masquerade_bit(),
                    "must be within the range [0, 31]",
                )
            })?;
        Ok(ProxyOptions {
            masquerade_all: self.masquerade_all(),
            masquerade_bit,
            local_detector: self.local_detector(node_pod_cidrs)?,
            node_port_addresses: self.node_port_address_list()?,
            // The selection is not part of upstream's file: callers set it from the CLI.
            scheduling: Scheduling::default(),
        })
    }

    /// The parsed `clusterCIDR` list (empty if unset).
    pub fn cluster_cidrs(&self) -> Result<Vec<IpNet>, ConfigError> {
        if self.cluster_cidr.is_empty() {
            return Ok(Vec::new());
        }
        self.cluster_cidr
            .split(',')
            .enumerate()
            .map(|(i, cidr)| {
                cidr.parse().map_err(|_| {
                    invalid(
                        format!("clusterCIDR[{i}]"),
                        format!("{cidr:?}"),
                        "must be a valid CIDR block",
                    )
                })
            })
            .collect()
    }

    /// Upstream's `getLocalDetectors`: for CIDR modes, the first CIDR of each family.
    fn local_detector(&self, node_pod_cidrs: &[IpNet]) -> Result<LocalDetector, ConfigError> {
        let cidrs = match self.local_mode() {
            LocalMode::ClusterCidr => self.cluster_cidrs()?,
            LocalMode::NodeCidr => node_pod_cidrs.to_vec(),
            LocalMode::BridgeInterface => {
                let name = self.detect_local.bridge_interface.clone();
                return Ok(LocalDetector::BridgeInterface(name));
            }
            LocalMode::InterfaceNamePrefix => {
                let prefix = self.detect_local.interface_name_prefix.clone();
                return Ok(LocalDetector::InterfaceNamePrefix(prefix));
            }
        };
        let first_v4 = cidrs.iter().find(|c| matches!(c, IpNet::V4(_)));
        let first_v6 = cidrs.iter().find(|c| matches!(c, IpNet::V6(_)));
        let per_family: Vec<IpNet> = first_v4.into_iter().chain(first_v6).copied().collect();
        Ok(if per_family.is_empty() {
            LocalDetector::None
        } else {
            LocalDetector::Cidrs(per_family)
        })
    }

    /// `nodePortAddresses` with keywords expanded: `primary` stays symbolic (the node's
    /// IPs are not known here), `localhost` and `all` become their CIDRs.
    fn node_port_address_list(&self) -> Result<Vec<NodePortAddress>, ConfigError> {
        let mut out = Vec::with_capacity(self.node_port_addresses.len());
        for (i, entry) in self.node_port_addresses.iter().enumerate() {
            match entry.as_str() {
                "primary" => out.push(NodePortAddress::Primary),
                "localhost" => out.extend(cidrs(&["127.0.0.0/8", "::1/128"])),
                "all" => out.extend(cidrs(&["0.0.0.0/0", "::/0"])),
                cidr => {
                    let net = cidr.parse().map_err(|_| {
                        invalid(
                            format!("nodePortAddresses[{i}]"),
                            format!("{cidr:?}"),
                            "must be a valid CIDR",
                        )
                    })?;
                    out.push(NodePortAddress::Cidr(net));
                }
            }
        }
        out.dedup();
        Ok(out)
    }
}

fn cidrs(list: &'static [&'static str]) -> impl Iterator<Item = NodePortAddress> {
    list.iter()
        .map(|c| NodePortAddress::Cidr(c.parse().expect("static CIDR literal")))
}

/// Parses a validated `IP:port` server address; empty means disabled.
fn server_addr(field: &str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| invalid(field.to_string(), format!("{value:?}"), "must be IP:port"))
}

fn invalid(field: String, value: impl fmt::Display, detail: &str) -> ConfigError {
    ConfigError::Invalid(ValidationErrors(vec![FieldError {
        field,
        value: value.to_string(),
        detail: detail.to_string(),
    }]))
}

/// The kernel's host name, as Go's `os.Hostname` reads it on Linux.
fn system_hostname() -> Result<String, ConfigError> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| ConfigError::Hostname(format!("couldn't determine hostname: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: &str) -> KubeProxyConfiguration {
        let mut c = KubeProxyConfiguration {
            mode: mode.into(),
            ..KubeProxyConfiguration::defaulted()
        };
        c.apply_platform_defaults();
        c
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn secs(n: u64) -> std::time::Duration {
        std::time::Duration::from_secs(n)
    }

    #[test]
    fn server_addresses() {
        let mut c = config("iptables");
        assert_eq!(
            c.healthz_addr().unwrap(),
            Some("0.0.0.0:10256".parse().unwrap())
        );
        assert_eq!(
            c.metrics_addr().unwrap(),
            Some("127.0.0.1:10249".parse().unwrap())
        );
        c.metrics_bind_address.clear();
        assert_eq!(c.metrics_addr().unwrap(), None);
        c.healthz_bind_address = "[fd00::1]:1".into();
        assert_eq!(
            c.healthz_addr().unwrap(),
            Some("[fd00::1]:1".parse().unwrap())
        );
        c.healthz_bind_address = "nope".into();
        assert!(c
            .healthz_addr()
            .unwrap_err()
            .to_string()
            .contains("healthzBindAddress"));
    }

    #[test]
    fn conntrack_max_like_upstream() {
        let mut c = config("iptables");
        assert_eq!(c.conntrack_max(2), Some(131072));
        assert_eq!(c.conntrack_max(8), Some(262144));
        c.conntrack.max_per_core = Some(0);
        assert_eq!(c.conntrack_max(8), None);
    }

    #[test]
    fn mode_selects_its_section() {
        let mut c = config("");
        assert_eq!(c.effective_mode(), ProxyMode::IpTables);
        c.nftables.sync_period = Duration::from_secs(7);
        c.nftables.masquerade_all = true;
        c.nftables.masquerade_bit = Some(3);
        assert_eq!(c.sync_period(), secs(30));
        assert!(!c.masquerade_all());
        assert_eq!(c.masquerade_bit(), 14);
        c.mode = "nftables".into();
        assert_eq!(c.effective_mode(), ProxyMode::NfTables);
        assert_eq!(c.sync_period(), secs(7));
        assert_eq!(c.min_sync_period(), secs(1));
        assert!(c.masquerade_all());
        assert_eq!(c.masquerade_bit(), 3);
        c.mode = "ipvs".into();
        c.iptables.masquerade_bit = Some(9);
        assert_eq!(c.min_sync_period(), secs(0));
        assert_eq!(c.masquerade_bit(), 9);
    }

    #[test]
    fn cluster_cidr_detector_takes_first_of_each_family() {
        let mut c = config("nftables");
        c.cluster_cidr = "fd00::/48,10.244.0.0/16".into();
        let opts = c.proxy_options(&[]).unwrap();
        assert_eq!(
            opts.local_detector,
            LocalDetector::Cidrs(vec![net("10.244.0.0/16"), net("fd00::/48")])
        );
        assert_eq!(opts.node_port_addresses, [NodePortAddress::Primary]);
        assert_eq!(opts.masquerade_bit, 14);
        assert_eq!(opts.scheduling, Scheduling::RoundRobin);
        c.cluster_cidr.clear();
        assert_eq!(
            c.proxy_options(&[]).unwrap().local_detector,
            LocalDetector::None
        );
    }

    #[test]
    fn node_cidr_detector_uses_pod_cidrs() {
        let mut c = config("iptables");
        c.detect_local_mode = "NodeCIDR".into();
        c.cluster_cidr = "10.0.0.0/8".into();
        let pod_cidrs = [net("10.244.1.0/24"), net("10.244.2.0/24")];
        assert_eq!(
            c.proxy_options(&pod_cidrs).unwrap().local_detector,
            LocalDetector::Cidrs(vec![net("10.244.1.0/24")])
        );
    }

    #[test]
    fn interface_detectors() {
        let mut c = config("iptables");
        c.detect_local_mode = "InterfaceNamePrefix".into();
        c.detect_local.interface_name_prefix = "veth".into();
        assert_eq!(
            c.proxy_options(&[]).unwrap().local_detector,
            LocalDetector::InterfaceNamePrefix("veth".into())
        );
        c.detect_local_mode = "BridgeInterface".into();
        c.detect_local.bridge_interface = "cbr0".into();
        assert_eq!(
            c.proxy_options(&[]).unwrap().local_detector,
            LocalDetector::BridgeInterface("cbr0".into())
        );
    }

    #[test]
    fn node_port_keywords_expand() {
        let mut c = config("iptables");
        c.node_port_addresses = vec!["10.0.0.0/8".into(), "localhost".into(), "primary".into()];
        assert_eq!(
            c.proxy_options(&[]).unwrap().node_port_addresses,
            [
                NodePortAddress::Cidr(net("10.0.0.0/8")),
                NodePortAddress::Cidr(net("127.0.0.0/8")),
                NodePortAddress::Cidr(net("::1/128")),
                NodePortAddress::Primary,
            ]
        );
        c.node_port_addresses = vec!["nope".into()];
        let err = c.proxy_options(&[]).unwrap_err().to_string();
        assert!(err.contains("nodePortAddresses[0]"), "{err}");
    }

    #[test]
    fn masquerade_settings_reach_options() {
        let mut c = config("iptables");
        c.set_masquerade_all(true);
        c.iptables.masquerade_bit = Some(0);
        let opts = c.proxy_options(&[]).unwrap();
        assert!(opts.masquerade_all);
        assert_eq!(opts.masquerade_bit, 0);
        c.iptables.masquerade_bit = Some(40);
        let err = c.proxy_options(&[]).unwrap_err().to_string();
        assert!(err.contains("iptables.masqueradeBit"), "{err}");
    }

    #[test]
    fn node_name_is_trimmed_and_lowercased() {
        let mut c = config("iptables");
        c.hostname_override = "  Node-A.Example  ".into();
        assert_eq!(c.node_name().unwrap(), "node-a.example");
        c.hostname_override = "   ".into();
        assert!(c.node_name().is_err());
        c.hostname_override.clear();
        let host = c.node_name().unwrap();
        assert!(!host.is_empty() && host == host.to_lowercase());
    }
}
