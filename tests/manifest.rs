//! Loads the bundled example cluster through the manifest source and the model builder,
//! exactly as `kube-proxy render -f deploy/examples/cluster.yaml --hostname-override node-a`
//! does, and checks the model node-a gets.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use kube_proxy::builder::ModelBuilder;
use kube_proxy::sources::manifest::{self, ManifestError};
use kube_proxy::sources::{Kind, Object, SourceEvent};
use kube_proxy_model::{IpFamily, Protocol, ProxyState, ServiceEntry};

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/cluster.yaml")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|s| ip(s)).collect()
}

fn model_for(node: &str, objects: Vec<Object>) -> ProxyState {
    let mut builder = ModelBuilder::new(node.into(), Vec::new());
    for ev in manifest::listed_events(objects) {
        builder.handle(ev);
    }
    assert!(builder.is_synced());
    let (state, changes) = builder.take_changes();
    assert!(changes.full, "the first sync is a full one");
    state
}

fn example_model() -> ProxyState {
    model_for(
        "node-a",
        manifest::load(&[example()]).expect("example loads"),
    )
}

/// The entry of `ns/name` port `port` (`protocol`) in `family`.
fn entry<'a>(
    state: &'a ProxyState,
    family: IpFamily,
    svc: &str,
    port: &str,
    protocol: Protocol,
) -> &'a ServiceEntry {
    state
        .services(family)
        .iter()
        .find(|(n, _)| n.service() == svc && n.port == port && n.protocol == protocol)
        .map(|(_, e)| &**e)
        .unwrap_or_else(|| panic!("no {family} entry for {svc}:{port}/{protocol}"))
}

fn addrs(eps: &[kube_proxy_model::Endpoint]) -> Vec<String> {
    eps.iter().map(|e| e.to_string()).collect()
}

#[test]
fn example_loads_only_the_kinds_the_proxy_uses() {
    let objects = manifest::load(&[example()]).unwrap();
    let count = |k: Kind| objects.iter().filter(|o| o.kind() == k).count();
    assert_eq!(count(Kind::Service), 15);
    assert_eq!(count(Kind::EndpointSlice), 15);
    assert_eq!(count(Kind::Node), 2);
    assert_eq!(count(Kind::ServiceCidr), 1);
    assert_eq!(objects.len(), 33, "the Namespace is skipped");
}

#[test]
fn example_skips_services_the_proxy_does_not_handle() {
    let state = example_model();
    let services: std::collections::BTreeSet<String> = state
        .v4
        .keys()
        .chain(state.v6.keys())
        .map(|n| n.service())
        .collect();
    for skipped in [
        "default/postgres",
        "default/billing-db",
        "mesh/mesh-gateway",
    ] {
        assert!(!services.contains(skipped), "{skipped} must be skipped");
    }
    let expected = [
        "default/api",
        "default/cart",
        "default/catalog",
        "default/kubernetes",
        "default/legacy",
        "default/reports",
        "default/shop",
        "default/web",
        "ingress/ingress-nginx",
        "kube-system/kube-dns",
        "kube-system/node-cache",
        "telecom/signaling",
    ];
    assert_eq!(services.into_iter().collect::<Vec<_>>(), expected);
    assert_eq!(state.v4.len(), 15);
    assert_eq!(state.v6.len(), 1);
}

#[test]
fn example_node_facts() {
    let node = example_model().node;
    assert_eq!(node.name, "node-a");
    assert_eq!(node.zone.as_deref(), Some("zone-a"));
    assert_eq!(node.ips, ips(&["192.0.2.10", "2001:db8:0:2::10"]));
    let cidrs = |v: &[&str]| {
        v.iter()
            .map(|s| s.parse().unwrap())
            .collect::<Vec<ipnet::IpNet>>()
    };
    assert_eq!(
        node.pod_cidrs,
        cidrs(&["10.244.0.0/24", "fd00:10:244::/64"])
    );
    assert_eq!(
        node.service_cidrs,
        cidrs(&["10.96.0.0/16", "fd00:10:96::/112"])
    );
}

#[test]
fn example_dual_stack_service_has_one_entry_per_family() {
    let state = example_model();
    let v4 = entry(&state, IpFamily::V4, "default/api", "grpc", Protocol::Tcp);
    let v6 = entry(&state, IpFamily::V6, "default/api", "grpc", Protocol::Tcp);
    assert_eq!(v4.port.cluster_ip, ip("10.96.60.70"));
    assert_eq!(v6.port.cluster_ip, ip("fd00:10:96::70"));
    assert_eq!(addrs(&v4.endpoints), ["10.244.0.80:9090"]);
    assert_eq!(addrs(&v6.endpoints), ["[fd00:10:244::80]:9090"]);
    assert!(v6.endpoints[0].is_local);
}

#[test]
fn example_kube_dns_ports_match_by_name_and_protocol() {
    let state = example_model();
    for (port, protocol, target) in [
        ("dns", Protocol::Udp, 53),
        ("dns-tcp", Protocol::Tcp, 53),
        ("metrics", Protocol::Tcp, 9153),
    ] {
        let e = entry(&state, IpFamily::V4, "kube-system/kube-dns", port, protocol);
        assert_eq!(e.port.cluster_ip, ip("10.96.0.10"));
        let want = [
            format!("10.244.0.5:{target}"),
            format!("10.244.1.6:{target}"),
        ];
        assert_eq!(addrs(&e.endpoints), want);
        assert_eq!(e.local_ready_endpoints(), 1);
    }
}

#[test]
fn example_terminating_endpoint_is_kept_but_not_used() {
    let state = example_model();
    let web = entry(&state, IpFamily::V4, "default/web", "http", Protocol::Tcp);
    assert_eq!(web.endpoints.len(), 3);
    let terminating: Vec<_> = web.endpoints.iter().filter(|e| e.terminating).collect();
    assert_eq!(terminating.len(), 1);
    assert!(!terminating[0].ready && terminating[0].serving);
    assert_eq!(
        addrs(&web.categorized.cluster),
        ["10.244.0.11:8080", "10.244.1.12:8080"]
    );
}

#[test]
fn example_topology_hints_narrow_cluster_endpoints_to_our_zone() {
    let on_a = example_model();
    let catalog = entry(
        &on_a,
        IpFamily::V4,
        "default/catalog",
        "http",
        Protocol::Tcp,
    );
    assert_eq!(addrs(&catalog.categorized.cluster), ["10.244.0.21:8080"]);

    let objects = manifest::load(&[example()]).unwrap();
    let on_b = model_for("node-b", objects);
    let catalog = entry(
        &on_b,
        IpFamily::V4,
        "default/catalog",
        "http",
        Protocol::Tcp,
    );
    assert_eq!(addrs(&catalog.categorized.cluster), ["10.244.1.22:8080"]);
}

#[test]
fn example_load_balancer_with_local_policy() {
    let state = example_model();
    for (port, node_port) in [("http", 31080), ("https", 31443)] {
        let lb = entry(
            &state,
            IpFamily::V4,
            "ingress/ingress-nginx",
            port,
            Protocol::Tcp,
        );
        assert_eq!(lb.port.node_port, node_port);
        assert_eq!(
            lb.port.load_balancer_ips,
            ips(&["203.0.113.10"]),
            "ipMode Proxy skipped"
        );
        let ranges: Vec<String> = lb
            .port
            .load_balancer_source_ranges
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(
            ranges,
            ["203.0.113.0/24", "198.51.100.128/25"],
            "IPv6 range filtered"
        );
        assert!(lb.port.external_policy_local);
        assert_eq!(lb.port.health_check_node_port, 32000);
        assert_eq!(lb.categorized.local.len(), 1);
        assert_eq!(lb.categorized.local[0].ip, ip("10.244.0.40"));
        assert_eq!(lb.categorized.cluster.len(), 2);
    }
}

#[test]
fn example_other_service_shapes() {
    let state = example_model();
    let shop = entry(&state, IpFamily::V4, "default/shop", "http", Protocol::Tcp);
    assert_eq!(shop.port.node_port, 30080);
    assert!(!shop.port.external_policy_local);
    assert_eq!(shop.port.health_check_node_port, 0);

    let legacy = entry(
        &state,
        IpFamily::V4,
        "default/legacy",
        "https",
        Protocol::Tcp,
    );
    assert_eq!(legacy.port.external_ips, ips(&["198.51.100.20"]));
    assert!(legacy.port.externally_accessible());

    let cart = entry(&state, IpFamily::V4, "default/cart", "", Protocol::Tcp);
    assert_eq!(
        cart.port.session_affinity.map(|a| a.timeout_seconds),
        Some(600)
    );
    assert_eq!(cart.endpoints.len(), 2);

    let cache = entry(
        &state,
        IpFamily::V4,
        "kube-system/node-cache",
        "metrics",
        Protocol::Tcp,
    );
    assert!(cache.port.internal_policy_local);
    assert_eq!(
        addrs(&cache.categorized.all_reachable),
        ["10.244.0.70:9253"]
    );

    let sctp = entry(
        &state,
        IpFamily::V4,
        "telecom/signaling",
        "m3ua",
        Protocol::Sctp,
    );
    assert_eq!(addrs(&sctp.endpoints), ["10.244.1.90:2905"]);

    let reports = entry(
        &state,
        IpFamily::V4,
        "default/reports",
        "http",
        Protocol::Tcp,
    );
    assert!(reports.endpoints.is_empty());
    assert!(!reports.categorized.has_any);

    let api_server = entry(
        &state,
        IpFamily::V4,
        "default/kubernetes",
        "https",
        Protocol::Tcp,
    );
    assert_eq!(addrs(&api_server.endpoints), ["192.0.2.100:6443"]);
    assert!(!api_server.endpoints[0].is_local);
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: a, namespace: ns}
spec: {clusterIP: 10.96.0.5, ports: [{port: 80}]}
";

#[test]
fn directory_multi_document_and_json() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "b.yml", &format!("---\n{SERVICE}---\n# only a comment\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\n"));
    write(
        dir.path(),
        "a.json",
        r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "networking.k8s.io/v1beta1", "kind": "ServiceCIDR",
             "metadata": {"name": "kubernetes"}, "spec": {"cidrs": ["10.96.0.0/16"]}}]}"#,
    );
    write(dir.path(), "notes.txt", "not a manifest");
    let objects = manifest::load(&[dir.path().to_owned()]).unwrap();
    let kinds: Vec<Kind> = objects.iter().map(Object::kind).collect();
    assert_eq!(
        kinds,
        [Kind::ServiceCidr, Kind::Service],
        "files in name order, Pod skipped"
    );
}

#[test]
fn malformed_object_names_file_document_item_and_object() {
    let dir = tempfile::tempdir().unwrap();
    let bad = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: ok, namespace: ns}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: broken, namespace: ns}\n  spec: {ports: [{port: eighty}]}\n";
    let path = write(dir.path(), "bad.yaml", &format!("{SERVICE}---\n{bad}"));
    let err = manifest::load(&[path]).unwrap_err();
    assert!(
        matches!(
            err,
            ManifestError::Object {
                document: 2,
                item: Some(2),
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(
            "bad.yaml: document 2, item 2: Service ns/broken: spec.ports[0].port: invalid type"
        ),
        "{msg}"
    );
}

#[test]
fn malformed_yaml_and_missing_kind_are_reported_with_their_document() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "syntax.yaml",
        &format!("{SERVICE}---\nkind: [unclosed\n"),
    );
    let msg = manifest::load(&[path]).unwrap_err().to_string();
    assert!(msg.contains("syntax.yaml: document 2:"), "{msg}");

    let path = write(
        dir.path(),
        "nokind.yaml",
        "apiVersion: v1\nmetadata: {name: x}\n",
    );
    let msg = manifest::load(&[path]).unwrap_err().to_string();
    assert!(
        msg.contains("nokind.yaml: document 1: missing \"kind\""),
        "{msg}"
    );

    let err = manifest::load(&[dir.path().join("absent.yaml")]).unwrap_err();
    assert!(matches!(err, ManifestError::Io { .. }));

    let empty = tempfile::tempdir().unwrap();
    let err = manifest::load(&[empty.path().to_owned()]).unwrap_err();
    assert!(matches!(err, ManifestError::EmptyDirectory { .. }));
}

#[test]
fn listed_events_cover_every_kind_even_when_empty() {
    let events = manifest::listed_events(Vec::new());
    let kinds: Vec<Kind> = events
        .iter()
        .map(|e| match e {
            SourceEvent::Listed(kind, objs) => {
                assert!(objs.is_empty());
                *kind
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            Kind::Node,
            Kind::ServiceCidr,
            Kind::Service,
            Kind::EndpointSlice
        ]
    );
}
