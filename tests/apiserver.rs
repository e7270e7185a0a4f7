//! The real API-server source (`kube_proxy::sources::apiserver::run`) against the fake
//! API server over real HTTP.
//!
//! Each test keeps a mirror built only from the `SourceEvent`s the source sends and checks
//! that it converges — within a bounded wait — to exactly the objects the server holds
//! that kube-proxy should see, through creates, updates, deletes, dropped watches, expired
//! history (410 → relist), a paused server and label/field selection.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, NodeSpec, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{ServiceCIDR, ServiceCIDRSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube_proxy::builder::ModelBuilder;
use kube_proxy::sources::apiserver;
use kube_proxy::sources::{Kind, Object, SourceEvent};
use support::fake_apiserver::FakeApiServer;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Our node.
const NODE: &str = "node-a";
/// An upper bound for the source to catch up, generous enough for a relist after the
/// watcher's first backoff step (~0.8 s) on a loaded machine.
const WAIT: Duration = Duration::from_secs(15);
const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

fn meta(namespace: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }),
        ..ObjectMeta::default()
    }
}

fn service(name: &str, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: meta(Some("default"), name, labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".to_owned()),
            ports: Some(vec![ServicePort {
                port: 80,
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn slice(name: &str, labels: &[(&str, &str)]) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(Some("default"), name, labels),
        address_type: "IPv4".to_owned(),
        endpoints: vec![Endpoint {
            addresses: vec!["10.0.0.1".to_owned()],
            ..Endpoint::default()
        }],
        ports: None,
    }
}

fn node(name: &str) -> Node {
    Node {
        metadata: meta(None, name, &[]),
        spec: Some(NodeSpec {
            pod_cidr: Some("10.244.0.0/24".to_owned()),
            ..NodeSpec::default()
        }),
        ..Node::default()
    }
}

fn service_cidr(name: &str, cidr: &str) -> ServiceCIDR {
    ServiceCIDR {
        metadata: meta(None, name, &[]),
        spec: Some(ServiceCIDRSpec {
            cidrs: Some(vec![cidr.to_owned()]),
        }),
        status: None,
    }
}

fn object_meta(obj: &Object) -> &ObjectMeta {
    match obj {
        Object::Service(o) => &o.metadata,
        Object::EndpointSlice(o) => &o.metadata,
        Object::Node(o) => &o.metadata,
        Object::ServiceCidr(o) => &o.metadata,
    }
}

/// `namespace/name` (or `name`) of an object's metadata.
fn key(meta: &ObjectMeta) -> String {
    let name = meta.name.clone().unwrap_or_default();
    match meta.namespace.as_deref() {
        Some(ns) => format!("{ns}/{name}"),
        None => name,
    }
}

/// Per kind (present once listed): object key → resourceVersion.
type View = HashMap<Kind, BTreeMap<String, String>>;

fn entry(meta: &ObjectMeta) -> (String, String) {
    (key(meta), meta.resource_version.clone().unwrap_or_default())
}

/// Whether upstream's Service/EndpointSlice/ServiceCIDR selector lets `meta` through;
/// written independently of both the source and the fake.
fn selected(meta: &ObjectMeta) -> bool {
    let labels = meta.labels.clone().unwrap_or_default();
    !labels.contains_key(PROXY_NAME_LABEL) && !labels.contains_key(HEADLESS_LABEL)
}

/// What the mirror must converge to: what the server holds, as kube-proxy selects it.
fn expected(server: &FakeApiServer, cidrs_served: bool) -> View {
    let mut view = View::new();
    let services = server.objects::<Service>();
    let slices = server.objects::<EndpointSlice>();
    let nodes = server.objects::<Node>();
    let metas: [(Kind, Vec<&ObjectMeta>); 3] = [
        (
            Kind::Service,
            services.iter().map(|o| &o.metadata).collect(),
        ),
        (
            Kind::EndpointSlice,
            slices.iter().map(|o| &o.metadata).collect(),
        ),
        (Kind::Node, nodes.iter().map(|o| &o.metadata).collect()),
    ];
    for (kind, metas) in metas {
        let wanted = metas.into_iter().filter(|m| match kind {
            Kind::Node => m.name.as_deref() == Some(NODE),
            _ => selected(m),
        });
        view.insert(kind, wanted.map(entry).collect());
    }
    if cidrs_served {
        let cidrs = server.objects::<ServiceCIDR>();
        let wanted = cidrs.iter().map(|o| &o.metadata).filter(|m| selected(m));
        view.insert(Kind::ServiceCidr, wanted.map(entry).collect());
    }
    view
}

/// The source under test, its event channel and the mirror built from its events.
struct Harness {
    server: FakeApiServer,
    rx: mpsc::Receiver<SourceEvent>,
    source: JoinHandle<()>,
    mirror: View,
    /// Every event received, in order.
    log: Vec<SourceEvent>,
    cidrs_served: bool,
}

impl Harness {
    /// Starts `run()` against `server` through the client `apiserver::client` builds for
    /// `--master <server URL>`.
    async fn start(server: FakeApiServer) -> Harness {
        let client = apiserver::client(None, Some(&server.url()))
            .await
            .expect("client for --master");
        let (tx, rx) = mpsc::channel(64);
        let source = tokio::spawn(apiserver::run(client, NODE.to_owned(), tx));
        Harness::attach(server, rx, source)
    }

    /// Watches a source that is already running.
    fn attach(
        server: FakeApiServer,
        rx: mpsc::Receiver<SourceEvent>,
        source: JoinHandle<()>,
    ) -> Harness {
        Harness {
            server,
            rx,
            source,
            mirror: View::new(),
            log: Vec::new(),
            cidrs_served: true,
        }
    }

    fn apply(&mut self, event: SourceEvent) {
        match &event {
            SourceEvent::Listed(kind, objects) => {
                let objects = objects.iter().map(|o| entry(object_meta(o))).collect();
                self.mirror.insert(*kind, objects);
            }
            SourceEvent::Applied(obj) => {
                let (key, rv) = entry(object_meta(obj));
                self.mirror.entry(obj.kind()).or_default().insert(key, rv);
            }
            SourceEvent::Deleted(obj) => {
                let key = key(object_meta(obj));
                self.mirror.entry(obj.kind()).or_default().remove(&key);
            }
        }
        self.log.push(event);
    }

    /// Consumes events until `done` holds for the mirror; false after [`WAIT`].
    async fn wait_for(&mut self, mut done: impl FnMut(&View) -> bool) -> bool {
        let deadline = Instant::now() + WAIT;
        while !done(&self.mirror) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(event)) => self.apply(event),
                Ok(None) => panic!("the source stopped sending events"),
                Err(_) => return false,
            }
        }
        true
    }

    /// Waits until the mirror equals what the server holds, failing with a diff if it
    /// does not within [`WAIT`].
    async fn converge(&mut self) {
        let want = expected(&self.server, self.cidrs_served);
        if !self.wait_for(|mirror| *mirror == want).await {
            assert_eq!(self.mirror, want, "mirror did not converge within {WAIT:?}");
        }
    }

    fn listed_count(&self, kind: Kind) -> usize {
        self.log
            .iter()
            .filter(|e| matches!(e, SourceEvent::Listed(k, _) if *k == kind))
            .count()
    }

    /// Every object name that appeared in any event so far.
    fn names_seen(&self) -> Vec<String> {
        let objects = self.log.iter().flat_map(|e| match e {
            SourceEvent::Listed(_, objs) => objs.iter().collect::<Vec<_>>(),
            SourceEvent::Applied(o) | SourceEvent::Deleted(o) => vec![o],
        });
        objects
            .map(|o| object_meta(o).name.clone().unwrap_or_default())
            .collect()
    }
}

/// The stored object of type `K` called `name`.
fn named<K>(server: &FakeApiServer, name: &str) -> K
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
{
    let found = server.objects::<K>().into_iter();
    found
        .into_iter()
        .find(|o| o.meta().name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no {name} on the server"))
}

/// How many list (not watch) requests for `path` the server got.
fn list_requests(server: &FakeApiServer, path: &str) -> usize {
    let prefix = format!("GET {path}?");
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with(&prefix) && !r.contains("watch=true"))
        .count()
}

/// A server with a few of everything, including objects kube-proxy must not see.
async fn populated_server() -> FakeApiServer {
    let server = FakeApiServer::start().await.expect("start fake API server");
    server.create(&service("web", &[])).unwrap();
    server.create(&service("db", &[("app", "db")])).unwrap();
    server
        .create(&service(
            "skip-other-proxy",
            &[(PROXY_NAME_LABEL, "cilium")],
        ))
        .unwrap();
    server.create(&slice("web-abc", &[])).unwrap();
    server.create(&slice("db-xyz", &[])).unwrap();
    server
        .create(&slice("skip-headless-1", &[(HEADLESS_LABEL, "")]))
        .unwrap();
    server.create(&node(NODE)).unwrap();
    server.create(&node("node-b")).unwrap();
    server
        .create(&service_cidr("kubernetes", "10.96.0.0/16"))
        .unwrap();
    server
}

#[tokio::test]
async fn mirrors_creates_updates_and_deletes() {
    let mut h = Harness::start(populated_server().await).await;
    h.converge().await;

    h.server.create(&service("api", &[])).unwrap();
    h.server.create(&slice("api-1", &[])).unwrap();
    let mut web = named::<Service>(&h.server, "web");
    web.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.20".to_owned());
    h.server.update(&web).unwrap();
    h.server
        .delete::<EndpointSlice>("default", "db-xyz")
        .unwrap();
    h.server
        .create(&service_cidr("secondary", "10.97.0.0/16"))
        .unwrap();
    let mut ours = node(NODE);
    ours.spec.as_mut().unwrap().pod_cidr = Some("10.244.9.0/24".to_owned());
    h.server.update(&ours).unwrap();
    h.converge().await;

    // The update is seen with its content, not only its resourceVersion.
    let latest_web = h.log.iter().rev().find_map(|e| match e {
        SourceEvent::Applied(Object::Service(s)) if s.metadata.name.as_deref() == Some("web") => {
            Some(s.clone())
        }
        _ => None,
    });
    let cluster_ip = latest_web.and_then(|s| s.spec.and_then(|s| s.cluster_ip));
    assert_eq!(cluster_ip.as_deref(), Some("10.96.0.20"));
}

#[tokio::test]
async fn first_lists_come_before_any_applied() {
    let server = populated_server().await;
    let mut h = Harness::start(server).await;
    // Race changes against the initial lists: each lands in a list or after it.
    for i in 0..20 {
        h.server
            .create(&service(&format!("race-{i}"), &[]))
            .unwrap();
        h.server.create(&slice(&format!("race-{i}"), &[])).unwrap();
    }
    h.converge().await;
    for kind in [Kind::Service, Kind::EndpointSlice] {
        let first = h.log.iter().find(|e| match e {
            SourceEvent::Listed(k, _) => *k == kind,
            SourceEvent::Applied(o) | SourceEvent::Deleted(o) => o.kind() == kind,
        });
        assert!(
            matches!(first, Some(SourceEvent::Listed(..))),
            "first {kind:?} event is not Listed: {first:?}"
        );
    }
}

#[tokio::test]
async fn resumes_dropped_watches_from_the_last_resource_version() {
    let mut h = Harness::start(populated_server().await).await;
    h.converge().await;
    let lists_before = list_requests(&h.server, "/api/v1/services");
    let listed_before = h.listed_count(Kind::Service);

    // Disconnect everyone and change things while they cannot reconnect.
    h.server.pause();
    h.server.drop_watches();
    h.server.create(&service("while-away", &[])).unwrap();
    h.server.delete::<Service>("default", "db").unwrap();
    h.server.create(&slice("while-away-1", &[])).unwrap();
    h.server.delete::<Node>("", NODE).unwrap();
    h.server.create(&node(NODE)).unwrap();
    h.server.resume();
    h.converge().await;

    // Caught up by resuming the watch from history, not by listing again.
    assert_eq!(list_requests(&h.server, "/api/v1/services"), lists_before);
    assert_eq!(h.listed_count(Kind::Service), listed_before);
    let deleted_db = h.log.iter().any(|e| {
        matches!(e, SourceEvent::Deleted(Object::Service(s)) if s.metadata.name.as_deref() == Some("db"))
    });
    assert!(
        deleted_db,
        "the delete made while disconnected arrived as Deleted"
    );
}

#[tokio::test]
async fn relists_after_410_and_leaves_no_phantoms() {
    let mut h = Harness::start(populated_server().await).await;
    h.converge().await;
    let lists_before = list_requests(&h.server, "/api/v1/services");
    let listed_before = h.listed_count(Kind::Service);

    // Deletes made while disconnected, then the history that would replay them is gone.
    h.server.pause();
    h.server.drop_watches();
    h.server.delete::<Service>("default", "web").unwrap();
    h.server
        .delete::<EndpointSlice>("default", "web-abc")
        .unwrap();
    h.server.delete::<ServiceCIDR>("", "kubernetes").unwrap();
    h.server.create(&service("after-gone", &[])).unwrap();
    h.server.expire_history();
    h.server.resume();
    h.converge().await;

    assert!(list_requests(&h.server, "/api/v1/services") > lists_before);
    assert!(h.listed_count(Kind::Service) > listed_before);
    // Nothing told the source about the deletes but the relist itself.
    let deletes = h
        .log
        .iter()
        .filter(|e| matches!(e, SourceEvent::Deleted(_)))
        .count();
    assert_eq!(deletes, 0);
}

#[tokio::test]
async fn catches_up_after_a_pause() {
    let mut h = Harness::start(populated_server().await).await;
    h.converge().await;

    h.server.pause();
    h.server.create(&service("during-pause", &[])).unwrap();
    h.server
        .delete::<EndpointSlice>("default", "db-xyz")
        .unwrap();
    h.server.create(&slice("during-pause-1", &[])).unwrap();
    // A paused server delivers nothing.
    let early = tokio::time::timeout(Duration::from_millis(300), h.rx.recv()).await;
    assert!(early.is_err(), "event delivered while paused: {early:?}");
    h.server.resume();
    h.converge().await;
}

#[tokio::test]
async fn objects_for_other_proxies_and_headless_slices_never_appear() {
    let mut h = Harness::start(populated_server().await).await;
    h.converge().await;

    h.server
        .create(&service("skip-new", &[(PROXY_NAME_LABEL, "other")]))
        .unwrap();
    h.server
        .create(&slice("skip-new-1", &[(HEADLESS_LABEL, "")]))
        .unwrap();
    h.converge().await;

    // A Service taken over by another proxy disappears; handed back, it returns.
    let mut web = named::<Service>(&h.server, "web");
    web.metadata.resource_version = None;
    web.metadata.labels = Some([(PROXY_NAME_LABEL.to_owned(), "other".to_owned())].into());
    h.server.update(&web).unwrap();
    h.converge().await;
    assert!(!h.mirror[&Kind::Service].contains_key("default/web"));
    web.metadata.labels = None;
    h.server.update(&web).unwrap();
    h.converge().await;
    assert!(h.mirror[&Kind::Service].contains_key("default/web"));

    let leaked: Vec<String> = h
        .names_seen()
        .into_iter()
        .filter(|n| n.starts_with("skip-"))
        .collect();
    assert!(
        leaked.is_empty(),
        "excluded objects reached the source: {leaked:?}"
    );
}

#[tokio::test]
async fn only_our_node_is_watched() {
    let mut h = Harness::start(populated_server().await).await;
    h.converge().await;
    h.server.create(&node("node-c")).unwrap();
    h.server.update(&node("node-b")).unwrap();
    h.server.delete::<Node>("", "node-c").unwrap();
    h.server.update(&node(NODE)).unwrap();
    h.converge().await;

    assert!(h
        .names_seen()
        .iter()
        .all(|n| n != "node-b" && n != "node-c"));
    let node_watches = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("GET /api/v1/nodes?"))
        .all(|r| r.contains("fieldSelector=metadata.name%3Dnode-a"));
    assert!(node_watches, "every Node request selects our node");
}

#[tokio::test]
async fn works_without_servicecidrs() {
    let server = populated_server().await;
    server.serve_servicecidrs(false);
    let mut h = Harness::start(server).await;
    h.cidrs_served = false;
    h.converge().await;

    // Discovery said no, so nothing was ever asked or sent about ServiceCIDRs.
    let requests = h.server.requests();
    assert!(requests
        .iter()
        .any(|r| r == "GET /apis/networking.k8s.io/v1"));
    assert!(!requests.iter().any(|r| r.contains("servicecidrs")));
    assert!(!h.log.iter().any(|e| match e {
        SourceEvent::Listed(kind, _) => *kind == Kind::ServiceCidr,
        SourceEvent::Applied(o) | SourceEvent::Deleted(o) => o.kind() == Kind::ServiceCidr,
    }));
}

#[tokio::test]
async fn pages_large_lists() {
    let server = FakeApiServer::start().await.expect("start fake API server");
    for i in 0..1200 {
        server
            .create(&service(&format!("svc-{i:04}"), &[]))
            .unwrap();
        server
            .create(&slice(&format!("svc-{i:04}-a"), &[]))
            .unwrap();
    }
    server.create(&node(NODE)).unwrap();
    let mut h = Harness::start(server).await;
    h.converge().await;
    assert_eq!(h.mirror[&Kind::Service].len(), 1200);
    // 500 per page, as client-go: three pages each.
    assert_eq!(list_requests(&h.server, "/api/v1/services"), 3);
    assert_eq!(
        list_requests(&h.server, "/apis/discovery.k8s.io/v1/endpointslices"),
        3
    );
}

#[tokio::test]
async fn stops_when_the_receiver_is_dropped() {
    let h = Harness::start(populated_server().await).await;
    let Harness { rx, source, .. } = h;
    drop(rx);
    tokio::time::timeout(WAIT, source)
        .await
        .expect("run() returns once nobody listens")
        .expect("run() does not panic");
}

// ---------------------------------------------------------------------------------------
// The model built from these events

fn backed_service(name: &str, cluster_ip: &str) -> Service {
    let mut svc = service(name, &[]);
    let spec = svc.spec.as_mut().expect("service() sets a spec");
    spec.cluster_ip = Some(cluster_ip.to_owned());
    spec.cluster_ips = Some(vec![cluster_ip.to_owned()]);
    spec.ports.as_mut().expect("service() sets ports")[0].target_port =
        Some(IntOrString::Int(8080));
    svc
}

fn backed_slice(name: &str, service_name: &str, addresses: &[&str]) -> EndpointSlice {
    let mut slice = slice(name, &[("kubernetes.io/service-name", service_name)]);
    slice.endpoints = addresses
        .iter()
        .map(|address| Endpoint {
            addresses: vec![address.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..EndpointConditions::default()
            }),
            node_name: Some(NODE.to_owned()),
            ..Endpoint::default()
        })
        .collect();
    slice.ports = Some(vec![EndpointPort {
        // The EndpointSlice controller names an unnamed Service port "".
        name: Some(String::new()),
        port: Some(8080),
        protocol: Some("TCP".to_owned()),
        ..EndpointPort::default()
    }]);
    slice
}

/// Replays everything a harness received into a fresh model builder.
fn model_from(log: &[SourceEvent]) -> ModelBuilder {
    let mut builder = ModelBuilder::new(NODE.to_owned(), Vec::new());
    for event in log {
        builder.handle(event.clone());
    }
    builder
}

#[tokio::test]
async fn model_from_events_matches_a_fresh_list_after_drops_and_410() {
    let server = FakeApiServer::start().await.expect("start fake API server");
    server.create(&node(NODE)).unwrap();
    for (i, name) in ["alpha", "beta", "gamma"].into_iter().enumerate() {
        server
            .create(&backed_service(name, &format!("10.96.1.{i}")))
            .unwrap();
        let address = format!("10.244.0.{}", 10 + i);
        server
            .create(&backed_slice(&format!("{name}-1"), name, &[&address]))
            .unwrap();
    }
    let mut h = Harness::start(server).await;
    h.converge().await;

    // Changes while disconnected, caught up from history.
    h.server.pause();
    h.server.drop_watches();
    let mut alpha = named::<EndpointSlice>(&h.server, "alpha-1");
    alpha = EndpointSlice {
        endpoints: backed_slice("alpha-1", "alpha", &["10.244.0.10", "10.244.0.20"]).endpoints,
        ..alpha
    };
    h.server.update(&alpha).unwrap();
    h.server.resume();
    h.converge().await;

    // Deletes while disconnected, history gone: only the relist can remove them.
    h.server.pause();
    h.server.drop_watches();
    h.server.delete::<Service>("default", "beta").unwrap();
    h.server
        .delete::<EndpointSlice>("default", "beta-1")
        .unwrap();
    h.server
        .delete::<EndpointSlice>("default", "gamma-1")
        .unwrap();
    h.server
        .create(&backed_service("delta", "10.96.1.9"))
        .unwrap();
    h.server
        .create(&backed_slice("delta-1", "delta", &["10.244.0.30"]))
        .unwrap();
    h.server.expire_history();
    h.server.resume();
    h.converge().await;

    let disturbed = model_from(&h.log);
    let mut fresh_harness = Harness::start(h.server).await;
    fresh_harness.converge().await;
    let fresh = model_from(&fresh_harness.log);

    assert!(disturbed.is_synced() && fresh.is_synced());
    assert_eq!(disturbed.state(), fresh.state());
    let names: Vec<&str> = fresh
        .state()
        .v4
        .keys()
        .map(|port| port.name.as_str())
        .collect();
    assert_eq!(names, ["alpha", "delta", "gamma"]);
    let endpoints = |name: &str| {
        let (_, entry) = fresh
            .state()
            .v4
            .iter()
            .find(|(port, _)| port.name == name)
            .expect("service is in the model");
        entry.endpoints.len()
    };
    assert_eq!(
        (endpoints("alpha"), endpoints("delta"), endpoints("gamma")),
        (2, 1, 0)
    );
}

// ---------------------------------------------------------------------------------------
// client()

/// Writes a kubeconfig for `server` (none if empty) and an anonymous user.
fn write_kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    let server = if server.is_empty() {
        "{}".to_owned()
    } else {
        format!("\n    server: {server}")
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {server}\n\
         users:\n- name: me\n  user: {{}}\ncontexts:\n- name: ctx\n  context:\n    cluster: fake\n    user: me\n\
         current-context: ctx\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

async fn service_names(client: kube::Client) -> Vec<String> {
    let services = Api::<Service>::all(client)
        .list(&ListParams::default())
        .await
        .expect("list services");
    services
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect()
}

#[tokio::test]
async fn client_uses_kubeconfig_and_master_like_upstream() {
    let server = populated_server().await;
    let want = ["db", "skip-other-proxy", "web"];
    let dir = tempfile::tempdir().expect("temp dir");

    let path = write_kubeconfig(dir.path(), &server.url());
    let client = apiserver::client(Some(&path), None).await.unwrap();
    assert_eq!(service_names(client).await, want);

    // --master overrides the kubeconfig's server.
    let path = write_kubeconfig(dir.path(), "http://127.0.0.1:9");
    let client = apiserver::client(Some(&path), Some(&server.url()))
        .await
        .unwrap();
    assert_eq!(service_names(client).await, want);

    // With --master the kubeconfig need not name a server at all.
    let path = write_kubeconfig(dir.path(), "");
    let client = apiserver::client(Some(&path), Some(&server.url()))
        .await
        .unwrap();
    assert_eq!(service_names(client).await, want);

    // A bare host:port without TLS settings means plain http, as in client-go.
    let bare = server.url().trim_start_matches("http://").to_owned();
    let client = apiserver::client(None, Some(&bare)).await.unwrap();
    assert_eq!(service_names(client).await, want);
}

#[tokio::test]
async fn client_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-kubeconfig");
    let Err(err) = apiserver::client(Some(&missing), None).await else {
        panic!("a missing kubeconfig is an error");
    };
    assert!(
        err.to_string().contains("no-such-kubeconfig"),
        "error does not name the file: {err}"
    );

    let Err(err) = apiserver::client(None, Some("http://[::1")).await else {
        panic!("an invalid --master is an error");
    };
    assert!(err.to_string().contains("--master"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The fake itself keeps the protocol's promises

#[tokio::test]
async fn fake_pages_from_one_snapshot_and_expires_old_ones() {
    let server = FakeApiServer::start().await.expect("start fake API server");
    for name in ["a", "b", "c", "d", "e"] {
        server.create(&service(name, &[])).unwrap();
    }
    let api = Api::<Service>::all(server.client());
    let names = |list: &kube::core::ObjectList<Service>| -> Vec<String> {
        list.items
            .iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect()
    };
    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first), ["a", "b"]);
    let token = first.metadata.continue_.clone().expect("more pages");

    // Changes after the first page do not show in later pages of the same list.
    server.delete::<Service>("default", "c").unwrap();
    server.create(&service("bb", &[])).unwrap();
    let second = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&second), ["c", "d"]);
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );

    // Once the history is compacted the snapshot is gone: 410, as from etcd.
    server.expire_history();
    let token = second.metadata.continue_.clone().expect("more pages");
    let gone = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap_err();
    assert!(
        matches!(&gone, kube::Error::Api(s) if s.code == 410),
        "{gone:?}"
    );
}

#[tokio::test]
async fn fake_answers_a_watch_from_expired_history_with_410() {
    let server = FakeApiServer::start().await.expect("start fake API server");
    server.create(&service("a", &[])).unwrap();
    let old = server.resource_version().to_string();
    server.create(&service("b", &[])).unwrap();
    let api = Api::<Service>::all(server.client());

    // Still in history: the watch replays what came after `old`.
    let mut stream = api
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    let first = stream.next().await.expect("an event").unwrap();
    assert!(matches!(&first, WatchEvent::Added(s) if s.metadata.name.as_deref() == Some("b")));

    server.expire_history();
    let mut stream = api
        .watch(&WatchParams::default(), &old)
        .await
        .unwrap()
        .boxed();
    let first = stream.next().await.expect("an event").unwrap();
    assert!(
        matches!(&first, WatchEvent::Error(s) if s.code == 410),
        "{first:?}"
    );
}

#[tokio::test]
async fn fake_rejects_selectors_it_cannot_evaluate() {
    let server = FakeApiServer::start().await.expect("start fake API server");
    let api = Api::<Service>::all(server.client());
    for params in [
        ListParams::default().labels("a b"),
        ListParams::default().fields("spec.clusterIP=10.0.0.1"),
    ] {
        let err = api.list(&params).await.unwrap_err();
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 400),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn waits_out_an_api_server_that_comes_up_late() {
    // Until the server is up, its port hangs up on every connection.
    let broken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = broken.local_addr().expect("bound address");
    let client = apiserver::client(None, Some(&format!("http://{addr}")))
        .await
        .expect("client for --master");
    let (tx, rx) = mpsc::channel(64);
    let source = tokio::spawn(apiserver::run(client, NODE.to_owned(), tx));

    // Four watchers and the ServiceCIDR discovery try once each; more means retries.
    let deadline = Instant::now() + WAIT;
    for _ in 0..7 {
        let accepted = tokio::time::timeout_at(deadline, broken.accept()).await;
        let (connection, _) = accepted
            .expect("the source keeps retrying")
            .expect("accept");
        drop(connection);
    }
    drop(broken);

    let server = FakeApiServer::start_at(addr)
        .await
        .expect("bind the same port");
    server.create(&service("web", &[])).unwrap();
    server
        .create(&service("skip", &[(PROXY_NAME_LABEL, "x")]))
        .unwrap();
    server.create(&node(NODE)).unwrap();
    Harness::attach(server, rx, source).converge().await;
}
