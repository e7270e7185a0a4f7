//! Upstream's defaults, in upstream's two steps.
//!
//! 1. [`KubeProxyConfiguration::apply_defaults`] is the v1alpha1 scheme defaulting
//!    (`pkg/proxy/apis/config/v1alpha1/defaults.go`): it fills zero/unset fields, and
//!    runs on the file, and on the flag defaults before flags are applied.
//! 2. [`KubeProxyConfiguration::apply_platform_defaults`] is Linux's
//!    `platformApplyDefaults` (`cmd/kube-proxy/app/server_linux.go`), which runs after
//!    flags or file are resolved: it picks the mode, nftables' `nodePortAddresses`
//!    and `detectLocalMode`.

use std::net::IpAddr;

use super::duration::Duration;
use super::types::{KubeProxyConfiguration, API_VERSION, KIND};

/// The health check server's port (`ports.ProxyHealthzPort`).
pub const HEALTHZ_PORT: u16 = 10256;
/// The metrics server's port (`ports.ProxyStatusPort`).
pub const METRICS_PORT: u16 = 10249;
/// `qos.KubeProxyOOMScoreAdj`.
pub const OOM_SCORE_ADJ: i32 = -999;
/// The default fwmark bit for SNAT.
pub const MASQUERADE_BIT: i32 = 14;

impl Default for KubeProxyConfiguration {
    /// An empty configuration (only `apiVersion` and `kind` set), as if read from a
    /// file that sets nothing; call [`apply_defaults`](Self::apply_defaults) to fill it.
    fn default() -> Self {
        KubeProxyConfiguration {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            bind_address: String::new(),
            bind_address_hard_fail: false,
            client_connection: Default::default(),
            cluster_cidr: String::new(),
            config_sync_period: Duration::ZERO,
            conntrack: Default::default(),
            detect_local: Default::default(),
            detect_local_mode: String::new(),
            enable_profiling: false,
            feature_gates: Default::default(),
            healthz_bind_address: String::new(),
            hostname_override: String::new(),
            iptables: Default::default(),
            ipvs: Default::default(),
            logging: Default::default(),
            metrics_bind_address: String::new(),
            mode: String::new(),
            nftables: Default::default(),
            node_port_addresses: Vec::new(),
            oom_score_adj: None,
            port_range: String::new(),
            show_hidden_metrics_for_version: String::new(),
            winkernel: Default::default(),
            windows_run_as_service: false,
        }
    }
}

impl KubeProxyConfiguration {
    /// A configuration with all of upstream's v1alpha1 defaults, before platform
    /// defaults (what the flags start from).
    pub fn defaulted() -> Self {
        let mut config = KubeProxyConfiguration::default();
        config.apply_defaults();
        config
    }

    /// Fills unset fields like upstream's `SetDefaults_KubeProxyConfiguration`.
    pub fn apply_defaults(&mut self) {
        self.default_addresses();
        self.oom_score_adj.get_or_insert(OOM_SCORE_ADJ);
        self.default_sync_periods();
        let ct = &mut self.conntrack;
        ct.max_per_core.get_or_insert(32 * 1024);
        ct.min.get_or_insert(128 * 1024);
        ct.tcp_established_timeout
            .get_or_insert(Duration::from_hours(24));
        // An hour, to outlive typical server timeouts (kubernetes#32551).
        ct.tcp_close_wait_timeout
            .get_or_insert(Duration::from_hours(1));
        self.iptables.masquerade_bit.get_or_insert(MASQUERADE_BIT);
        self.iptables.localhost_node_ports.get_or_insert(true);
        self.nftables.masquerade_bit.get_or_insert(MASQUERADE_BIT);
        set_if_zero(&mut self.config_sync_period, Duration::from_mins(15));
        self.default_client_connection();
        self.default_logging();
    }

    fn default_addresses(&mut self) {
        if self.bind_address.is_empty() {
            self.bind_address = "0.0.0.0".to_string();
        }
        // An IPv6 bind address moves the servers' defaults to IPv6 too.
        let ipv4 = matches!(self.bind_address.parse::<IpAddr>(), Ok(IpAddr::V4(_)));
        let (healthz_host, metrics_host) = if ipv4 {
            ("0.0.0.0", "127.0.0.1")
        } else {
            ("[::]", "[::1]")
        };
        self.healthz_bind_address = if self.healthz_bind_address.is_empty() {
            format!("{healthz_host}:{HEALTHZ_PORT}")
        } else {
            append_port_if_needed(&self.healthz_bind_address, HEALTHZ_PORT)
        };
        self.metrics_bind_address = if self.metrics_bind_address.is_empty() {
            format!("{metrics_host}:{METRICS_PORT}")
        } else {
            append_port_if_needed(&self.metrics_bind_address, METRICS_PORT)
        };
    }

    fn default_sync_periods(&mut self) {
        set_if_zero(&mut self.iptables.sync_period, Duration::from_secs(30));
        set_if_zero(&mut self.iptables.min_sync_period, Duration::from_secs(1));
        // ipvs.minSyncPeriod stays 0: upstream never defaulted it.
        set_if_zero(&mut self.ipvs.sync_period, Duration::from_secs(30));
        set_if_zero(&mut self.nftables.sync_period, Duration::from_secs(30));
        set_if_zero(&mut self.nftables.min_sync_period, Duration::from_secs(1));
    }

    fn default_client_connection(&mut self) {
        let cc = &mut self.client_connection;
        if cc.content_type.is_empty() {
            cc.content_type = "application/vnd.kubernetes.protobuf".to_string();
        }
        if cc.qps == 0.0 {
            cc.qps = 5.0;
        }
        if cc.burst == 0 {
            cc.burst = 10;
        }
    }

    /// component-base's `SetRecommendedLoggingConfiguration`.
    fn default_logging(&mut self) {
        let logging = &mut self.logging;
        if logging.format.is_empty() {
            logging.format = "text".to_string();
        }
        set_if_zero(&mut logging.flush_frequency, Duration::from_secs(5));
        for options in [&mut logging.options.text, &mut logging.options.json] {
            if options.info_buffer_size.is_empty() {
                options.info_buffer_size = "0".to_string();
            }
        }
    }

    /// Linux's `platformApplyDefaults`: runs once flags or file are resolved.
    pub fn apply_platform_defaults(&mut self) {
        if self.mode.is_empty() {
            self.mode = "iptables".to_string();
        }
        if self.mode == "nftables" && self.node_port_addresses.is_empty() {
            self.node_port_addresses = vec!["primary".to_string()];
        }
        if self.detect_local_mode.is_empty() {
            self.detect_local_mode = "ClusterCIDR".to_string();
        }
    }
}

fn set_if_zero(field: &mut Duration, default: Duration) {
    if field.is_zero() {
        *field = default;
    }
}

/// Upstream's `AppendPortIfNeeded`: adds `port` to a bare IP, leaves `host:port` and
/// anything unparsable (for validation to report) alone.
pub(crate) fn append_port_if_needed(addr: &str, port: u16) -> String {
    match addr.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => format!("{addr}:{port}"),
        Ok(IpAddr::V6(_)) => format!("[{addr}]:{port}"),
        Err(_) => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_upstream() {
        let mut c = KubeProxyConfiguration::defaulted();
        c.apply_platform_defaults();
        assert_eq!(c.bind_address, "0.0.0.0");
        assert_eq!(c.healthz_bind_address, "0.0.0.0:10256");
        assert_eq!(c.metrics_bind_address, "127.0.0.1:10249");
        assert_eq!(c.oom_score_adj, Some(-999));
        assert_eq!(c.iptables.sync_period, Duration::from_secs(30));
        assert_eq!(c.iptables.min_sync_period, Duration::from_secs(1));
        assert_eq!(c.iptables.masquerade_bit, Some(14));
        assert_eq!(c.iptables.localhost_node_ports, Some(true));
        assert!(!c.iptables.masquerade_all);
        assert_eq!(c.ipvs.sync_period, Duration::from_secs(30));
        assert_eq!(c.ipvs.min_sync_period, Duration::ZERO);
        assert_eq!(c.nftables.sync_period, Duration::from_secs(30));
        assert_eq!(c.nftables.min_sync_period, Duration::from_secs(1));
        assert_eq!(c.nftables.masquerade_bit, Some(14));
        assert_eq!(c.conntrack.max_per_core, Some(32768));
        assert_eq!(c.conntrack.min, Some(131072));
        assert_eq!(
            c.conntrack.tcp_established_timeout,
            Some(Duration::from_hours(24))
        );
        assert_eq!(
            c.conntrack.tcp_close_wait_timeout,
            Some(Duration::from_hours(1))
        );
        assert_eq!(c.conntrack.udp_timeout, Duration::ZERO);
        assert_eq!(c.config_sync_period, Duration::from_mins(15));
        assert_eq!(
            c.client_connection.content_type,
            "application/vnd.kubernetes.protobuf"
        );
        assert_eq!(c.client_connection.qps, 5.0);
        assert_eq!(c.client_connection.burst, 10);
        assert_eq!(c.logging.format, "text");
        assert_eq!(c.logging.flush_frequency, Duration::from_secs(5));
        assert_eq!(c.mode, "iptables");
        assert_eq!(c.detect_local_mode, "ClusterCIDR");
        assert!(c.node_port_addresses.is_empty());
    }

    #[test]
    fn ipv6_bind_address_moves_server_defaults() {
        let mut c = KubeProxyConfiguration {
            bind_address: "fd00::1".to_string(),
            ..Default::default()
        };
        c.apply_defaults();
        assert_eq!(c.healthz_bind_address, "[::]:10256");
        assert_eq!(c.metrics_bind_address, "[::1]:10249");
    }

    #[test]
    fn bare_server_ips_get_default_ports() {
        let mut c = KubeProxyConfiguration {
            healthz_bind_address: "10.0.0.1".to_string(),
            metrics_bind_address: "::".to_string(),
            ..Default::default()
        };
        c.apply_defaults();
        assert_eq!(c.healthz_bind_address, "10.0.0.1:10256");
        assert_eq!(c.metrics_bind_address, "[::]:10249");
    }

    #[test]
    fn explicit_zeroes_of_pointer_fields_survive() {
        let mut c = KubeProxyConfiguration::default();
        c.iptables.masquerade_bit = Some(0);
        c.oom_score_adj = Some(0);
        c.conntrack.max_per_core = Some(0);
        c.apply_defaults();
        assert_eq!(c.iptables.masquerade_bit, Some(0));
        assert_eq!(c.oom_score_adj, Some(0));
        assert_eq!(c.conntrack.max_per_core, Some(0));
    }

    #[test]
    fn nftables_mode_defaults_node_port_addresses_to_primary() {
        let mut c = KubeProxyConfiguration {
            mode: "nftables".to_string(),
            ..KubeProxyConfiguration::defaulted()
        };
        c.apply_platform_defaults();
        assert_eq!(c.node_port_addresses, ["primary"]);
    }
}
