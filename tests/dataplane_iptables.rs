//! Real packets through the iptables mode: every scenario of `tests/dataplane/` on a node
//! whose kubelet uses `iptables-legacy` and on one whose kubelet uses `iptables-nft`
//! (kube-proxy detects which from kubelet's `KUBE-IPTABLES-HINT` chain; every apply is
//! checked to have landed in that variant), plus what only iptables mode has.

#[macro_use]
mod dataplane;
mod support;

/// A node whose kubelet uses `iptables-legacy`.
mod legacy {
    all_scenarios!(crate::dataplane::Mode::Iptables(
        crate::dataplane::Variant::Legacy
    ));
}

/// A node whose kubelet uses `iptables-nft`.
mod nft {
    all_scenarios!(crate::dataplane::Mode::Iptables(
        crate::dataplane::Variant::Nft
    ));
}

/// Scenarios of iptables mode alone, with both variants.
mod iptables_only {
    use crate::dataplane::iptables;
    use crate::dataplane::Variant::{Legacy, Nft};

    #[test]
    fn localhost_node_ports_legacy() {
        iptables::localhost_node_ports(Legacy)
    }

    #[test]
    fn localhost_node_ports_nft() {
        iptables::localhost_node_ports(Nft)
    }

    #[test]
    fn external_nat_flush_is_repaired_by_the_next_sync_legacy() {
        iptables::external_nat_flush_is_repaired_by_the_next_sync(Legacy)
    }

    #[test]
    fn external_nat_flush_is_repaired_by_the_next_sync_nft() {
        iptables::external_nat_flush_is_repaired_by_the_next_sync(Nft)
    }

    #[test]
    fn daemon_repairs_an_external_nat_flush_within_one_sync_period_legacy() {
        iptables::daemon_repairs_an_external_nat_flush_within_one_sync_period(Legacy)
    }

    #[test]
    fn daemon_repairs_an_external_nat_flush_within_one_sync_period_nft() {
        iptables::daemon_repairs_an_external_nat_flush_within_one_sync_period(Nft)
    }
}
