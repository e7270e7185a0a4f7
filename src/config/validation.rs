//! Upstream's validation (`pkg/proxy/apis/config/validation/validation.go`), reporting
//! fields by their file names (`iptables.masqueradeBit`) so an operator can find them.
//!
//! Rules follow upstream v1.33 and later; where later releases relaxed a rule (the
//! `nodePortAddresses` keywords `localhost` and `all`, combined freely with CIDRs), the
//! relaxed form is accepted so that configurations of every supported release load.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use super::duration::Duration;
use super::resolve::{LocalMode, ProxyMode};
use super::types::{KubeProxyConfiguration, LoggingConfiguration};

/// One rejected field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path in the file, e.g. `iptables.masqueradeBit`.
    pub field: String,
    /// The rejected value as written.
    pub value: String,
    /// What is wrong with it.
    pub detail: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: Invalid value: {}: {}",
            self.field, self.value, self.detail
        )
    }
}

/// Every rejected field of a configuration (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        match errors.as_slice() {
            [one] => f.write_str(one),
            many => write!(f, "[{}]", many.join(", ")),
        }
    }
}

impl std::error::Error for ValidationErrors {}

/// Collects errors while walking the configuration.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(
        &mut self,
        field: impl Into<String>,
        value: impl fmt::Display,
        detail: impl Into<String>,
    ) {
        self.0.push(FieldError {
            field: field.into(),
            value: value.to_string(),
            detail: detail.into(),
        });
    }

    fn non_negative(&mut self, field: &str, value: Duration) {
        if value.is_negative() {
            self.add(field, value, "must be greater than or equal to 0");
        }
    }

    fn positive(&mut self, field: &str, value: Duration) {
        if value <= Duration::ZERO {
            self.add(field, value, "must be greater than 0");
        }
    }

    fn in_range(&mut self, field: &str, value: Option<i32>, min: i32, max: i32) {
        if let Some(v) = value.filter(|v| !(min..=max).contains(v)) {
            self.add(field, v, format!("must be within the range [{min}, {max}]"));
        }
    }
}

/// The IPVS schedulers upstream accepts; empty means `rr`.
const IPVS_SCHEDULERS: &[&str] = &[
    "rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh", "",
];

impl KubeProxyConfiguration {
    /// Checks the (defaulted) configuration like upstream's `Validate`, returning every
    /// problem at once.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Errors::default();
        self.validate_mode_section(&mut errs);
        errs.in_range(
            "iptables.masqueradeBit",
            self.iptables.masquerade_bit,
            0,
            31,
        );
        self.validate_conntrack(&mut errs);
        errs.in_range("oomScoreAdj", self.oom_score_adj, -1000, 1000);
        if self.client_connection.burst < 0 {
            errs.add(
                "clientConnection.burst",
                self.client_connection.burst,
                "must be greater than or equal to 0",
            );
        }
        errs.positive("configSyncPeriod", self.config_sync_period);
        if self.bind_address.parse::<IpAddr>().is_err() {
            errs.add(
                "bindAddress",
                quoted(&self.bind_address),
                "not a valid textual representation of an IP address",
            );
        }
        validate_host_port(&mut errs, "healthzBindAddress", &self.healthz_bind_address);
        validate_host_port(&mut errs, "metricsBindAddress", &self.metrics_bind_address);
        self.validate_detect_local(&mut errs);
        validate_node_port_addresses(&mut errs, &self.node_port_addresses);
        validate_show_hidden_metrics(&mut errs, &self.show_hidden_metrics_for_version);
        validate_logging(&mut errs, &self.logging);
        if errs.0.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errs.0))
        }
    }

    /// The mode itself, and the section of settings that only the chosen mode reads.
    fn validate_mode_section(&self, errs: &mut Errors) {
        let Some(mode) = ProxyMode::from_config(&self.mode) else {
            errs.add(
                "mode",
                quoted(&self.mode),
                "must be iptables,ipvs,nftables or blank (blank means the best-available proxy [currently iptables])",
            );
            return;
        };
        let section = mode.as_str();
        let (sync, min_sync) = self.mode_sync_periods();
        errs.positive(&format!("{section}.syncPeriod"), sync);
        errs.non_negative(&format!("{section}.minSyncPeriod"), min_sync);
        if min_sync > sync {
            errs.add(
                format!("{section}.syncPeriod"),
                sync,
                format!("must be greater than or equal to {section}.minSyncPeriod ({min_sync})"),
            );
        }
        match mode {
            ProxyMode::Ipvs => self.validate_ipvs(errs),
            ProxyMode::NfTables => errs.in_range(
                "nftables.masqueradeBit",
                self.nftables.masquerade_bit,
                0,
                31,
            ),
            ProxyMode::IpTables => {}
        }
    }

    fn validate_ipvs(&self, errs: &mut Errors) {
        let ipvs = &self.ipvs;
        errs.non_negative("ipvs.tcpTimeout", ipvs.tcp_timeout);
        errs.non_negative("ipvs.tcpFinTimeout", ipvs.tcp_fin_timeout);
        errs.non_negative("ipvs.udpTimeout", ipvs.udp_timeout);
        if !IPVS_SCHEDULERS.contains(&ipvs.scheduler.as_str()) {
            errs.add(
                "ipvs.scheduler",
                quoted(&ipvs.scheduler),
                "must be one of rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh, or blank (blank means rr)",
            );
        }
        for (i, cidr) in ipvs.exclude_cidrs.iter().enumerate() {
            if cidr.parse::<IpNet>().is_err() {
                errs.add(
                    format!("ipvs.excludeCIDRs[{i}]"),
                    quoted(cidr),
                    "must be a valid CIDR",
                );
            }
        }
    }

    fn validate_conntrack(&self, errs: &mut Errors) {
        let ct = &self.conntrack;
        errs.in_range("conntrack.maxPerCore", ct.max_per_core, 0, i32::MAX);
        errs.in_range("conntrack.min", ct.min, 0, i32::MAX);
        let zero = Duration::ZERO;
        errs.non_negative(
            "conntrack.tcpEstablishedTimeout",
            ct.tcp_established_timeout.unwrap_or(zero),
        );
        errs.non_negative(
            "conntrack.tcpCloseWaitTimeout",
            ct.tcp_close_wait_timeout.unwrap_or(zero),
        );
        errs.non_negative("conntrack.udpTimeout", ct.udp_timeout);
        errs.non_negative("conntrack.udpStreamTimeout", ct.udp_stream_timeout);
    }

    fn validate_detect_local(&self, errs: &mut Errors) {
        match LocalMode::from_config(&self.detect_local_mode) {
            None => errs.add(
                "detectLocalMode",
                quoted(&self.detect_local_mode),
                "supported values: \"ClusterCIDR\", \"NodeCIDR\", \"BridgeInterface\", \"InterfaceNamePrefix\", \"\"",
            ),
            Some(LocalMode::BridgeInterface) if self.detect_local.bridge_interface.is_empty() => {
                errs.add("detectLocal.bridgeInterface", "\"\"", "must not be empty");
            }
            Some(LocalMode::InterfaceNamePrefix) if self.detect_local.interface_name_prefix.is_empty() => {
                errs.add("detectLocal.interfaceNamePrefix", "\"\"", "must not be empty");
            }
            Some(_) => {}
        }
        if !self.cluster_cidr.is_empty() {
            validate_cluster_cidrs(errs, &self.cluster_cidr);
        }
    }
}

/// Go's `%q`-ish rendering of a string value.
fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// `IP:port` with a literal IP and a port in 1..=65535; empty disables the server.
fn validate_host_port(errs: &mut Errors, field: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    let Some((host, port)) = split_host_port(value) else {
        errs.add(field, quoted(value), "must be IP:port");
        return;
    };
    if host.parse::<IpAddr>().is_err() {
        errs.add(field, quoted(host), "must be a valid IP");
    }
    if !matches!(port.parse::<u32>(), Ok(1..=65535)) {
        errs.add(field, quoted(port), "must be a valid port");
    }
}

/// Go's `net.SplitHostPort`: `host:port` or `[host]:port`; a bare IPv6 address has
/// too many colons to be split.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return Some((host, after.strip_prefix(':')?));
    }
    let (host, port) = s.rsplit_once(':')?;
    (!host.contains(':')).then_some((host, port))
}

/// `clusterCIDR`: comma-separated valid CIDRs, at most one per IP family.
fn validate_cluster_cidrs(errs: &mut Errors, value: &str) {
    let mut families = [0usize; 2];
    for (i, cidr) in value.split(',').enumerate() {
        match cidr.parse::<IpNet>() {
            Ok(IpNet::V4(_)) => families[0] += 1,
            Ok(IpNet::V6(_)) => families[1] += 1,
            Err(_) => errs.add(
                format!("clusterCIDR[{i}]"),
                quoted(cidr),
                "must be a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)",
            ),
        }
    }
    if families.iter().any(|&n| n > 1) {
        errs.add(
            "clusterCIDR",
            quoted(value),
            "may only contain at most one CIDR block per IP family (e.g. 10.100.0.0/16,fde4:8dba:82e1::/48)",
        );
    }
}

/// Keywords `nodePortAddresses` may hold besides CIDRs.
pub(crate) const NODE_PORT_KEYWORDS: &[&str] = &["primary", "localhost", "all"];

fn validate_node_port_addresses(errs: &mut Errors, addresses: &[String]) {
    for (i, addr) in addresses.iter().enumerate() {
        if !NODE_PORT_KEYWORDS.contains(&addr.as_str()) && addr.parse::<IpNet>().is_err() {
            errs.add(
                format!("nodePortAddresses[{i}]"),
                quoted(addr),
                "must be a valid CIDR or one of 'primary', 'localhost', 'all'",
            );
        }
    }
}

/// `<major>.<minor>`, e.g. `1.32`.
fn validate_show_hidden_metrics(errs: &mut Errors, version: &str) {
    if version.is_empty() {
        return;
    }
    let valid = version
        .split_once('.')
        .is_some_and(|(major, minor)| major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok());
    if !valid {
        errs.add(
            "showHiddenMetricsForVersion",
            quoted(version),
            "must be in the format <major>.<minor>, e.g. 1.32",
        );
    }
}

fn validate_logging(errs: &mut Errors, logging: &LoggingConfiguration) {
    match logging.format.as_str() {
        "text" | "" => {}
        "json" if logging.vmodule.is_empty() => {}
        "json" => {
            let vmodule: Vec<String> = logging
                .vmodule
                .iter()
                .map(|v| format!("{}={}", v.file_pattern, v.verbosity))
                .collect();
            errs.add(
                "logging.vmodule",
                quoted(&vmodule.join(",")),
                "only supported for text log format",
            )
        }
        other => errs.add(
            "logging.format",
            quoted(other),
            "supported values: \"json\", \"text\"",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> KubeProxyConfiguration {
        let mut c = KubeProxyConfiguration::defaulted();
        c.apply_platform_defaults();
        c
    }

    fn fields(c: &KubeProxyConfiguration) -> Vec<String> {
        match c.validate() {
            Ok(()) => Vec::new(),
            Err(e) => e.0.into_iter().map(|e| e.field).collect(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(valid().validate(), Ok(()));
        for mode in ["ipvs", "nftables"] {
            let mut c = KubeProxyConfiguration {
                mode: mode.into(),
                ..KubeProxyConfiguration::defaulted()
            };
            c.apply_platform_defaults();
            assert_eq!(c.validate(), Ok(()), "{mode}");
        }
    }

    #[test]
    fn masquerade_bit_out_of_range() {
        let mut c = valid();
        c.iptables.masquerade_bit = Some(32);
        let err = c.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "iptables.masqueradeBit: Invalid value: 32: must be within the range [0, 31]"
        );
        c.iptables.masquerade_bit = Some(0);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn nftables_bit_only_checked_in_nftables_mode() {
        let mut c = valid();
        c.nftables.masquerade_bit = Some(-1);
        assert_eq!(c.validate(), Ok(()));
        c.mode = "nftables".into();
        assert_eq!(fields(&c), ["nftables.masqueradeBit"]);
    }

    #[test]
    fn sync_periods_of_the_effective_mode() {
        let mut c = valid();
        c.iptables.sync_period = Duration::ZERO;
        assert_eq!(fields(&c), ["iptables.syncPeriod", "iptables.syncPeriod"]);
        let mut c = valid();
        c.iptables.min_sync_period = Duration::from_mins(1);
        let err = c.validate().unwrap_err().to_string();
        assert!(
            err.contains("must be greater than or equal to iptables.minSyncPeriod"),
            "{err}"
        );
        // ipvs settings are not read in iptables mode, so not checked either.
        let mut c = valid();
        c.ipvs.sync_period = Duration::ZERO;
        c.ipvs.scheduler = "bogus".into();
        assert_eq!(c.validate(), Ok(()));
        c.mode = "ipvs".into();
        assert_eq!(fields(&c), ["ipvs.syncPeriod", "ipvs.scheduler"]);
    }

    #[test]
    fn mode_and_detect_local_mode() {
        let mut c = valid();
        c.mode = "userspace".into();
        c.detect_local_mode = "Magic".into();
        assert_eq!(fields(&c), ["mode", "detectLocalMode"]);
        let mut c = valid();
        c.detect_local_mode = "BridgeInterface".into();
        assert_eq!(fields(&c), ["detectLocal.bridgeInterface"]);
        c.detect_local.bridge_interface = "cbr0".into();
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn cluster_cidrs() {
        let mut c = valid();
        c.cluster_cidr = "10.0.0.0/8,fd00::/64".into();
        assert_eq!(c.validate(), Ok(()));
        c.cluster_cidr = "10.0.0.0/8,10.1.0.0/16".into();
        assert_eq!(fields(&c), ["clusterCIDR"]);
        c.cluster_cidr = "10.0.0.0/8,banana".into();
        assert_eq!(fields(&c), ["clusterCIDR[1]"]);
    }

    #[test]
    fn addresses() {
        let mut c = valid();
        c.bind_address = "nope".into();
        c.healthz_bind_address = "1.2.3.4".into();
        c.metrics_bind_address = "[::1]:0".into();
        assert_eq!(
            fields(&c),
            ["bindAddress", "healthzBindAddress", "metricsBindAddress"]
        );
        let mut c = valid();
        c.healthz_bind_address = "[fd00::1]:10256".into();
        c.metrics_bind_address = String::new();
        assert_eq!(c.validate(), Ok(()));
        c.healthz_bind_address = "host:10256".into();
        assert_eq!(fields(&c), ["healthzBindAddress"]);
    }

    #[test]
    fn node_port_addresses() {
        let mut c = valid();
        c.node_port_addresses = vec!["10.0.0.0/8".into(), "primary".into(), "localhost".into()];
        assert_eq!(c.validate(), Ok(()));
        c.node_port_addresses.push("10.0.0.1".into());
        assert_eq!(fields(&c), ["nodePortAddresses[3]"]);
    }

    #[test]
    fn ranges_and_many_errors_at_once() {
        let mut c = valid();
        c.oom_score_adj = Some(1001);
        c.conntrack.min = Some(-1);
        c.conntrack.udp_timeout = Duration::from_secs(-1);
        c.config_sync_period = Duration::ZERO;
        c.client_connection.burst = -1;
        c.logging.format = "xml".into();
        c.show_hidden_metrics_for_version = "1".into();
        assert_eq!(
            fields(&c),
            [
                "conntrack.min",
                "conntrack.udpTimeout",
                "oomScoreAdj",
                "clientConnection.burst",
                "configSyncPeriod",
                "showHiddenMetricsForVersion",
                "logging.format"
            ]
        );
    }
}
