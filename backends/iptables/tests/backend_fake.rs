//! Full and partial syncs against the in-memory fake: what each sync sends, stale chains,
//! recovery after failures and flushes, cleanup.

mod common;

use std::collections::BTreeSet;

use common::*;
use kube_proxy_iptables::{FakeIptables, Table};
use kube_proxy_model::{Backend, Changes, IpFamily, ServicePort};

const V4: IpFamily = IpFamily::V4;

fn changed(names: &[&ServicePort]) -> Changes {
    Changes {
        services: names
            .iter()
            .map(|p| p.name.clone())
            .collect::<BTreeSet<_>>(),
        ..Changes::default()
    }
}

fn nat_chains(fake: &FakeIptables) -> Vec<String> {
    fake.chains(V4, Table::Nat)
}

#[test]
fn partial_sync_writes_only_the_changed_service_and_deletes_its_stale_chains() {
    let fake = FakeIptables::new();
    let mut b = backend(default_options(), fake.clone());
    let other = port(
        "ns2",
        "other",
        "",
        kube_proxy_model::Protocol::Tcp,
        "172.30.0.20",
        80,
    );
    let mut st = state(vec![
        (web(), two_endpoints()),
        (other.clone(), vec![ep("10.0.2.9", 80, false)]),
    ]);
    assert!(b.sync(&st, &Changes::full()).unwrap().full);
    let before = fake.restores().len();

    // Nothing changed: nothing is sent, and no iptables-save is needed.
    let report = b.sync(&st, &Changes::default()).unwrap();
    assert!(!report.full && !report.applied);
    assert_eq!(fake.restores().len(), before);

    // One endpoint of web goes away.
    insert(&mut st, web(), vec![ep("10.0.1.5", 8080, true)]);
    let report = b.sync(&st, &changed(&[&web()])).unwrap();
    assert!(!report.full && report.applied);
    let (_, input) = fake.restores().last().cloned().unwrap();
    let other_chains = kube_proxy_iptables::names::ServiceChains::new(&other.name);
    assert!(
        !input.contains(&format!(":{}", other_chains.cluster)),
        "{input}"
    );
    assert!(
        input.contains(&format!("-j {}", other_chains.cluster)),
        "KUBE-SERVICES still jumps to it"
    );
    let gone =
        kube_proxy_iptables::names::endpoint_chain(&web().name, &ep("10.0.2.5", 8080, false));
    assert!(input.contains(&format!("-X {gone}")), "{input}");
    assert!(!nat_chains(&fake).contains(&gone));
    assert!(nat_chains(&fake).contains(&other_chains.cluster));

    // The service is deleted: all its chains go.
    st.v4.remove(&web().name);
    b.sync(&st, &changed(&[&web()])).unwrap();
    let web_chains = kube_proxy_iptables::names::ServiceChains::new(&web().name);
    assert!(!nat_chains(&fake).contains(&web_chains.cluster));
    assert_eq!(
        nat_chains(&fake)
            .iter()
            .filter(|c| c.starts_with("KUBE-SEP-"))
            .count(),
        1
    );
}

#[test]
fn failure_then_full_sync_and_full_sync_removes_foreign_stale_chains() {
    let fake = FakeIptables::new();
    let mut b = backend(default_options(), fake.clone());
    let st = state(vec![(web(), two_endpoints())]);
    // A previous incarnation left a service chain behind.
    fake.restore_external(V4, "*nat\n:KUBE-SVC-LEFTOVER0000000 - [0:0]\nCOMMIT\n")
        .unwrap();
    fake.fail_next_restore("simulated");
    assert!(b.sync(&st, &Changes::full()).is_err());
    // The caller passes full changes after an error; the backend insists anyway.
    let report = b.sync(&st, &Changes::default()).unwrap();
    assert!(report.full && report.applied);
    assert!(!nat_chains(&fake).contains(&"KUBE-SVC-LEFTOVER0000000".to_string()));
    let prerouting = fake.chain(V4, Table::Nat, "PREROUTING").unwrap();
    assert_eq!(prerouting.len(), 1, "jump inserted once: {prerouting:?}");
    b.sync(&st, &Changes::full()).unwrap();
    assert_eq!(
        fake.chain(V4, Table::Nat, "PREROUTING").unwrap().len(),
        1,
        "-C prevents duplicates"
    );
}

#[test]
fn flushed_nat_table_is_detected_by_the_canary_and_repaired() {
    let fake = FakeIptables::new();
    let mut b = backend(default_options(), fake.clone());
    let st = state(vec![(web(), two_endpoints())]);
    b.sync(&st, &Changes::full()).unwrap();
    let good = fake.chain(V4, Table::Nat, "KUBE-SERVICES").unwrap();
    fake.flush_table(V4, Table::Nat);
    let report = b.sync(&st, &Changes::default()).unwrap();
    assert!(report.full && report.applied);
    assert_eq!(fake.chain(V4, Table::Nat, "KUBE-SERVICES").unwrap(), good);
    assert_eq!(fake.chain(V4, Table::Nat, "PREROUTING").unwrap().len(), 1);
    assert!(!b.sync(&st, &Changes::default()).unwrap().applied);
}

#[test]
fn cleanup_leaves_only_builtin_chains() {
    let fake = FakeIptables::new();
    let mut b = backend(default_options(), fake.clone());
    b.sync(&state(vec![(web(), two_endpoints())]), &Changes::full())
        .unwrap();
    b.cleanup().unwrap();
    for family in IpFamily::ALL {
        for table in [Table::Mangle, Table::Filter, Table::Nat] {
            let chains = fake.chains(family, table);
            let builtin: Vec<String> = table
                .builtin_chains()
                .iter()
                .map(|c| c.to_string())
                .collect();
            let mut sorted = builtin.clone();
            sorted.sort();
            assert_eq!(chains, sorted, "{family} {table}");
            for c in builtin {
                assert_eq!(
                    fake.chain(family, table, &c).unwrap(),
                    Vec::<Vec<String>>::new(),
                    "{family} {table} {c}"
                );
            }
        }
    }
}

#[test]
fn bad_options_fail_without_panicking() {
    let mut options = default_options();
    options.masquerade_bit = 40;
    let mut b = backend(options, FakeIptables::new());
    assert!(b.sync(&state(vec![]), &Changes::full()).is_err());
}
