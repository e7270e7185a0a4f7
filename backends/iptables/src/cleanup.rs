//! Removing everything iptables mode ever created: upstream's `CleanupLeftovers`, extended
//! to every chain and jump of ours (upstream leaves KUBE-MARK-MASQ, KUBE-PROXY-FIREWALL,
//! KUBE-FIREWALL and the canaries behind), and what upstream's IPVS mode adds in iptables:
//! its own chains and ipsets (kube-proxy-rs's IPVS mode programs nftables instead). Also
//! called by nftables and IPVS modes at start.

use kube_proxy_model::{BackendError, IpFamily};

use crate::exec::{ExecError, IptablesCommand, IptablesExecutor, Variant};
use crate::ipset::destroy_upstream_ipvs_sets;
use crate::names::is_leftover;
use crate::restore::{parse_save, target, RestoreInput, Table};

/// The restore input that removes our chains from the tables in `save_output`: rules of
/// other chains that jump to ours are deleted (`-D`), ours are flushed and deleted.
/// Tables iptables mode never uses are left alone.
pub fn cleanup_input(save_output: &str) -> Result<RestoreInput, ExecError> {
    let saved = parse_save(save_output).map_err(|e| ExecError::Refused {
        tool: "iptables-save".into(),
        message: e.to_string(),
    })?;
    let mut input = RestoreInput::default();
    for table in &saved {
        let Some(name) = Table::parse(&table.name) else {
            continue;
        };
        let ours: Vec<String> = table
            .chains
            .iter()
            .filter(|c| is_leftover(c))
            .cloned()
            .collect();
        if ours.is_empty() {
            continue;
        }
        let t = input.table(name);
        for (chain, args) in &table.rules {
            if !is_leftover(chain) && target(args).is_some_and(is_leftover) {
                t.unlinked.push((chain.clone(), args.clone()));
            }
        }
        t.deleted = ours;
    }
    Ok(input)
}

/// Removes our chains and the jumps to them in `families` through `exec`. Returns whether
/// anything was there.
pub fn cleanup_with(
    exec: &mut dyn IptablesExecutor,
    families: &[IpFamily],
) -> Result<bool, ExecError> {
    let mut found = false;
    for &family in families {
        // Saving every table lists only those that exist: asking for one by name would
        // create it in the legacy variant.
        let input = cleanup_input(&exec.save(family, None)?)?;
        if !input.is_empty() {
            found = true;
            exec.restore(family, &input.render())?;
        }
    }
    Ok(found)
}

/// Removes everything upstream's iptables and IPVS modes create in iptables, in both
/// families, with each variant whose tools are installed, then upstream IPVS mode's ipsets.
/// nftables and IPVS modes call this at start.
pub fn cleanup_leftovers() -> Result<(), BackendError> {
    let mut errors = Vec::new();
    for variant in Variant::ALL {
        let mut exec = IptablesCommand::new(variant);
        for family in IpFamily::ALL {
            match cleanup_with(&mut exec, &[family]) {
                Ok(true) => tracing::info!(
                    variant = variant.as_str(),
                    %family,
                    "removed iptables-mode rules"
                ),
                Ok(false) => {}
                // Tools of a variant that is not installed: nothing of it to clean up.
                Err(e) if e.is_missing_tool() => {}
                Err(e) => errors.push(format!("{} {family}: {e}", variant.as_str())),
            }
        }
    }
    // Last: the kernel keeps a set that a rule still matches on.
    match destroy_upstream_ipvs_sets() {
        Ok(true) => tracing::info!("removed upstream IPVS mode's ipsets"),
        Ok(false) => {}
        Err(e) => errors.push(e.to_string()),
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(BackendError::Apply {
            mode: crate::MODE,
            message: format!("cleaning up: {}", errors.join("; ")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_our_chains_and_jumps_only() {
        let save = "# Table `kube-proxy' is incompatible, use 'nft' tool.\n\
            *nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-X - [0:0]\n:CNI-1 - [0:0]\n\
            -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
            -A PREROUTING -j CNI-1\n-A KUBE-SERVICES -j KUBE-SVC-X\nCOMMIT\n\
            *raw\n:KUBE-SVC-Y - [0:0]\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n";
        assert_eq!(
            cleanup_input(save).unwrap().render(),
            "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-X - [0:0]\n\
             -D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
             -X KUBE-SERVICES\n-X KUBE-SVC-X\nCOMMIT\n"
        );
        assert!(cleanup_input("").unwrap().is_empty());
    }

    #[test]
    fn removes_upstream_ipvs_mode_chains_and_keeps_kubelet_s() {
        let save = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-IPVS-FILTER - [0:0]\n\
            :KUBE-KUBELET-CANARY - [0:0]\n\
            -A INPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-FILTER\n\
            -A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN\nCOMMIT\n";
        assert_eq!(
            cleanup_input(save).unwrap().render(),
            "*filter\n:KUBE-IPVS-FILTER - [0:0]\n\
             -D INPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-FILTER\n\
             -X KUBE-IPVS-FILTER\nCOMMIT\n"
        );
    }
}
