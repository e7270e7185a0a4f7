//! Removing everything iptables mode ever created: upstream's `CleanupLeftovers`, extended
//! to every chain and jump of ours (upstream leaves KUBE-MARK-MASQ, KUBE-PROXY-FIREWALL,
//! KUBE-FIREWALL and the canaries behind). Also called by nftables mode at start.

use kube_proxy_model::{BackendError, IpFamily};

use crate::exec::{ExecError, IptablesCommand, IptablesExecutor, Variant};
use crate::names::is_ours;
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
            .filter(|c| is_ours(c))
            .cloned()
            .collect();
        if ours.is_empty() {
            continue;
        }
        let t = input.table(name);
        for (chain, args) in &table.rules {
            if !is_ours(chain) && target(args).is_some_and(is_ours) {
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

/// Removes everything iptables mode created, in both families, with each variant whose
/// tools are installed. nftables mode calls this at start, as upstream does.
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
                Err(ExecError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push(format!("{} {family}: {e}", variant.as_str())),
            }
        }
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
}
