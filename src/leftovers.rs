//! Removing what other proxy modes left in the kernel, as upstream's `platformCleanup`.
//!
//! Every mode starts by removing the state of the modes it replaces, because their rules
//! would keep sending Service traffic to stale endpoints: nftables mode removes iptables
//! and IPVS mode's, the iptables-based modes remove nftables mode's. A failure there is
//! logged and the proxy starts anyway (a missing `iptables`, say, means there is nothing
//! of iptables mode to remove). `--cleanup` removes every mode's state and fails if any
//! part failed.

use std::path::Path;

use anyhow::{bail, Result};
use kube_proxy_ipvs::{DummyLink, DummyLinkClient, Ipvs, IpvsClient, KUBE_IPVS0};
use kube_proxy_model::{Backend, ProxyOptions};
use kube_proxy_nftables::{NftCommand, NftablesBackend};

use crate::config::ProxyMode;

/// The kernel state of one proxy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leftovers {
    /// iptables mode's `KUBE-*` chains and the jumps to them, in both families and both
    /// iptables variants.
    Iptables,
    /// IPVS mode's virtual services and its `kube-ipvs0` dummy link.
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
            ProxyMode::IpTables | ProxyMode::Ipvs => &[Leftovers::Nftables],
        }
    }

    fn remove(self) -> Result<()> {
        match self {
            Leftovers::Iptables => kube_proxy_iptables::cleanup_leftovers()?,
            Leftovers::Ipvs => {
                let mut ipvs = loaded_ipvs()?;
                let ipvs = ipvs.as_mut().map(|i| i as &mut dyn IpvsClient);
                remove_ipvs(ipvs, &mut DummyLink::new(KUBE_IPVS0)?)?;
            }
            Leftovers::Nftables => {
                NftablesBackend::with_executor(ProxyOptions::default(), NftCommand::new())
                    .cleanup()?;
            }
        }
        Ok(())
    }
}

/// The kernel's IPVS when the `ip_vs` module is loaded. Without it there is no IPVS state
/// to remove, and opening the client would load it (upstream loads it with `modprobe` to
/// find out).
fn loaded_ipvs() -> Result<Option<Ipvs>> {
    let loaded = Path::new("/sys/module/ip_vs").exists();
    Ok(loaded.then(Ipvs::new).transpose()?)
}

/// Removes IPVS mode's state as upstream does: every virtual service, whoever made it
/// (when there is an `ipvs`), and the dummy link.
fn remove_ipvs(ipvs: Option<&mut dyn IpvsClient>, link: &mut dyn DummyLinkClient) -> Result<()> {
    if let Some(ipvs) = ipvs {
        ipvs.flush()?;
    }
    if link.delete()? {
        tracing::info!(link = KUBE_IPVS0, "deleted IPVS mode's dummy link");
    }
    Ok(())
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
    use kube_proxy_ipvs::{FakeDummyLink, FakeIpvs, Scheduler, VirtualServer};
    use kube_proxy_model::Protocol;

    #[test]
    fn each_mode_removes_the_others() {
        use Leftovers::*;
        assert_eq!(
            Leftovers::replaced_by(ProxyMode::NfTables),
            [Iptables, Ipvs]
        );
        assert_eq!(Leftovers::replaced_by(ProxyMode::IpTables), [Nftables]);
        assert_eq!(Leftovers::replaced_by(ProxyMode::Ipvs), [Nftables]);
    }

    #[test]
    fn ipvs_state_is_flushed_and_the_link_deleted() {
        let (mut ipvs, mut link) = (FakeIpvs::new(), FakeDummyLink::new());
        link.ensure().unwrap();
        link.add_address("10.96.0.10".parse().unwrap()).unwrap();
        let ip = "10.96.0.10".parse().unwrap();
        let service = VirtualServer::new(ip, 80, Protocol::Tcp, Scheduler::default());
        ipvs.add_service(&service).unwrap();

        remove_ipvs(Some(&mut ipvs), &mut link).unwrap();
        assert!(ipvs.services().unwrap().is_empty());
        assert!(!link.exists());
        // Nothing left: a second run is a no-op, not an error.
        remove_ipvs(None, &mut link).unwrap();
    }
}
