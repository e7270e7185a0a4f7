//! Which iptables variant the node uses, decided as upstream's image does with
//! kubernetes-sigs' `iptables-wrapper`: the variant in which kubelet has made its chains,
//! else the one holding more rules, nft on a tie.

use kube_proxy_model::IpFamily;

use crate::exec::{run, Tool, Variant};
use crate::restore::Table;

/// The chains kubelet (1.17 and later) creates in the mangle table.
const KUBELET_CHAINS: [&str; 2] = [":KUBE-IPTABLES-HINT", ":KUBE-KUBELET-CANARY"];

/// Decides the variant from save output. `save(variant, table)` returns what that
/// variant's `iptables-save` and `ip6tables-save` print (empty when they fail).
///
/// nft is asked about mangle only, which is cheap there; legacy is always saved whole,
/// because `iptables-legacy-save -t mangle` would create the table in the kernel.
pub fn choose_variant(mut save: impl FnMut(Variant, Option<Table>) -> String) -> Variant {
    let has_kubelet_chains = |text: &str| {
        text.lines()
            .any(|l| KUBELET_CHAINS.iter().any(|c| l.starts_with(c)))
    };
    if has_kubelet_chains(&save(Variant::Nft, Some(Table::Mangle))) {
        return Variant::Nft;
    }
    let legacy = save(Variant::Legacy, None);
    if has_kubelet_chains(&legacy) {
        return Variant::Legacy;
    }
    let rules = |text: &str| text.lines().filter(|l| l.starts_with('-')).count();
    if rules(&legacy) > rules(&save(Variant::Nft, None)) {
        Variant::Legacy
    } else {
        Variant::Nft
    }
}

/// The variant this node uses, from the rules in the current network namespace.
pub fn detect_variant() -> Variant {
    let variant = choose_variant(|variant, table| {
        let args: Vec<&str> = table.iter().flat_map(|t| ["-t", t.as_str()]).collect();
        IpFamily::ALL
            .iter()
            .filter_map(|family| run(&variant.binary(*family, Tool::Save), &args, None).ok())
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .collect()
    });
    tracing::info!(
        variant = variant.as_str(),
        "detected the node's iptables variant"
    );
    variant
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saves<'a>(
        nft_mangle: &'a str,
        legacy: &'a str,
        nft: &'a str,
    ) -> impl FnMut(Variant, Option<Table>) -> String + 'a {
        move |variant, table| {
            match (variant, table) {
                (Variant::Nft, Some(_)) => nft_mangle,
                (Variant::Nft, None) => nft,
                (Variant::Legacy, _) => legacy,
            }
            .to_string()
        }
    }

    #[test]
    fn follows_kubelet_then_rule_counts() {
        let kubelet = "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n";
        let canary = "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n";
        let many = "*filter\n-A INPUT -j ACCEPT\n-A OUTPUT -j ACCEPT\n";
        let one = "*filter\n-A INPUT -j ACCEPT\n";
        assert_eq!(choose_variant(saves(kubelet, many, "")), Variant::Nft);
        assert_eq!(choose_variant(saves("", canary, many)), Variant::Legacy);
        assert_eq!(choose_variant(saves("", many, one)), Variant::Legacy);
        assert_eq!(choose_variant(saves("", one, many)), Variant::Nft);
        assert_eq!(choose_variant(saves("", "", "")), Variant::Nft, "default");
        assert_eq!(choose_variant(saves("", one, one)), Variant::Nft, "tie");
    }
}
