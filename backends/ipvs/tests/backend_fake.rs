//! IPVS mode's sync logic against the in-memory kernel: `FakeIpvs`, `FakeDummyLink` and
//! `FakeNft`. Golden files: `UPDATE_GOLDEN=1 cargo test -p kube-proxy-ipvs --test backend_fake`.

use std::net::IpAddr;
use std::sync::Arc;

use kube_proxy_ipvs::{
    DummyLinkClient, FakeDummyLink, FakeIpvs, IpvsBackend, IpvsClient, IpvsSettings, RealServer,
    RealServerStats, Scheduler, ServiceKey, VirtualServer,
};
use kube_proxy_model::{
    Backend, Changes, Endpoint, IpFamily, LocalDetector, NodeInfo, Protocol, ProxyOptions,
    ProxyState, ServiceEntry, ServicePort, ServicePortName, SessionAffinity,
};
use kube_proxy_nftables::{FakeNft, Family, StaticAddresses};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn name(svc: &str, proto: Protocol) -> ServicePortName {
    ServicePortName {
        namespace: "ns".into(),
        name: svc.into(),
        port: String::new(),
        protocol: proto,
    }
}

fn node() -> NodeInfo {
    NodeInfo {
        name: "node-a".into(),
        ips: vec![ip("192.168.0.10")],
        pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
        ..NodeInfo::default()
    }
}

fn ep(addr: &str, port: u16, local: bool) -> Endpoint {
    Endpoint::ready(ip(addr), port, local)
}

fn key(addr: &str, port: u16, protocol: Protocol) -> ServiceKey {
    ServiceKey {
        addr: ip(addr),
        port,
        protocol,
    }
}

fn insert(state: &mut ProxyState, port: ServicePort, eps: Vec<Endpoint>) {
    let entry = ServiceEntry::new(port.clone(), eps, &state.node);
    let family = port.family;
    let mut map = state.services(family).clone();
    map.insert(port.name.clone(), Arc::new(entry));
    match family {
        IpFamily::V4 => state.v4 = map,
        IpFamily::V6 => state.v6 = map,
    }
}

fn remove(state: &mut ProxyState, family: IpFamily, n: &ServicePortName) {
    let mut map = state.services(family).clone();
    map.remove(n);
    match family {
        IpFamily::V4 => state.v4 = map,
        IpFamily::V6 => state.v6 = map,
    }
}

/// A ClusterIP web service, a UDP DNS service, a NodePort/LoadBalancer service with
/// `externalTrafficPolicy: Local` and source ranges, and one without endpoints.
fn scenario() -> ProxyState {
    let mut s = ProxyState {
        node: node(),
        ..ProxyState::default()
    };
    let web = ServicePort::new(name("web", Protocol::Tcp), ip("10.96.0.10"), 80);
    insert(
        &mut s,
        web,
        vec![ep("10.244.1.5", 8080, true), ep("10.244.2.5", 8080, false)],
    );
    let dns = ServicePort {
        session_affinity: Some(SessionAffinity {
            timeout_seconds: 600,
        }),
        ..ServicePort::new(name("dns", Protocol::Udp), ip("10.96.0.53"), 53)
    };
    insert(
        &mut s,
        dns,
        vec![ep("10.244.1.6", 53, true), ep("10.244.2.6", 53, false)],
    );
    let lb = ServicePort {
        node_port: 30080,
        external_ips: vec![ip("203.0.113.7")],
        load_balancer_ips: vec![ip("198.51.100.1")],
        load_balancer_source_ranges: vec!["192.0.2.0/24".parse().unwrap()],
        external_policy_local: true,
        health_check_node_port: 32000,
        ..ServicePort::new(name("lb", Protocol::Tcp), ip("10.96.0.80"), 443)
    };
    insert(
        &mut s,
        lb,
        vec![ep("10.244.1.7", 8443, true), ep("10.244.2.7", 8443, false)],
    );
    let empty = ServicePort::new(name("empty", Protocol::Tcp), ip("10.96.0.99"), 80);
    insert(&mut s, empty, vec![]);
    s
}

struct Harness {
    ipvs: FakeIpvs,
    link: FakeDummyLink,
    nft: FakeNft,
    backend: IpvsBackend,
}

fn harness(settings: IpvsSettings) -> Harness {
    let (ipvs, link, nft) = (FakeIpvs::new(), FakeDummyLink::new(), FakeNft::new());
    let options = ProxyOptions {
        local_detector: LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]),
        ..ProxyOptions::default()
    };
    let backend =
        IpvsBackend::with_clients(options, settings, ipvs.clone(), link.clone(), nft.clone())
            .with_address_source(StaticAddresses(vec![
                ip("127.0.0.1"),
                ip("192.168.0.10"),
                ip("fe80::1"),
            ]));
    Harness {
        ipvs,
        link,
        nft,
        backend,
    }
}

fn reals(ipvs: &FakeIpvs, k: &ServiceKey) -> Vec<(IpAddr, u16, u32)> {
    let mut v: Vec<_> = ipvs
        .clone()
        .destinations(k)
        .unwrap()
        .into_iter()
        .map(|d| (d.server.addr, d.server.port, d.server.weight))
        .collect();
    v.sort();
    v
}

fn changed(names: &[ServicePortName]) -> Changes {
    Changes {
        services: names.iter().cloned().collect(),
        ..Changes::default()
    }
}

/// The kernel counts `kube-ipvs0`'s addresses among the node's: a service address left
/// bound by an earlier sync (its service deleted since) must not become a NodePort address
/// in the sync that unbinds it (upstream's `ipGetter.NodeIPs` leaves the dummy link's
/// addresses out).
#[test]
fn addresses_on_kube_ipvs0_never_get_node_ports() {
    let mut h = harness(IpvsSettings::default());
    let stale = ip("10.96.0.77");
    h.backend = h.backend.with_address_source(StaticAddresses(vec![
        ip("127.0.0.1"),
        ip("192.168.0.10"),
        stale,
    ]));
    h.link.ensure().unwrap();
    h.link.add_address(stale).unwrap();
    h.backend.sync(&scenario(), &Changes::full()).unwrap();
    let services: Vec<ServiceKey> = h
        .ipvs
        .clone()
        .services()
        .unwrap()
        .iter()
        .map(VirtualServer::key)
        .collect();
    assert!(
        services.contains(&key("192.168.0.10", 30080, Protocol::Tcp)),
        "{services:?}"
    );
    assert!(
        !services.contains(&key("10.96.0.77", 30080, Protocol::Tcp)),
        "{services:?}"
    );
    assert!(!h.link.addresses().unwrap().contains(&stale));
}

#[test]
fn full_sync_programs_every_frontend_with_the_policy_s_endpoints() {
    let mut h = harness(IpvsSettings::default());
    let report = h.backend.sync(&scenario(), &Changes::full()).unwrap();
    assert!(report.full && report.applied);
    let services = h.ipvs.clone().services().unwrap();
    let keys: Vec<String> = services.iter().map(|s| s.key().to_string()).collect();
    assert_eq!(
        keys,
        [
            "TCP 10.96.0.10:80",
            "UDP 10.96.0.53:53",
            "TCP 10.96.0.80:443",
            "TCP 10.96.0.99:80",
            "TCP 192.168.0.10:30080",
            "TCP 198.51.100.1:443",
            "TCP 203.0.113.7:443",
        ]
    );
    let both = |a: &str, b: &str, p| vec![(ip(a), p, 1), (ip(b), p, 1)];
    assert_eq!(
        reals(&h.ipvs, &key("10.96.0.10", 80, Protocol::Tcp)),
        both("10.244.1.5", "10.244.2.5", 8080)
    );
    // ClusterIP of an eTP=Local service: every endpoint; its external frontends: local ones.
    assert_eq!(
        reals(&h.ipvs, &key("10.96.0.80", 443, Protocol::Tcp)),
        both("10.244.1.7", "10.244.2.7", 8443)
    );
    for (addr, port) in [
        ("192.168.0.10", 30080),
        ("198.51.100.1", 443),
        ("203.0.113.7", 443),
    ] {
        assert_eq!(
            reals(&h.ipvs, &key(addr, port, Protocol::Tcp)),
            vec![(ip("10.244.1.7"), 8443, 1)],
            "{addr}"
        );
    }
    let dns = services.iter().find(|s| s.port == 53).unwrap();
    assert_eq!(dns.timeout, 600);
    assert!(dns
        .flags
        .contains(kube_proxy_ipvs::ServiceFlags::PERSISTENT));
    assert_eq!(
        h.link.clone().addresses().unwrap(),
        [
            "10.96.0.10",
            "10.96.0.53",
            "10.96.0.80",
            "10.96.0.99",
            "198.51.100.1",
            "203.0.113.7"
        ]
        .map(ip)
    );
    let table = h.nft.table(Family::Ip).unwrap();
    let noep = &table.sets["no-endpoint-services"].elements;
    assert_eq!(
        noep["10.96.0.99 . tcp . 80"].value.as_deref(),
        Some("goto reject-chain")
    );
    assert!(h.nft.table(Family::Ip6).is_none(), "no IPv6 on this node");

    // A second sync, full or partial, sends nothing.
    let (w, n) = (h.ipvs.writes(), h.nft.apply_count());
    let report = h.backend.sync(&scenario(), &Changes::full()).unwrap();
    assert!(!report.applied);
    h.backend.sync(&scenario(), &Changes::default()).unwrap();
    assert_eq!((h.ipvs.writes(), h.nft.apply_count()), (w, n));
}

/// Upstream's IPVS `syncEndpoint` (kubernetes PR 97081): a Local policy without local
/// endpoints uses the cluster endpoints, where the port has any; a port whose traffic is
/// all Local-policy has none, and its ClusterIP drops as in the other modes.
#[test]
fn a_local_policy_without_local_endpoints_falls_back_to_the_cluster_ones() {
    let mut s = ProxyState {
        node: node(),
        ..ProxyState::default()
    };
    let remote = || vec![ep("10.244.2.8", 8080, false)];
    let etp_local = ServicePort {
        node_port: 30090,
        external_policy_local: true,
        ..ServicePort::new(name("etp", Protocol::Tcp), ip("10.96.0.90"), 80)
    };
    insert(&mut s, etp_local, remote());
    let itp_local = ServicePort {
        internal_policy_local: true,
        ..ServicePort::new(name("itp", Protocol::Tcp), ip("10.96.0.91"), 80)
    };
    insert(&mut s, itp_local, remote());
    let itp_local_node_port = ServicePort {
        node_port: 30092,
        internal_policy_local: true,
        ..ServicePort::new(name("itp-np", Protocol::Tcp), ip("10.96.0.92"), 80)
    };
    insert(&mut s, itp_local_node_port, remote());
    let mut h = harness(IpvsSettings::default());
    h.backend.sync(&s, &Changes::full()).unwrap();

    let remote_real = vec![(ip("10.244.2.8"), 8080, 1)];
    for (addr, port) in [
        ("192.168.0.10", 30090),
        ("10.96.0.90", 80),
        ("10.96.0.92", 80),
        ("192.168.0.10", 30092),
    ] {
        let k = key(addr, port, Protocol::Tcp);
        assert_eq!(reals(&h.ipvs, &k), remote_real, "{k}");
    }
    assert_eq!(reals(&h.ipvs, &key("10.96.0.91", 80, Protocol::Tcp)), []);
    let table = h.nft.table(Family::Ip).unwrap();
    let noep = &table.sets["no-endpoint-services"].elements;
    let keys: Vec<&String> = noep.keys().collect();
    assert_eq!(keys, ["10.96.0.91 . tcp . 80"]);
    assert_eq!(noep["10.96.0.91 . tcp . 80"].value.as_deref(), Some("drop"));
}

#[test]
fn partial_sync_touches_only_the_changed_service() {
    let mut h = harness(IpvsSettings::default());
    let mut state = scenario();
    h.backend.sync(&state, &Changes::full()).unwrap();
    let before = h.ipvs.writes();
    let web = ServicePort::new(name("web", Protocol::Tcp), ip("10.96.0.10"), 80);
    insert(
        &mut state,
        web,
        vec![
            ep("10.244.1.5", 8080, true),
            ep("10.244.2.5", 8080, false),
            ep("10.244.3.5", 8080, false),
        ],
    );
    let report = h
        .backend
        .sync(&state, &changed(&[name("web", Protocol::Tcp)]))
        .unwrap();
    assert!(!report.full && report.applied);
    assert_eq!(h.ipvs.writes(), before + 1, "one real server added");
    assert_eq!(
        reals(&h.ipvs, &key("10.96.0.10", 80, Protocol::Tcp)).len(),
        3
    );

    // Removing a service deletes its virtual server, address and set elements.
    remove(&mut state, IpFamily::V4, &name("empty", Protocol::Tcp));
    h.backend
        .sync(&state, &changed(&[name("empty", Protocol::Tcp)]))
        .unwrap();
    assert!(h
        .ipvs
        .clone()
        .destinations(&key("10.96.0.99", 80, Protocol::Tcp))
        .unwrap()
        .is_empty());
    assert!(!h
        .link
        .clone()
        .addresses()
        .unwrap()
        .contains(&ip("10.96.0.99")));
    let table = h.nft.table(Family::Ip).unwrap();
    assert!(!table.sets["no-endpoint-services"]
        .elements
        .contains_key("10.96.0.99 . tcp . 80"));
    let last = h.nft.applied().pop().unwrap().render();
    assert!(!last.contains("add table"), "elements only:\n{last}");
}

#[test]
fn tcp_real_servers_drain_and_udp_and_sctp_ones_go_at_once() {
    let mut h = harness(IpvsSettings::default());
    let mut state = scenario();
    let sctp = ServicePort::new(name("sig", Protocol::Sctp), ip("10.96.0.38"), 3868);
    insert(
        &mut state,
        sctp.clone(),
        vec![ep("10.244.1.8", 3868, true), ep("10.244.2.8", 3868, false)],
    );
    h.backend.sync(&state, &Changes::full()).unwrap();
    let web = key("10.96.0.10", 80, Protocol::Tcp);
    let busy = RealServerStats {
        active_conns: 1,
        inactive_conns: 2,
        persistent_conns: 0,
    };
    assert!(h.ipvs.set_stats(&web, ip("10.244.2.5"), 8080, busy));
    assert!(h.ipvs.set_stats(
        &key("10.96.0.53", 53, Protocol::Udp),
        ip("10.244.2.6"),
        53,
        busy
    ));
    let sig = key("10.96.0.38", 3868, Protocol::Sctp);
    assert!(h.ipvs.set_stats(&sig, ip("10.244.2.8"), 3868, busy));
    insert(&mut state, sctp, vec![ep("10.244.1.8", 3868, true)]);
    let only_local = |svc: &str, proto, cip: &str, port, epip: &str, epport| {
        (
            ServicePort::new(name(svc, proto), ip(cip), port),
            vec![ep(epip, epport, true)],
        )
    };
    let (p, e) = only_local("web", Protocol::Tcp, "10.96.0.10", 80, "10.244.1.5", 8080);
    insert(&mut state, p, e);
    let (mut p, e) = only_local("dns", Protocol::Udp, "10.96.0.53", 53, "10.244.1.6", 53);
    p.session_affinity = Some(SessionAffinity {
        timeout_seconds: 600,
    });
    insert(&mut state, p, e);
    let names = [
        name("web", Protocol::Tcp),
        name("dns", Protocol::Udp),
        name("sig", Protocol::Sctp),
    ];
    h.backend.sync(&state, &changed(&names)).unwrap();
    assert_eq!(
        reals(&h.ipvs, &web),
        vec![(ip("10.244.1.5"), 8080, 1), (ip("10.244.2.5"), 8080, 0)],
        "the busy TCP real server drains with weight 0"
    );
    assert_eq!(
        reals(&h.ipvs, &key("10.96.0.53", 53, Protocol::Udp)),
        vec![(ip("10.244.1.6"), 53, 1)],
        "UDP is deleted at once"
    );
    assert_eq!(
        reals(&h.ipvs, &sig),
        vec![(ip("10.244.1.8"), 3868, 1)],
        "SCTP is deleted at once"
    );
    assert_eq!(h.backend.draining(), 1);
    // Their stale conntrack entries go with them, by the caller's conntrack clean-up.
    assert_eq!(
        h.backend.conntrack_protocols(),
        [Protocol::Udp, Protocol::Sctp]
    );

    // Still busy: kept. Connections gone: deleted by the next sync, even one without changes.
    h.backend.sync(&state, &Changes::default()).unwrap();
    assert_eq!(reals(&h.ipvs, &web).len(), 2);
    h.ipvs
        .set_stats(&web, ip("10.244.2.5"), 8080, RealServerStats::default());
    let report = h.backend.sync(&state, &Changes::default()).unwrap();
    assert!(report.applied);
    assert_eq!(reals(&h.ipvs, &web), vec![(ip("10.244.1.5"), 8080, 1)]);
    assert_eq!(h.backend.draining(), 0);
}

#[test]
fn a_draining_endpoint_that_returns_gets_its_weight_back() {
    let mut h = harness(IpvsSettings::default());
    let mut state = scenario();
    h.backend.sync(&state, &Changes::full()).unwrap();
    let web = key("10.96.0.10", 80, Protocol::Tcp);
    let busy = RealServerStats {
        active_conns: 1,
        ..RealServerStats::default()
    };
    h.ipvs.set_stats(&web, ip("10.244.2.5"), 8080, busy);
    let original = state.clone();
    let p = ServicePort::new(name("web", Protocol::Tcp), ip("10.96.0.10"), 80);
    insert(&mut state, p, vec![ep("10.244.1.5", 8080, true)]);
    let names = [name("web", Protocol::Tcp)];
    h.backend.sync(&state, &changed(&names)).unwrap();
    assert_eq!(h.backend.draining(), 1);
    h.backend.sync(&original, &changed(&names)).unwrap();
    assert_eq!(
        reals(&h.ipvs, &web),
        vec![(ip("10.244.1.5"), 8080, 1), (ip("10.244.2.5"), 8080, 1)]
    );
    assert_eq!(h.backend.draining(), 0);
}

#[test]
fn excluded_and_other_family_virtual_servers_are_left_alone() {
    let settings = IpvsSettings {
        exclude_cidrs: vec!["10.100.0.0/16".parse().unwrap()],
        ..IpvsSettings::default()
    };
    let mut h = harness(settings);
    let mut ipvs = h.ipvs.clone();
    let foreign = [
        VirtualServer::new(ip("10.100.0.1"), 80, Protocol::Tcp, Scheduler::default()),
        VirtualServer::new(ip("fd00::1"), 80, Protocol::Tcp, Scheduler::default()),
    ];
    let stale = VirtualServer::new(ip("10.96.7.7"), 80, Protocol::Tcp, Scheduler::default());
    for vs in foreign.iter().chain([&stale]) {
        ipvs.add_service(vs).unwrap();
        ipvs.add_destination(
            &vs.key(),
            &RealServer::new(
                if vs.addr.is_ipv4() {
                    ip("10.1.1.1")
                } else {
                    ip("fd00::9")
                },
                80,
                1,
            ),
        )
        .unwrap();
    }
    let mut link = h.link.clone();
    link.ensure().unwrap();
    link.add_address(ip("10.100.0.1")).unwrap();
    link.add_address(ip("10.96.7.7")).unwrap();
    h.backend.sync(&scenario(), &Changes::full()).unwrap();
    let keys: Vec<ServiceKey> = ipvs.services().unwrap().iter().map(|s| s.key()).collect();
    for vs in &foreign {
        assert!(keys.contains(&vs.key()), "{} kept", vs.key());
        assert_eq!(ipvs.destinations(&vs.key()).unwrap().len(), 1);
    }
    assert!(!keys.contains(&stale.key()), "stale service deleted");
    let addrs = link.addresses().unwrap();
    assert!(addrs.contains(&ip("10.100.0.1")));
    assert!(!addrs.contains(&ip("10.96.7.7")));
}

#[test]
fn a_failed_sync_errs_and_the_next_full_one_repairs() {
    let mut h = harness(IpvsSettings::default());
    let mut state = scenario();
    h.backend.sync(&state, &Changes::full()).unwrap();
    let p = ServicePort::new(name("new", Protocol::Tcp), ip("10.96.0.77"), 80);
    insert(&mut state, p, vec![ep("10.244.1.9", 80, true)]);
    h.ipvs.fail_next(libc_enomem());
    let e = h
        .backend
        .sync(&state, &changed(&[name("new", Protocol::Tcp)]))
        .unwrap_err();
    assert!(e.to_string().contains("10.96.0.77:80"), "{e}");
    // Meanwhile someone deletes a real server behind our back.
    h.ipvs
        .clone()
        .delete_destination(
            &key("10.96.0.10", 80, Protocol::Tcp),
            &RealServer::new(ip("10.244.1.5"), 8080, 1),
        )
        .unwrap();
    h.nft.fail_next_apply("boom");
    assert!(h.backend.sync(&state, &Changes::default()).is_err());
    let report = h.backend.sync(&state, &Changes::default()).unwrap();
    assert!(
        report.full,
        "after an error the backend reads the kernel back"
    );
    assert_eq!(
        reals(&h.ipvs, &key("10.96.0.77", 80, Protocol::Tcp)),
        vec![(ip("10.244.1.9"), 80, 1)]
    );
    assert_eq!(
        reals(&h.ipvs, &key("10.96.0.10", 80, Protocol::Tcp)).len(),
        2
    );
    assert!(h.nft.table(Family::Ip).unwrap().sets["cluster-ips"]
        .elements
        .contains_key("10.96.0.77 . tcp . 80"));
}

fn libc_enomem() -> i32 {
    12
}

#[test]
fn cleanup_removes_ours_and_keeps_excluded() {
    let settings = IpvsSettings {
        exclude_cidrs: vec!["10.100.0.0/16".parse().unwrap()],
        ..IpvsSettings::default()
    };
    let mut h = harness(settings);
    let kept = VirtualServer::new(ip("10.100.0.1"), 80, Protocol::Tcp, Scheduler::default());
    h.ipvs.clone().add_service(&kept).unwrap();
    h.backend.sync(&scenario(), &Changes::full()).unwrap();
    h.backend.cleanup().unwrap();
    assert_eq!(h.ipvs.clone().services().unwrap(), [kept]);
    assert!(!h.link.exists());
    assert!(h.nft.table(Family::Ip).is_none());
}

fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(actual, expected, "{name}: UPDATE_GOLDEN=1 regenerates");
}

#[test]
fn render_goldens() {
    let render = |settings: IpvsSettings, options: ProxyOptions, state: &ProxyState| {
        IpvsBackend::with_clients(
            options,
            settings,
            FakeIpvs::new(),
            FakeDummyLink::new(),
            FakeNft::new(),
        )
        .with_address_source(StaticAddresses(state.node.ips.clone()))
        .render(state)
        .unwrap()
    };
    let options = ProxyOptions {
        local_detector: LocalDetector::Cidrs(vec!["10.244.0.0/16".parse().unwrap()]),
        ..ProxyOptions::default()
    };
    golden(
        "mixed",
        &render(IpvsSettings::default(), options.clone(), &scenario()),
    );

    let masq_all = ProxyOptions {
        masquerade_all: true,
        ..ProxyOptions::default()
    };
    let wlc = IpvsSettings {
        scheduler: Scheduler::new("wlc").unwrap(),
        ..IpvsSettings::default()
    };
    golden("masquerade_all_wlc", &render(wlc, masq_all, &scenario()));

    let mut dual = ProxyState {
        node: NodeInfo {
            ips: vec![ip("192.168.0.10"), ip("fd00:1::10")],
            ..node()
        },
        ..ProxyState::default()
    };
    let v6 = ServicePort {
        node_port: 30053,
        internal_policy_local: true,
        ..ServicePort::new(name("dns6", Protocol::Udp), ip("fd00:96::a"), 53)
    };
    insert(
        &mut dual,
        v6,
        vec![
            ep("fd00:244:1::6", 53, true),
            ep("fd00:244:2::6", 53, false),
        ],
    );
    let v4 = ServicePort::new(name("web", Protocol::Tcp), ip("10.96.0.10"), 80);
    insert(&mut dual, v4, vec![ep("10.244.2.5", 8080, false)]);
    let bridge = ProxyOptions {
        local_detector: LocalDetector::BridgeInterface("cbr0".into()),
        ..ProxyOptions::default()
    };
    golden(
        "dual_stack",
        &render(IpvsSettings::default(), bridge, &dual),
    );
}
