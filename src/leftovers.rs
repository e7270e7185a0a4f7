//! Removing what other proxy modes left in the kernel, as upstream's `platformCleanup`.
//!
//! Every mode starts by removing the state of the modes it replaces, because their rules
//! would keep sending Service traffic to stale endpoints: nftables mode removes iptables
//! and IPVS mode's, iptables mode removes nftables mode's, as upstream. IPVS mode, which
//! upstream builds on iptables, programs nftables here: it removes nftables mode's table
//! and every iptables chain and ipset of upstream's iptables and IPVS modes (left active,
//! iptables mode's DNAT rules would take Service traffic before IPVS sees it). A failure
//! there is logged and the proxy starts anyway (a missing `iptables`, say, means there is
//! nothing of iptables mode to remove). `--cleanup` removes every mode's state and fails
//! if any part failed.

use anyhow::{bail, Result};
use kube_proxy_model::{Backend, ProxyOptions};
use kube_proxy_nftables::{NftCommand, NftablesBackend};

use crate::config::ProxyMode;

/// The kernel state of one proxy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leftovers {
    /// The `KUBE-*` chains of upstream's iptables and IPVS modes and the jumps to them, in
    /// both families and both iptables variants, and upstream IPVS mode's ipsets.
    Iptables,
    /// IPVS mode's virtual services, its `kube-ipvs0` dummy link and its nft tables.
    Ipvs,
    /// nftables mode's `ip` and `ip6 kube-proxy` tables.
    Nftables,
}

impl Leftovers {
    const ALL: [Leftovers; 3] = [Leftovers::Iptables, Leftovers::Ipvs, Leftovers::Nftables];

    /// What `mode` removes at start: the state of the modes it never uses itself.
    fn replaced_by(mode: ProxyMode) -> &'static [Leftovers] {
        match mode {
            ProxyMode::NfTables => &[Leftovers::Iptables, Leftovers::Ipvs],
            ProxyMode::IpTables => &[Leftovers::Nftables],
            ProxyMode::Ipvs => &[Leftovers::Nftables, Leftovers::Iptables],
        }
    }

    fn remove(self) -> Result<()> {
        match self {
            Leftovers::Iptables => kube_proxy_iptables::cleanup_leftovers()?,
            // Every virtual server, as upstream's IPVS clean-up flushes them all.
            Leftovers::Ipvs => kube_proxy_ipvs::cleanup_leftovers(&[])?,
            Leftovers::Nftables => {
                NftablesBackend::with_executor(ProxyOptions::default(), NftCommand::new())
                    .cleanup()?;
            }
        }
        Ok(())
    }
}

/// At the start of `mode`: removes the state of the modes it replaces, logging failures.
pub fn remove_replaced(mode: ProxyMode) {
    for leftovers in Leftovers::replaced_by(mode) {
        if let Err(e) = leftovers.remove() {
            tracing::warn!(
                error = format!("{e:#}"),
                "removing {leftovers:?} mode's leftovers failed; starting anyway"
            );
        }
    }
}

/// `--cleanup`: removes every mode's state, each attempted even when another fails.
pub fn remove_all() -> Result<()> {
    let mut failed = false;
    for leftovers in Leftovers::ALL {
        if let Err(e) = leftovers.remove() {
            tracing::error!(
                error = format!("{e:#}"),
                "removing {leftovers:?} mode's rules failed"
            );
            failed = true;
        }
    }
    if failed {
        // Upstream's words.
        bail!("encountered an error while tearing down rules");
    }
    tracing::info!("removed the rules of every proxy mode");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_removes_the_others() {
        use Leftovers::*;
        assert_eq!(
            Leftovers::replaced_by(ProxyMode::NfTables),
            [Iptables, Ipvs]
        );
        assert_eq!(Leftovers::replaced_by(ProxyMode::IpTables), [Nftables]);
        assert_eq!(
            Leftovers::replaced_by(ProxyMode::Ipvs),
            [Nftables, Iptables]
        );
    }
}
