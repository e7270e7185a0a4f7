//! The ipsets of upstream's IPVS mode, which its iptables rules match on. kube-proxy-rs
//! never creates ipsets; they are removed with the chains that referenced them, so that a
//! node switched from upstream's IPVS mode keeps no stale set (nor the rules matching it).

use crate::exec::{refused, run, ExecError};

/// The `ipset` tool.
const IPSET: &str = "ipset";

/// The sets upstream's IPVS mode creates (pkg/proxy/ipvs/ipset.go), under their IPv4
/// names; the IPv6 ones start with `KUBE-6-` instead of `KUBE-`.
const UPSTREAM_IPVS_SETS: [&str; 17] = [
    "KUBE-LOOP-BACK",
    "KUBE-CLUSTER-IP",
    "KUBE-EXTERNAL-IP",
    "KUBE-EXTERNAL-IP-LOCAL",
    "KUBE-LOAD-BALANCER",
    "KUBE-LOAD-BALANCER-LOCAL",
    "KUBE-LOAD-BALANCER-FW",
    "KUBE-LOAD-BALANCER-SOURCE-IP",
    "KUBE-LOAD-BALANCER-SOURCE-CIDR",
    "KUBE-NODE-PORT-TCP",
    "KUBE-NODE-PORT-LOCAL-TCP",
    "KUBE-NODE-PORT-UDP",
    "KUBE-NODE-PORT-LOCAL-UDP",
    "KUBE-NODE-PORT-SCTP-HASH",
    "KUBE-NODE-PORT-LOCAL-SCTP-HASH",
    "KUBE-HEALTH-CHECK-NODE-PORT",
    "KUBE-IPVS-IPS",
];

/// Whether `name` is one of upstream's IPVS-mode sets, of either family.
pub fn is_upstream_ipvs_set(name: &str) -> bool {
    let ipv4_name = match name.strip_prefix("KUBE-6-") {
        Some(rest) => format!("KUBE-{rest}"),
        None => name.to_owned(),
    };
    UPSTREAM_IPVS_SETS.contains(&ipv4_name.as_str())
}

/// Destroys upstream's IPVS-mode sets in this network namespace. Returns whether there were
/// any. Call it after their chains are gone: the kernel refuses to destroy a set a rule
/// still matches on. Without the `ipset` tool there are none to destroy.
pub fn destroy_upstream_ipvs_sets() -> Result<bool, ExecError> {
    let listed = match run(IPSET, &["list", "-n"], None) {
        Err(e) if e.is_missing_tool() => return Ok(false),
        listed => checked(listed?)?,
    };
    let sets: Vec<&str> = listed.lines().filter(|s| is_upstream_ipvs_set(s)).collect();
    for set in &sets {
        checked(run(IPSET, &["destroy", set], None)?)?;
    }
    Ok(!sets.is_empty())
}

/// The tool's stdout, or its stderr as the error when it failed.
fn checked(output: std::process::Output) -> Result<String, ExecError> {
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(refused(IPSET.into(), &output))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_sets_of_both_families_and_nothing_else() {
        for set in ["KUBE-CLUSTER-IP", "KUBE-6-CLUSTER-IP", "KUBE-6-IPVS-IPS"] {
            assert!(is_upstream_ipvs_set(set), "{set}");
        }
        for set in [
            "KUBE-6-",
            "CNI-CLUSTER-IP",
            "KUBE-CLUSTER-IPS",
            "cali40all-hosts",
        ] {
            assert!(!is_upstream_ipvs_set(set), "{set}");
        }
    }
}
