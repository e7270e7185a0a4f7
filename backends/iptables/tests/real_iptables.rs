//! The backend against the real kernel with both iptables variants, each test in its own
//! private network namespace: every golden input is accepted, a second sync sends nothing,
//! a partial sync touches only the changed service, a flush is repaired through the
//! canary, and cleanup leaves nothing.

mod common;

use common::*;
use kube_proxy_iptables::{cleanup::cleanup_with, IptablesCommand, IptablesExecutor, Variant};
use kube_proxy_model::{Backend, Changes, IpFamily};

/// Every chain and rule of the variant in `family`, as `iptables-save` prints them
/// (counters and comment lines left out).
fn saved(variant: Variant, family: IpFamily) -> String {
    let text = IptablesCommand::new(variant).save(family, None).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn both_variants_accept_every_golden_input() {
    for variant in Variant::ALL {
        let failures = in_netns(move || {
            let mut failures = Vec::new();
            for s in scenarios() {
                let b = backend(s.options, IptablesCommand::new(variant))
                    .with_localhost_node_ports(s.localhost_node_ports);
                for family in IpFamily::ALL {
                    let input = b.render_family(&s.state, family);
                    if let Err(e) = IptablesCommand::new(variant).restore(family, &input) {
                        failures.push(format!("{} {family}: {e}", s.name));
                    }
                }
                // Leave a clean namespace for the next scenario.
                cleanup_with(&mut IptablesCommand::new(variant), &IpFamily::ALL).unwrap();
            }
            failures
        });
        assert!(
            failures.is_empty(),
            "iptables-{} refused:\n{}",
            variant.as_str(),
            failures.join("\n")
        );
    }
}

#[test]
fn syncs_are_incremental_repaired_and_cleaned_up_on_the_kernel() {
    for variant in Variant::ALL {
        in_netns(move || {
            let pristine: Vec<String> = IpFamily::ALL.iter().map(|f| saved(variant, *f)).collect();
            let mut b = backend(default_options(), IptablesCommand::new(variant));
            let other = port(
                "ns2",
                "other",
                "",
                kube_proxy_model::Protocol::Udp,
                "172.30.0.20",
                53,
            );
            let mut st = state(vec![
                (web(), two_endpoints()),
                (other.clone(), vec![ep("10.0.2.9", 53, false)]),
            ]);
            assert!(b.sync(&st, &Changes::full()).unwrap().applied);
            let after_full = saved(variant, IpFamily::V4);
            assert!(after_full.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"), "{after_full}");

            // A second sync without changes sends nothing and changes nothing.
            let report = b.sync(&st, &Changes::default()).unwrap();
            assert!(!report.applied && !report.full, "{report:?}");
            assert_eq!(saved(variant, IpFamily::V4), after_full);

            // A partial sync rewrites only the changed service's chains.
            let other_chain = kube_proxy_iptables::names::ServiceChains::new(&other.name).cluster;
            let other_rules = |text: &str| -> Vec<String> {
                text.lines()
                    .filter(|l| l.contains(&other_chain) || l.contains("10.0.2.9"))
                    .map(String::from)
                    .collect()
            };
            insert(&mut st, web(), vec![ep("10.0.1.5", 8080, true)]);
            let report = b
                .sync(
                    &st,
                    &Changes {
                        services: [web().name].into_iter().collect(),
                        ..Changes::default()
                    },
                )
                .unwrap();
            assert!(report.applied && !report.full);
            let after_partial = saved(variant, IpFamily::V4);
            assert_eq!(other_rules(&after_partial), other_rules(&after_full));
            assert!(!after_partial.contains("10.0.2.5:8080"), "{after_partial}");

            // An external flush of the nat table is seen through the canary and repaired.
            let flush = std::process::Command::new(
                variant.binary(IpFamily::V4, kube_proxy_iptables::exec::Tool::Iptables),
            )
            .args(["-w", "5", "-t", "nat", "-F"])
            .status()
            .unwrap();
            assert!(flush.success());
            let report = b.sync(&st, &Changes::default()).unwrap();
            assert!(report.full && report.applied, "{report:?}");
            assert_eq!(saved(variant, IpFamily::V4), after_partial);

            b.cleanup().unwrap();
            let now: Vec<String> = IpFamily::ALL.iter().map(|f| saved(variant, *f)).collect();
            for (family, text) in IpFamily::ALL.iter().zip(&now) {
                assert!(
                    !text.contains("KUBE-"),
                    "{} {family} after cleanup:\n{text}",
                    variant.as_str()
                );
            }
            // Tables that existed before stay, empty; nothing else is left.
            for (before, after) in pristine.iter().zip(&now) {
                for line in after.lines().filter(|l| l.starts_with('-')) {
                    assert!(before.contains(line), "left behind: {line}");
                }
            }
        });
    }
}

#[test]
fn detection_follows_the_variant_holding_kubelets_chains() {
    for variant in Variant::ALL {
        let detected = in_netns(move || {
            let mut exec = IptablesCommand::new(variant);
            exec.restore(
                IpFamily::V4,
                "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n",
            )
            .unwrap();
            kube_proxy_iptables::detect_variant()
        });
        assert_eq!(detected, variant);
    }
}
