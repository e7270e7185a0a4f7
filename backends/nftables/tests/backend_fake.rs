//! The backend against the in-memory kernel: full, partial and no-op syncs, stale chains,
//! errors, restarts, and partial syncs always ending where a full rebuild would.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use kube_proxy_model::{Backend, Changes, Protocol, ProxyState, ServicePortName};
use kube_proxy_nftables::ir::{BaseChain, Chain, ChainType, Element, Hook, Object};
use kube_proxy_nftables::{
    FakeNft, Family, NftExecutor, NftablesBackend, StaticAddresses, Transaction,
};
use proptest::prelude::*;

fn backend(fake: &FakeNft) -> NftablesBackend {
    NftablesBackend::with_executor(default_options(), fake.clone())
        .with_address_source(addresses())
        .with_stale_chain_grace(Duration::ZERO)
}

fn changed(names: &[&ServicePortName]) -> Changes {
    Changes {
        services: names.iter().map(|n| (*n).clone()).collect(),
        ..Changes::default()
    }
}

/// What a fresh full sync of `state` leaves in an empty kernel.
fn fresh_tables(state: &ProxyState) -> Vec<Option<kube_proxy_nftables::TableState>> {
    let fake = FakeNft::new();
    backend(&fake).sync(state, &Changes::full()).unwrap();
    Family::ALL.iter().map(|f| fake.table(*f)).collect()
}

fn tables(fake: &FakeNft) -> Vec<Option<kube_proxy_nftables::TableState>> {
    Family::ALL.iter().map(|f| fake.table(*f)).collect()
}

fn two_services() -> ProxyState {
    state(
        node(),
        vec![
            (
                port("ns1", "a", "p", Protocol::Tcp, "172.30.0.1", 80),
                vec![ep("10.0.1.1", 80, true)],
            ),
            (
                port("ns1", "b", "p", Protocol::Tcp, "172.30.0.2", 80),
                vec![ep("10.0.2.1", 80, false)],
            ),
        ],
    )
}

#[test]
fn full_sync_builds_both_tables() {
    let fake = FakeNft::new();
    let report = backend(&fake)
        .sync(&two_services(), &Changes::full())
        .unwrap();
    assert!(report.full && report.applied);
    assert_eq!(fake.apply_count(), 1, "one atomic transaction");
    let v4 = fake.table(Family::Ip).unwrap();
    let dispatch = &v4.sets["service-ips"].elements;
    assert_eq!(dispatch.len(), 2);
    let target = dispatch["172.30.0.1 . tcp . 80"].value.as_deref().unwrap();
    let chain = target.strip_prefix("goto ").unwrap();
    assert!(
        chain.starts_with("service-") && chain.ends_with("-ns1/a/tcp/p"),
        "{chain}"
    );
    let rules = &v4.chains[chain].rules;
    assert_eq!(
        rules.last().unwrap(),
        &format!("numgen inc mod 1 vmap @{chain}"),
        "the chain picks its endpoint from the map named after it"
    );
    let picks = &v4.sets[chain].elements;
    assert_eq!(picks.len(), 1, "{picks:?}");
    assert!(
        picks["0"]
            .value
            .as_deref()
            .unwrap()
            .starts_with("goto endpoint-"),
        "{picks:?}"
    );
    assert_eq!(v4.chains["nat-output"].rules, vec!["jump services"]);
    let v6 = fake.table(Family::Ip6).unwrap();
    assert!(v6.sets["service-ips"].elements.is_empty());
    assert_eq!(
        v6.chains["services"].rules[0],
        "ip6 daddr . meta l4proto . th dport vmap @service-ips"
    );
}

#[test]
fn no_op_syncs_send_nothing() {
    let fake = FakeNft::new();
    let mut b = backend(&fake);
    let st = two_services();
    b.sync(&st, &Changes::full()).unwrap();
    let report = b.sync(&st, &Changes::default()).unwrap();
    assert!(!report.applied && !report.full);
    // A full resync reads the tables back and finds nothing to do.
    let report = b.sync(&st, &Changes::full()).unwrap();
    assert!(report.full && !report.applied);
    // A change reported for a service that is in fact unchanged sends nothing either.
    let a = name("ns1", "a", "p", Protocol::Tcp);
    assert!(!b.sync(&st, &changed(&[&a])).unwrap().applied);
    assert_eq!(fake.apply_count(), 1);
}

/// Interface addresses change without any API event: every sync, even one with no service
/// change, brings `nodeport-ips` up to date, and only it.
#[test]
fn every_sync_follows_the_node_port_addresses() {
    let options = kube_proxy_model::ProxyOptions {
        node_port_addresses: vec![
            kube_proxy_model::NodePortAddress::Cidr(net("10.0.0.0/8")),
            kube_proxy_model::NodePortAddress::Cidr(net("fd00::/8")),
        ],
        ..default_options()
    };
    let moved = StaticAddresses(vec![ip("127.0.0.1"), ip("10.0.9.9"), ip("fd00:192::2")]);
    let with = |fake: &FakeNft, addresses: StaticAddresses| {
        NftablesBackend::with_executor(options.clone(), fake.clone()).with_address_source(addresses)
    };
    let st = two_services();
    let fake = FakeNft::new();
    let mut b = with(&fake, addresses());
    b.sync(&st, &Changes::full()).unwrap();
    let reads = fake.read_count();

    let mut b = b.with_address_source(moved.clone());
    let report = b.sync(&st, &Changes::default()).unwrap();
    assert!(report.applied && !report.full);
    assert_eq!(fake.read_count(), reads, "a partial sync trusts its model");
    assert_eq!(
        fake.applied().last().unwrap().render(),
        "delete element ip kube-proxy nodeport-ips { 10.0.1.1 }\n\
         add element ip kube-proxy nodeport-ips { 10.0.9.9 }\n"
    );
    let fresh = FakeNft::new();
    with(&fresh, moved).sync(&st, &Changes::full()).unwrap();
    assert_eq!(tables(&fake), tables(&fresh));

    assert!(!b.sync(&st, &Changes::default()).unwrap().applied);
    assert_eq!(fake.apply_count(), 2);
}

/// NodePorts matched on every local address that now need `nodeport-ips` (or the other
/// way round) change rules of the skeleton: a partial sync does a full one instead.
#[test]
fn a_change_of_node_port_form_makes_the_sync_full() {
    let options = kube_proxy_model::ProxyOptions {
        node_port_addresses: vec![kube_proxy_model::NodePortAddress::Primary],
        ..default_options()
    };
    let with = |fake: &FakeNft| {
        NftablesBackend::with_executor(options.clone(), fake.clone())
            .with_address_source(addresses())
    };
    let mut st = two_services();
    st.node.ips = vec![ip("192.168.0.2"), ip("::1")];
    let fake = FakeNft::new();
    let mut b = with(&fake);
    b.sync(&st, &Changes::full()).unwrap();
    st.node.ips = node().ips;
    let report = b.sync(&st, &Changes::default()).unwrap();
    assert!(report.applied && report.full);
    let fresh = FakeNft::new();
    with(&fresh).sync(&st, &Changes::full()).unwrap();
    assert_eq!(tables(&fake), tables(&fresh));
}

#[test]
fn partial_sync_touches_only_the_changed_service() {
    let fake = FakeNft::new();
    let mut b = backend(&fake);
    let mut st = two_services();
    b.sync(&st, &Changes::full()).unwrap();
    let reads = fake.read_count();
    let svc_b = port("ns1", "b", "p", Protocol::Tcp, "172.30.0.2", 80);
    insert(
        &mut st,
        svc_b.clone(),
        vec![ep("10.0.2.1", 80, false), ep("10.0.2.2", 80, false)],
    );
    let report = b.sync(&st, &changed(&[&svc_b.name])).unwrap();
    assert!(report.applied && !report.full);
    assert_eq!(fake.read_count(), reads, "a partial sync trusts its model");
    let script = fake.applied().last().unwrap().render();
    assert!(!script.contains("ns1/a/"), "service a untouched:\n{script}");
    assert!(
        !script.contains("add table") && !script.contains("nat-output"),
        "{script}"
    );
    assert!(script.contains("numgen inc mod 2"), "{script}");
    assert_eq!(tables(&fake), fresh_tables(&st));
}

#[test]
fn removed_chains_are_flushed_then_deleted_by_a_later_sync() {
    let fake = FakeNft::new();
    let mut b = NftablesBackend::with_executor(default_options(), fake.clone())
        .with_address_source(addresses())
        .with_stale_chain_grace(Duration::from_secs(3600));
    let mut st = two_services();
    b.sync(&st, &Changes::full()).unwrap();
    let a = name("ns1", "a", "p", Protocol::Tcp);
    st.v4.remove(&a);
    b.sync(&st, &changed(&[&a])).unwrap();
    let v4 = fake.table(Family::Ip).unwrap();
    let leftovers: Vec<_> = v4
        .chains
        .iter()
        .filter(|(n, _)| n.contains("ns1/a/"))
        .collect();
    assert_eq!(
        leftovers.len(),
        2,
        "service and endpoint chain kept: {leftovers:?}"
    );
    assert!(
        leftovers.iter().all(|(_, c)| c.rules.is_empty()),
        "but flushed"
    );
    // Not yet due: a no-op sync sends nothing.
    assert!(!b.sync(&st, &Changes::default()).unwrap().applied);

    let mut b = b.with_stale_chain_grace(Duration::ZERO);
    let report = b.sync(&st, &Changes::default()).unwrap();
    assert!(report.applied && !report.full);
    assert!(!fake
        .table(Family::Ip)
        .unwrap()
        .chains
        .keys()
        .any(|n| n.contains("ns1/a/")));
    assert_eq!(tables(&fake), fresh_tables(&st));
}

#[test]
fn a_failed_sync_leaves_the_kernel_alone_and_the_next_is_full() {
    let fake = FakeNft::new();
    let mut b = backend(&fake);
    let mut st = two_services();
    b.sync(&st, &Changes::full()).unwrap();
    let before = tables(&fake);
    let svc = port("ns1", "c", "p", Protocol::Udp, "172.30.0.3", 53);
    insert(&mut st, svc.clone(), vec![ep("10.0.3.1", 53, false)]);
    fake.fail_next_apply("Error: Could not process rule: No buffer space available");
    let err = b.sync(&st, &changed(&[&svc.name])).unwrap_err();
    assert!(err.to_string().contains("No buffer space"), "{err}");
    assert_eq!(tables(&fake), before);
    // The caller retries with whatever it has; the backend makes it a full sync.
    let report = b.sync(&st, &Changes::default()).unwrap();
    assert!(report.full && report.applied);
    assert_eq!(tables(&fake), fresh_tables(&st));
}

#[test]
fn a_restarted_backend_reconciles_instead_of_rebuilding() {
    let fake = FakeNft::new();
    let mut st = two_services();
    backend(&fake).sync(&st, &Changes::full()).unwrap();
    // A new process with the same model sends nothing at all.
    let report = backend(&fake).sync(&st, &Changes::full()).unwrap();
    assert!(report.full && !report.applied);
    assert_eq!(fake.apply_count(), 1);
    // A new process with one service changed sends only that difference.
    let svc_b = port("ns1", "b", "p", Protocol::Tcp, "172.30.0.2", 80);
    insert(&mut st, svc_b, vec![ep("10.0.2.9", 80, false)]);
    let mut restarted = backend(&fake);
    restarted.sync(&st, &Changes::full()).unwrap();
    let script = fake.applied().last().unwrap().render();
    assert!(
        !script.contains("ns1/a/") && !script.contains("flush chain ip kube-proxy services"),
        "{script}"
    );
    assert!(script.contains("10.0.2.9"), "{script}");
    // The old endpoint chain is flushed now and deleted by the next sync.
    assert!(restarted.sync(&st, &Changes::default()).unwrap().applied);
    assert_eq!(tables(&fake), fresh_tables(&st));
}

#[test]
fn a_full_sync_repairs_exactly_what_was_tampered_with() {
    let fake = FakeNft::new();
    let mut b = backend(&fake);
    let st = two_services();
    b.sync(&st, &Changes::full()).unwrap();
    let mut tamper = Transaction::new();
    tamper.flush(Family::Ip, Object::Chain(Chain::named("services")));
    let key = ["172.30.0.1", "tcp", "80"].map(String::from).to_vec();
    let elem = Element {
        container: "service-ips".into(),
        key,
        value: None,
        comment: None,
    };
    tamper.delete(Family::Ip, Object::Element(elem));
    fake.apply_external(&tamper).unwrap();

    assert!(b.sync(&st, &Changes::full()).unwrap().applied);
    let script = fake.applied().last().unwrap().render();
    let lines: Vec<&str> = script.lines().collect();
    assert_eq!(lines.len(), 4, "{script}");
    assert_eq!(lines[0], "flush chain ip kube-proxy services");
    assert!(lines[3].starts_with(
        "add element ip kube-proxy service-ips { 172.30.0.1 . tcp . 80 : goto service-"
    ));
    assert_eq!(tables(&fake), fresh_tables(&st));
}

#[test]
fn an_incompatible_table_is_rebuilt_in_one_transaction() {
    let fake = FakeNft::new();
    let mut old = Transaction::new();
    old.add(Family::Ip, Object::Table { comment: None });
    let base = BaseChain {
        chain_type: ChainType::Nat,
        hook: Hook::Output,
        priority: 0,
    };
    old.add(
        Family::Ip,
        Object::Chain(Chain {
            name: "nat-output".into(),
            base: Some(base),
            comment: None,
        }),
    );
    old.add(Family::Ip, Object::Chain(Chain::named("left-over")));
    fake.apply_external(&old).unwrap();

    let st = two_services();
    let report = backend(&fake).sync(&st, &Changes::full()).unwrap();
    assert!(report.full && report.applied);
    assert_eq!(fake.apply_count(), 1);
    let script = fake.applied()[0].render();
    assert!(
        script.starts_with(
            "add table ip kube-proxy\ndelete table ip kube-proxy\nadd table ip kube-proxy {"
        ),
        "{script}"
    );
    assert_eq!(tables(&fake), fresh_tables(&st));
}

#[test]
fn ports_sharing_a_cluster_ip_keep_it_until_the_last_goes() {
    let fake = FakeNft::new();
    let mut b = backend(&fake);
    let (dns, dns_tcp) = (dns(), dns_tcp());
    let mut st = state(
        node(),
        vec![
            (dns.clone(), vec![ep("10.0.1.9", 53, true)]),
            (dns_tcp.clone(), vec![ep("10.0.1.9", 53, true)]),
        ],
    );
    b.sync(&st, &Changes::full()).unwrap();
    st.v4.remove(&dns_tcp.name);
    b.sync(&st, &changed(&[&dns_tcp.name])).unwrap();
    let v4 = fake.table(Family::Ip).unwrap();
    assert!(v4.sets["cluster-ips"].elements.contains_key("172.30.0.53"));
    st.v4.remove(&dns.name);
    b.sync(&st, &changed(&[&dns.name])).unwrap();
    assert!(fake.table(Family::Ip).unwrap().sets["cluster-ips"]
        .elements
        .is_empty());
}

#[test]
fn every_scenario_renders_what_a_full_sync_applies() {
    for s in scenarios() {
        let fake = FakeNft::new();
        let mut b = NftablesBackend::with_executor(s.options.clone(), fake.clone())
            .with_address_source(addresses());
        b.sync(&s.state, &Changes::full()).unwrap();
        assert_eq!(
            fake.applied()[0].render(),
            b.render(&s.state).unwrap(),
            "{}",
            s.name
        );
    }
}

#[test]
fn cleanup_removes_both_tables_and_only_them() {
    let fake = FakeNft::new();
    let mut b = backend(&fake);
    b.sync(&two_services(), &Changes::full()).unwrap();
    b.cleanup().unwrap();
    assert_eq!(tables(&fake), vec![None, None]);
    // Cleaning up twice is fine too.
    b.cleanup().unwrap();
    let mut probe = fake.clone();
    assert!(probe.read_table(Family::Ip).unwrap().is_none());
}

/// A kernel whose existing tables nft prints in a syntax the parser does not know.
struct Unreadable(FakeNft);

impl NftExecutor for Unreadable {
    fn apply(&mut self, tx: &Transaction) -> Result<(), kube_proxy_nftables::ExecError> {
        self.0.apply(tx)
    }

    fn read_table(
        &mut self,
        family: Family,
    ) -> Result<Option<kube_proxy_nftables::TableState>, kube_proxy_nftables::ExecError> {
        match self.0.table(family) {
            None => Ok(None),
            Some(_) => Err(kube_proxy_nftables::parse::ParseError {
                line: 3,
                message: "unknown table content".into(),
            }
            .into()),
        }
    }
}

#[test]
fn an_unreadable_table_is_rebuilt_instead_of_failing_every_sync() {
    let fake = FakeNft::new();
    let st = two_services();
    backend(&fake).sync(&st, &Changes::full()).unwrap();
    let mut b = NftablesBackend::with_executor(default_options(), Unreadable(fake.clone()))
        .with_address_source(addresses());
    let report = b.sync(&st, &Changes::full()).unwrap();
    assert!(report.full && report.applied);
    let script = fake.applied().last().unwrap().render();
    assert!(
        script.starts_with(
            "add table ip kube-proxy\ndelete table ip kube-proxy\nadd table ip kube-proxy {"
        ),
        "{script}"
    );
    assert_eq!(tables(&fake), fresh_tables(&st));
    // Partial syncs afterwards work from the model.
    let mut st = st;
    let svc = port("ns1", "c", "p", Protocol::Tcp, "172.30.0.3", 80);
    insert(&mut st, svc.clone(), vec![ep("10.0.3.1", 80, false)]);
    assert!(!b.sync(&st, &changed(&[&svc.name])).unwrap().full);
    assert_eq!(tables(&fake), fresh_tables(&st));
}

#[test]
fn invalid_options_are_an_error_not_a_panic() {
    let fake = FakeNft::new();
    let options = kube_proxy_model::ProxyOptions {
        masquerade_bit: 40,
        ..default_options()
    };
    let mut b = NftablesBackend::with_executor(options, fake.clone());
    let err = b.sync(&two_services(), &Changes::full()).unwrap_err();
    assert!(err.to_string().contains("masqueradeBit 40"), "{err}");
    assert!(b.render(&two_services()).is_err());
    assert_eq!(fake.apply_count(), 0);
}

#[test]
fn a_single_family_backend_leaves_the_other_table_alone() {
    let fake = FakeNft::new();
    let mut b = backend(&fake).with_families(&[Family::Ip]);
    b.sync(&two_services(), &Changes::full()).unwrap();
    assert!(fake.table(Family::Ip).is_some());
    assert!(fake.table(Family::Ip6).is_none());
    assert!(!b.render(&two_services()).unwrap().contains("ip6"));
}

/// `nodePortAddresses: [primary]` on a node without an address of one family, whose node
/// IP of that family is the loopback fallback: that family accepts NodePorts on every
/// local address, the other only on its node IP.
#[test]
fn a_loopback_node_ip_makes_primary_mean_every_local_address() {
    let options = kube_proxy_model::ProxyOptions {
        node_port_addresses: vec![kube_proxy_model::NodePortAddress::Primary],
        ..default_options()
    };
    let every_local = |family: &str, lo: &str| {
        format!("kube-proxy services fib daddr type local {family} daddr != {lo} meta")
    };
    for (ips, lo_family, lo_range, other) in [
        (["192.168.0.2", "::1"], "ip6", "::1", "ip"),
        (["127.0.0.1", "fd00:192::2"], "ip", "127.0.0.0/8", "ip6"),
    ] {
        let mut st = two_services();
        st.node.ips = ips.iter().map(|a| ip(a)).collect();
        let script = NftablesBackend::with_executor(options.clone(), FakeNft::new())
            .with_address_source(addresses())
            .render(&st)
            .unwrap();
        assert!(
            script.contains(&every_local(lo_family, lo_range)),
            "{script}"
        );
        assert!(
            !script.contains(&format!("set {lo_family} kube-proxy nodeport-ips")),
            "{script}"
        );
        assert!(
            script.contains(&format!(
                "add rule {other} kube-proxy services {other} daddr @nodeport-ips"
            )),
            "{script}"
        );
    }
}

/// A random edit of one service port.
#[derive(Debug, Clone)]
enum Edit {
    Remove(usize),
    Set {
        svc: usize,
        endpoints: Vec<(u8, bool, bool)>,
        node_port: bool,
        etp_local: bool,
        affinity: Option<u32>,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0..4usize).prop_map(Edit::Remove),
        (
            0..4usize,
            prop::collection::vec((1..6u8, any::<bool>(), any::<bool>()), 0..4),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(prop_oneof![Just(60u32), Just(10800u32)]),
        )
            .prop_map(
                |(svc, endpoints, node_port, etp_local, affinity)| Edit::Set {
                    svc,
                    endpoints,
                    node_port,
                    etp_local,
                    affinity
                }
            ),
    ]
}

fn apply_edit(st: &mut ProxyState, e: &Edit) -> ServicePortName {
    let svc = match e {
        Edit::Remove(i) | Edit::Set { svc: i, .. } => *i,
    };
    // Services 0 and 1 share a ClusterIP (two ports of one Service).
    let (svc_name, cip, proto) = match svc {
        0 => ("s0", "172.30.0.1", Protocol::Tcp),
        1 => ("s0", "172.30.0.1", Protocol::Udp),
        n => (
            ["s2", "s3"][n - 2],
            ["172.30.0.2", "172.30.0.3"][n - 2],
            Protocol::Tcp,
        ),
    };
    let mut p = port("ns", svc_name, &format!("p{svc}"), proto, cip, 80);
    let Edit::Set {
        endpoints,
        node_port,
        etp_local,
        affinity,
        ..
    } = e
    else {
        st.v4.remove(&p.name);
        return p.name;
    };
    p.node_port = if *node_port { 30000 + svc as u16 } else { 0 };
    p.external_policy_local = *etp_local && *node_port;
    p.session_affinity =
        affinity.map(|timeout_seconds| kube_proxy_model::SessionAffinity { timeout_seconds });
    let eps = endpoints
        .iter()
        .map(|(n, local, ready)| {
            let addr = format!("10.0.{}.{n}", u8::from(*local));
            if *ready {
                ep(&addr, 8080, *local)
            } else {
                terminating(&addr, 8080, *local)
            }
        })
        .collect();
    insert(st, p.clone(), eps);
    p.name
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// However services change, partial syncs leave the kernel exactly as a fresh full
    /// sync of the final model would.
    #[test]
    fn partial_syncs_converge_to_a_fresh_full_sync(edits in prop::collection::vec(prop::collection::vec(edit(), 1..3), 1..6)) {
        let fake = FakeNft::new();
        let mut b = backend(&fake);
        let mut st = state(node(), vec![]);
        b.sync(&st, &Changes::full()).unwrap();
        for batch in &edits {
            let names: BTreeSet<ServicePortName> = batch.iter().map(|e| apply_edit(&mut st, e)).collect();
            b.sync(&st, &Changes { services: names, ..Changes::default() }).unwrap();
            // Stale chains go on the sync after; compare after that housekeeping sync.
            b.sync(&st, &Changes::default()).unwrap();
            prop_assert_eq!(tables(&fake), fresh_tables(&st));
        }
    }
}
