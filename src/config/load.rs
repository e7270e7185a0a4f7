//! Reading and writing the configuration file (YAML or JSON), strictly.
//!
//! Decoding rejects unknown and duplicate fields and wrongly typed values, naming the
//! field by its full path (`iptables.masqueradeBitt`): a typo in a config file must stop
//! kube-proxy at start rather than silently run with a default.

use std::path::Path;

use serde::de::DeserializeOwned;

use super::types::{KubeProxyConfiguration, API_VERSION, KIND};
use super::ConfigError;

impl KubeProxyConfiguration {
    /// Decodes a configuration file's contents (YAML, or JSON) without defaulting.
    pub fn decode(text: &str) -> Result<Self, ConfigError> {
        let body = text.trim_start();
        if body.is_empty() || body.lines().all(is_yaml_comment_or_blank) {
            return Err(ConfigError::Decode("the configuration is empty".into()));
        }
        let config: KubeProxyConfiguration = if body.starts_with('{') {
            decode_with(&mut serde_json::Deserializer::from_str(body))?
        } else {
            decode_with(serde_norway::Deserializer::from_str(body))?
        };
        config.check_type_meta()?;
        Ok(config)
    }

    /// Reads and decodes the configuration file at `path` without defaulting.
    pub fn read_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::decode(&text).map_err(|e| e.in_file(path))
    }

    /// The configuration as YAML, with upstream's field names.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("KubeProxyConfiguration always serializes")
    }

    /// Writes the configuration as YAML to `path` (`--write-config-to`).
    pub fn write_file(&self, path: &Path) -> Result<(), ConfigError> {
        std::fs::write(path, self.to_yaml()).map_err(|source| ConfigError::Write {
            path: path.to_path_buf(),
            source,
        })
    }

    fn check_type_meta(&self) -> Result<(), ConfigError> {
        if self.api_version != API_VERSION {
            return Err(ConfigError::Decode(format!(
                "apiVersion: unsupported value {:?}: expected {API_VERSION:?}",
                self.api_version
            )));
        }
        if self.kind != KIND {
            return Err(ConfigError::Decode(format!(
                "kind: unsupported value {:?}: expected {KIND:?}",
                self.kind
            )));
        }
        Ok(())
    }
}

fn is_yaml_comment_or_blank(line: &str) -> bool {
    let line = line.trim();
    line.is_empty() || line.starts_with('#') || line == "---"
}

/// Runs `deserializer`, turning serde's message and path into one that names the field.
fn decode_with<'de, D, T>(deserializer: D) -> Result<T, ConfigError>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
    T: DeserializeOwned,
{
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        ConfigError::Decode(describe(&path, &err.inner().to_string()))
    })
}

/// Rewrites serde's messages into upstream's shape: `unknown field "a.b"`, or
/// `a.b: <what is wrong>`.
fn describe(path: &str, message: &str) -> String {
    let message = strip_location_prefix(path, message);
    let join = |name: &str| {
        if path == "." || path.is_empty() {
            name.to_string()
        } else if path.ends_with(&format!(".{name}")) || path == name {
            path.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    for (prefix, what) in [
        ("unknown field `", "unknown field"),
        ("duplicate field `", "duplicate field"),
        ("missing field `", "missing field"),
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some((name, tail)) = rest.split_once('`') {
                let (hint, location) = match tail.find(" at line ") {
                    Some(at) => tail.split_at(at),
                    None => (tail, ""),
                };
                let hint = hint.trim_start_matches(',').trim();
                let full = join(name);
                return if hint.is_empty() {
                    format!("{what} {full:?}{location}")
                } else {
                    format!("{what} {full:?}{location} ({hint})")
                };
            }
        }
    }
    // serde_norway adds " at line L column C"; keep it, it helps find the spot.
    if path == "." || path.is_empty() {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}

/// serde_norway starts its messages with the (partial) path; we add the full one.
fn strip_location_prefix<'m>(path: &str, message: &'m str) -> &'m str {
    let is_path_prefix = |prefix: &str| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    };
    match message.split_once(": ") {
        Some((prefix, rest)) if !prefix.is_empty() && is_path_prefix(prefix) => rest,
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_err(text: &str) -> String {
        KubeProxyConfiguration::decode(text)
            .unwrap_err()
            .to_string()
    }

    const HEADER: &str =
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n";

    #[test]
    fn decodes_yaml_with_upstream_names() {
        let text = format!(
            "{HEADER}mode: nftables\nclusterCIDR: 10.244.0.0/16\niptables:\n  masqueradeBit: 0\n  syncPeriod: 1m\nipvs:\n  excludeCIDRs: null\n  strictARP: true\nconntrack:\n  maxPerCore: 0\n  tcpCloseWaitTimeout: 1h0m0s\nnodePortAddresses: [\"primary\"]\nlogging:\n  flushFrequency: 5000000000\n  options:\n    json:\n      infoBufferSize: 0\n"
        );
        let c = KubeProxyConfiguration::decode(&text).unwrap();
        assert_eq!(c.mode, "nftables");
        assert_eq!(c.cluster_cidr, "10.244.0.0/16");
        assert_eq!(c.iptables.masquerade_bit, Some(0));
        assert_eq!(c.iptables.sync_period.to_string(), "1m0s");
        assert!(c.ipvs.strict_arp && c.ipvs.exclude_cidrs.is_empty());
        assert_eq!(c.conntrack.max_per_core, Some(0));
        assert_eq!(c.conntrack.min, None);
        assert_eq!(c.node_port_addresses, ["primary"]);
        assert_eq!(c.logging.flush_frequency.to_string(), "5s");
        assert_eq!(c.logging.options.json.info_buffer_size, "0");
    }

    #[test]
    fn decodes_json() {
        let c = KubeProxyConfiguration::decode(
            r#"{"apiVersion":"kubeproxy.config.k8s.io/v1alpha1","kind":"KubeProxyConfiguration","mode":"ipvs","ipvs":{"scheduler":"lc"}}"#,
        )
        .unwrap();
        assert_eq!(c.ipvs.scheduler, "lc");
    }

    #[test]
    fn unknown_field_is_named_with_its_path() {
        let err = decode_err(&format!("{HEADER}iptables:\n  masqueradeBitt: 3\n"));
        assert!(
            err.starts_with("unknown field \"iptables.masqueradeBitt\""),
            "{err}"
        );
        let err = decode_err(&format!("{HEADER}modee: ipvs\n"));
        assert!(err.starts_with("unknown field \"modee\""), "{err}");
        let err = decode_err(
            r#"{"apiVersion":"kubeproxy.config.k8s.io/v1alpha1","kind":"KubeProxyConfiguration","conntrack":{"mim":1}}"#,
        );
        assert!(err.starts_with("unknown field \"conntrack.mim\""), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = decode_err(&format!("{HEADER}iptables:\n  syncPeriod: 30\n"));
        assert!(err.starts_with("iptables.syncPeriod: "), "{err}");
        let err = decode_err(&format!("{HEADER}conntrack:\n  min: lots\n"));
        assert!(err.starts_with("conntrack.min: "), "{err}");
        let err = decode_err(&format!("{HEADER}ipvs:\n  syncPeriod: 10\n"));
        assert!(err.contains("missing unit"), "{err}");
    }

    #[test]
    fn duplicate_fields_are_rejected() {
        let err = decode_err(&format!("{HEADER}mode: ipvs\nmode: iptables\n"));
        assert!(err.contains("mode"), "{err}");
    }

    #[test]
    fn type_meta_is_checked() {
        let err = decode_err("kind: KubeProxyConfiguration\nmode: ipvs\n");
        assert!(err.contains("apiVersion"), "{err}");
        let err = decode_err(
            "apiVersion: kubeproxy.config.k8s.io/v1beta9\nkind: KubeProxyConfiguration\n",
        );
        assert!(err.starts_with("apiVersion: unsupported value"), "{err}");
        let err = decode_err(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
        );
        assert!(err.starts_with("kind: unsupported value"), "{err}");
        assert_eq!(decode_err("# nothing\n"), "the configuration is empty");
    }

    #[test]
    fn yaml_round_trips_after_defaults() {
        let mut c = KubeProxyConfiguration::defaulted();
        c.apply_platform_defaults();
        c.feature_gates.insert("Foo".into(), true);
        c.node_port_addresses = vec!["10.0.0.0/8".into()];
        let yaml = c.to_yaml();
        assert!(yaml.contains("configSyncPeriod: 15m0s"), "{yaml}");
        assert!(yaml.contains("masqueradeBit: 14"), "{yaml}");
        assert_eq!(KubeProxyConfiguration::decode(&yaml).unwrap(), c);
    }
}
