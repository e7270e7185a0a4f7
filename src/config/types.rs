//! `KubeProxyConfiguration` (`kubeproxy.config.k8s.io/v1alpha1`) as serde types.
//!
//! Field names, nesting and optionality follow upstream's
//! `staging/src/k8s.io/kube-proxy/config/v1alpha1/types.go`, so a file written for
//! upstream kube-proxy decodes here and one we write decodes there. Go pointer fields
//! (`*int32`, `*bool`, `*metav1.Duration`) are `Option`s because "unset" and "zero" mean
//! different things (`masqueradeBit: 0` is a valid bit, unset means 14). Every struct
//! rejects unknown fields: a typo must fail loudly at start, not be silently ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use super::duration::Duration;

/// The `apiVersion` of the file format.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
/// The `kind` of the file format.
pub const KIND: &str = "KubeProxyConfiguration";

/// Everything kube-proxy is configured with, flags and file alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct KubeProxyConfiguration {
    /// Always [`API_VERSION`]; checked on load.
    pub api_version: String,
    /// Always [`KIND`]; checked on load.
    pub kind: String,
    /// `--bind-address`: the node's primary IP as kube-proxy sees it (binds nothing).
    #[serde(default)]
    pub bind_address: String,
    /// `--bind-address-hard-fail`: exit if the healthz/metrics servers cannot bind.
    #[serde(default)]
    pub bind_address_hard_fail: bool,
    /// `--kubeconfig`, `--kube-api-*`: how to reach the API server.
    #[serde(default)]
    pub client_connection: ClientConnectionConfiguration,
    /// `--cluster-cidr`: comma-separated pod CIDRs (at most one per family).
    #[serde(default, rename = "clusterCIDR")]
    pub cluster_cidr: String,
    /// `--config-sync-period`: how often informers re-list.
    #[serde(default)]
    pub config_sync_period: Duration,
    /// `--conntrack-*`: conntrack sysctls kube-proxy sets at start.
    #[serde(default)]
    pub conntrack: ConntrackConfiguration,
    /// `--pod-bridge-interface`, `--pod-interface-name-prefix`.
    #[serde(default)]
    pub detect_local: DetectLocalConfiguration,
    /// `--detect-local-mode`: ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix.
    #[serde(default)]
    pub detect_local_mode: String,
    /// `--profiling`: serve `/debug/pprof` on the metrics server.
    #[serde(default)]
    pub enable_profiling: bool,
    /// `--feature-gates`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub feature_gates: BTreeMap<String, bool>,
    /// `--healthz-bind-address`: `IP:port` of the health check server; empty disables.
    #[serde(default)]
    pub healthz_bind_address: String,
    /// `--hostname-override`: the node name; empty means the host name.
    #[serde(default)]
    pub hostname_override: String,
    /// `--iptables-*` (also read by `ipvs` mode for the masquerade bit).
    #[serde(default)]
    pub iptables: IpTablesConfiguration,
    /// `--ipvs-*`.
    #[serde(default)]
    pub ipvs: IpvsConfiguration,
    /// `--v`, `--vmodule`, `--logging-format`, `--log-flush-frequency`.
    #[serde(default)]
    pub logging: LoggingConfiguration,
    /// `--metrics-bind-address`: `IP:port` of the metrics server; empty disables.
    #[serde(default)]
    pub metrics_bind_address: String,
    /// `--proxy-mode`: iptables (default), ipvs or nftables.
    #[serde(default)]
    pub mode: String,
    /// nftables-mode settings (no flags except through `--proxy-mode`).
    #[serde(default)]
    pub nftables: NfTablesConfiguration,
    /// `--nodeport-addresses`: CIDRs and keywords (`primary`, `localhost`, `all`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub node_port_addresses: Vec<String>,
    /// `--oom-score-adj`, in [-1000, 1000].
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// Unused since the userspace proxy was removed; kept so old files still load.
    #[serde(default)]
    pub port_range: String,
    /// `--show-hidden-metrics-for-version`.
    #[serde(default)]
    pub show_hidden_metrics_for_version: String,
    /// Windows-only settings; accepted and ignored on Linux.
    #[serde(default)]
    pub winkernel: WinkernelConfiguration,
    /// Windows-only; accepted and ignored on Linux.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub windows_run_as_service: bool,
}

/// `clientConnection` (component-base `ClientConnectionConfiguration`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct ClientConnectionConfiguration {
    /// `Accept` header for API requests; empty means the client's default.
    #[serde(default)]
    pub accept_content_types: String,
    /// `--kube-api-burst`.
    #[serde(default)]
    pub burst: i32,
    /// `--kube-api-content-type`.
    #[serde(default)]
    pub content_type: String,
    /// `--kubeconfig`; empty means in-cluster configuration.
    #[serde(default)]
    pub kubeconfig: String,
    /// `--kube-api-qps`.
    #[serde(default)]
    pub qps: f32,
}

/// `conntrack`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct ConntrackConfiguration {
    /// `--conntrack-max-per-core`; 0 leaves `nf_conntrack_max` alone.
    #[serde(default)]
    pub max_per_core: Option<i32>,
    /// `--conntrack-min`.
    #[serde(default)]
    pub min: Option<i32>,
    /// `--conntrack-tcp-be-liberal`.
    #[serde(default, rename = "tcpBeLiberal")]
    pub tcp_be_liberal: bool,
    /// `--conntrack-tcp-timeout-close-wait`.
    #[serde(default, rename = "tcpCloseWaitTimeout")]
    pub tcp_close_wait_timeout: Option<Duration>,
    /// `--conntrack-tcp-timeout-established`.
    #[serde(default, rename = "tcpEstablishedTimeout")]
    pub tcp_established_timeout: Option<Duration>,
    /// `--conntrack-udp-timeout-stream`.
    #[serde(default, rename = "udpStreamTimeout")]
    pub udp_stream_timeout: Duration,
    /// `--conntrack-udp-timeout`.
    #[serde(default, rename = "udpTimeout")]
    pub udp_timeout: Duration,
}

/// `detectLocal`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct DetectLocalConfiguration {
    /// `--pod-bridge-interface`.
    #[serde(default)]
    pub bridge_interface: String,
    /// `--pod-interface-name-prefix`.
    #[serde(default)]
    pub interface_name_prefix: String,
}

/// `iptables`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct IpTablesConfiguration {
    /// `--iptables-localhost-nodeports`.
    #[serde(default)]
    pub localhost_node_ports: Option<bool>,
    /// `--masquerade-all` in iptables and ipvs mode.
    #[serde(default)]
    pub masquerade_all: bool,
    /// `--iptables-masquerade-bit`, in [0, 31].
    #[serde(default)]
    pub masquerade_bit: Option<i32>,
    /// `--iptables-min-sync-period`.
    #[serde(default)]
    pub min_sync_period: Duration,
    /// SNAT with the node's InternalIP (newer upstream releases; accepted, unused).
    #[serde(
        default,
        rename = "snatNodeInternalIP",
        skip_serializing_if = "Option::is_none"
    )]
    pub snat_node_internal_ip: Option<bool>,
    /// `--iptables-sync-period`.
    #[serde(default)]
    pub sync_period: Duration,
}

/// `ipvs`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct IpvsConfiguration {
    /// `--ipvs-exclude-cidrs`.
    #[serde(default, rename = "excludeCIDRs", deserialize_with = "null_as_default")]
    pub exclude_cidrs: Vec<String>,
    /// `--ipvs-min-sync-period`.
    #[serde(default)]
    pub min_sync_period: Duration,
    /// `--ipvs-scheduler`; empty means `rr`.
    #[serde(default)]
    pub scheduler: String,
    /// `--ipvs-strict-arp`.
    #[serde(default, rename = "strictARP")]
    pub strict_arp: bool,
    /// `--ipvs-sync-period`.
    #[serde(default)]
    pub sync_period: Duration,
    /// `--ipvs-tcpfin-timeout`; 0 leaves the kernel's value.
    #[serde(default)]
    pub tcp_fin_timeout: Duration,
    /// `--ipvs-tcp-timeout`; 0 leaves the kernel's value.
    #[serde(default)]
    pub tcp_timeout: Duration,
    /// `--ipvs-udp-timeout`; 0 leaves the kernel's value.
    #[serde(default)]
    pub udp_timeout: Duration,
}

/// `nftables`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct NfTablesConfiguration {
    /// `--masquerade-all` in nftables mode.
    #[serde(default)]
    pub masquerade_all: bool,
    /// The fwmark bit for SNAT in nftables mode, in [0, 31].
    #[serde(default)]
    pub masquerade_bit: Option<i32>,
    /// `--iptables-min-sync-period` in nftables mode.
    #[serde(default)]
    pub min_sync_period: Duration,
    /// `--iptables-sync-period` in nftables mode.
    #[serde(default)]
    pub sync_period: Duration,
}

/// `winkernel`: Windows-only, accepted so shared files load on Linux.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct WinkernelConfiguration {
    /// Create HNS policies with DSR.
    #[serde(default, rename = "enableDSR")]
    pub enable_dsr: bool,
    /// Forward the service VIP for the health check port.
    #[serde(default)]
    pub forward_health_check_vip: bool,
    /// The HNS network name.
    #[serde(default)]
    pub network_name: String,
    /// The root HNS endpoint name.
    #[serde(default)]
    pub root_hns_endpoint_name: String,
    /// The source VIP for NAT.
    #[serde(default)]
    pub source_vip: String,
}

/// `logging` (component-base `LoggingConfiguration`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct LoggingConfiguration {
    /// `--log-flush-frequency`: a duration string or integer nanoseconds.
    #[serde(default, deserialize_with = "duration_or_nanos")]
    pub flush_frequency: Duration,
    /// `--logging-format`: `text` or `json`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub format: String,
    /// Per-format options.
    #[serde(default)]
    pub options: LoggingOptions,
    /// `--v`.
    #[serde(default)]
    pub verbosity: u32,
    /// `--vmodule`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub vmodule: Vec<VModuleItem>,
}

/// One `--vmodule` entry: a file pattern and its verbosity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct VModuleItem {
    /// A glob on the source file name (without `.go`/`.rs`).
    pub file_pattern: String,
    /// The verbosity for matching files.
    pub verbosity: u32,
}

/// `logging.options`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct LoggingOptions {
    /// Options of the `json` format.
    #[serde(default)]
    pub json: FormatOptions,
    /// Options of the `text` format.
    #[serde(default)]
    pub text: FormatOptions,
}

/// `logging.options.text` and `logging.options.json`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, expecting = "a mapping")]
pub struct FormatOptions {
    /// Buffer size for info messages when split; a Kubernetes quantity (`0`, `1Mi`).
    #[serde(default, deserialize_with = "quantity")]
    pub info_buffer_size: String,
    /// Send error messages to stderr and info messages to stdout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split_stream: bool,
}

/// Treats an explicit `null` like an absent field, as Go's JSON decoder does for slices
/// and maps (`--write-config-to` of upstream writes `nodePortAddresses: null`).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `flushFrequency` is a `TimeOrMetaDuration`: a duration string or integer nanoseconds.
fn duration_or_nanos<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Nanos(i64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Nanos(n) => Ok(Duration::from_nanos(n)),
        Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// A resource quantity may be written as a string (`"1Mi"`) or a bare number (`0`).
fn quantity<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Int(u64),
        Text(String),
    }
    Ok(match Raw::deserialize(deserializer)? {
        Raw::Int(n) => n.to_string(),
        Raw::Text(s) => s,
    })
}
