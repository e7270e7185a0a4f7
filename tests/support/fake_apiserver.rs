//! A fake kube-apiserver that speaks real HTTP/1.1 on `127.0.0.1:<random port>`.
//!
//! It serves what kube-proxy reads — Services, EndpointSlices, Nodes and ServiceCIDRs —
//! with the list/watch protocol of the real server, so a real `kube::Client` (or the real
//! `kube-proxy` binary via `--master`) can be pointed at [`FakeApiServer::url`]:
//!
//! * one global, monotonically increasing resourceVersion; every change bumps it and is
//!   kept in an event history;
//! * lists carry `metadata.resourceVersion` and page with `limit`/`continue` over a
//!   consistent snapshot (reconstructed from the history, like etcd's MVCC);
//! * watches (`?watch=true&resourceVersion=N`) really resume after `N` from the history,
//!   stream newline-delimited JSON events (ADDED, MODIFIED, DELETED, BOOKMARK) and answer
//!   an `N` older than the retained history with an ERROR event carrying a `410 Gone`
//!   Status, exactly as the real server does;
//! * label selectors (`key`, `!key`, `key=value`, `key==value`, `key!=value`,
//!   `key in (a,b)`, `key notin (a,b)`) and the `metadata.name` / `metadata.namespace`
//!   field selectors are evaluated for real, including on watches (an object that starts
//!   or stops matching is ADDED or DELETED, as the watch cache does);
//! * the discovery documents (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/<g>/<v>`);
//! * `events.k8s.io/v1` Events written by the client: created with POST and patched
//!   (JSON merge patch, as kube's recorder counts repeats) with PATCH, kept as sent and
//!   read back by tests with [`FakeApiServer::events`]. They are write-only for clients,
//!   which is all kube-proxy needs.
//!
//! Tests drive it with [`FakeApiServer::create`]/[`update`](FakeApiServer::update)/
//! [`delete`](FakeApiServer::delete) and disturb it with
//! [`drop_watches`](FakeApiServer::drop_watches),
//! [`expire_history`](FakeApiServer::expire_history),
//! [`pause`](FakeApiServer::pause)/[`resume`](FakeApiServer::resume) and
//! [`serve_servicecidrs`](FakeApiServer::serve_servicecidrs).

// Shared by several test crates; each uses only part of the control API.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::events::v1::Event;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How often open watches that asked for bookmarks get one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);
/// The watch timeout when the client sends no `timeoutSeconds` (the real server picks
/// something between 30 and 60 minutes).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// Watch lines buffered per stream before the pump waits for the client to read.
const WATCH_BUFFER: usize = 1024;

/// A resource type the fake serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
    ServiceCidrs,
}

/// Where and how a [`Resource`] is served.
struct ResourceInfo {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
}

impl Resource {
    const ALL: [Resource; 4] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Nodes,
        Resource::ServiceCidrs,
    ];

    fn info(self) -> &'static ResourceInfo {
        match self {
            Resource::Services => &ResourceInfo {
                group: "",
                version: "v1",
                plural: "services",
                kind: "Service",
                namespaced: true,
            },
            Resource::EndpointSlices => &ResourceInfo {
                group: "discovery.k8s.io",
                version: "v1",
                plural: "endpointslices",
                kind: "EndpointSlice",
                namespaced: true,
            },
            Resource::Nodes => &ResourceInfo {
                group: "",
                version: "v1",
                plural: "nodes",
                kind: "Node",
                namespaced: false,
            },
            Resource::ServiceCidrs => &ResourceInfo {
                group: "networking.k8s.io",
                version: "v1",
                plural: "servicecidrs",
                kind: "ServiceCIDR",
                namespaced: false,
            },
        }
    }

    /// `v1` for the core group, `<group>/<version>` otherwise.
    fn api_version(self) -> String {
        group_version(self.info().group, self.info().version)
    }

    /// The resource a Rust type (k8s-openapi) stands for.
    fn of<K: kube::Resource<DynamicType = ()>>() -> Result<Resource, FakeError> {
        Self::lookup(&K::group(&()), &K::version(&()), &K::plural(&()))
            .ok_or_else(|| FakeError::UnknownType(K::kind(&()).into_owned()))
    }

    fn lookup(group: &str, version: &str, plural: &str) -> Option<Resource> {
        Self::ALL.into_iter().find(|r| {
            let info = r.info();
            info.group == group && info.version == version && info.plural == plural
        })
    }
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// Why a test's change to the fake's objects was refused.
#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error("the fake API server does not serve {0}")]
    UnknownType(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{resource:?} {key} already exists")]
    AlreadyExists { resource: Resource, key: String },
    #[error("{resource:?} {key} not found")]
    NotFound { resource: Resource, key: String },
    #[error("{resource:?} {key}: resourceVersion {given} is stale (current {current})")]
    Conflict {
        resource: Resource,
        key: String,
        given: String,
        current: String,
    },
}

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects. Ordered like
/// etcd keys, which is the order lists come in.
type Key = (String, String);

fn key_display((namespace, name): &Key) -> String {
    if namespace.is_empty() {
        name.clone()
    } else {
        format!("{namespace}/{name}")
    }
}

/// One change to one object, as kept in the event history.
struct Change {
    rv: u64,
    resource: Resource,
    key: Key,
    old: Option<Value>,
    new: Option<Value>,
}

/// Everything the fake knows, behind one lock.
struct Store {
    /// The resourceVersion of the latest change.
    rv: u64,
    objects: BTreeMap<Resource, BTreeMap<Key, Value>>,
    /// Changes with `rv > compacted`, oldest first.
    history: VecDeque<Change>,
    /// Watches and list continuations from an RV older than this get `410 Gone`.
    compacted: u64,
    serve_servicecidrs: bool,
    /// `METHOD path?query` of every request, in arrival order.
    requests: Vec<String>,
    next_uid: u64,
    /// `events.k8s.io/v1` Events clients created, as last patched.
    events: BTreeMap<Key, Value>,
}

/// What open watch streams wait on.
#[derive(Debug, Clone, Copy, Default)]
struct Tick {
    /// Bumped by every change.
    rv: u64,
    /// Bumped by [`FakeApiServer::drop_watches`]; a stream opened at another value closes.
    drops: u64,
}

struct Shared {
    store: Mutex<Store>,
    tick: watch::Sender<Tick>,
    paused: watch::Sender<bool>,
    open_watches: AtomicUsize,
    addr: SocketAddr,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        // A test that panicked while holding the lock must not hide its own failure
        // behind a poison error in every other request.
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn wait_unpaused(&self) {
        let mut paused = self.paused.subscribe();
        // Err only when the server is gone, and then there is nothing to wait for.
        let _ = paused.wait_for(|paused| !paused).await;
    }
}

/// A running fake API server. Dropping it stops it and closes every connection.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FakeApiServer {
    /// Starts serving on `127.0.0.1` at a free port, with no objects, at resourceVersion 1
    /// and serving ServiceCIDRs (as a v1.33 server does).
    pub async fn start() -> std::io::Result<FakeApiServer> {
        Self::start_at("127.0.0.1:0".parse().expect("valid socket address")).await
    }

    /// Like [`start`](FakeApiServer::start), on a given address: e.g. one a client was
    /// already told about, to play an API server that comes up late.
    pub async fn start_at(addr: SocketAddr) -> std::io::Result<FakeApiServer> {
        let listener = TcpListener::bind(addr).await?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                rv: 1,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                compacted: 1,
                serve_servicecidrs: true,
                requests: Vec::new(),
                next_uid: 1,
                events: BTreeMap::new(),
            }),
            tick: watch::Sender::new(Tick::default()),
            paused: watch::Sender::new(false),
            open_watches: AtomicUsize::new(0),
            addr: listener.local_addr()?,
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(FakeApiServer { shared, accept })
    }

    /// The server's base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A `kube::Client` talking to this server.
    pub fn client(&self) -> kube::Client {
        let url = self.url().parse().expect("the fake's own URL is valid");
        kube::Client::try_from(kube::Config::new(url)).expect("plain-http client config")
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv
    }

    /// Creates `obj`, returning it as stored (resourceVersion, uid, kind, apiVersion set).
    pub fn create<K>(&self, obj: &K) -> Result<K, FakeError>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let (resource, key, value) = prepare(obj)?;
        let mut store = self.shared.store();
        if store.get(resource, &key).is_some() {
            return Err(FakeError::AlreadyExists {
                resource,
                key: key_display(&key),
            });
        }
        let uid = store.next_uid;
        store.next_uid += 1;
        let mut value = value;
        let meta = &mut value["metadata"];
        if meta.get("uid").is_none_or(Value::is_null) {
            meta["uid"] = json!(format!("00000000-0000-4000-8000-{uid:012x}"));
        }
        let stored = store.commit(resource, key, Some(value));
        self.notify(&store);
        decode(stored)
    }

    /// Replaces an existing object. If `obj` carries a resourceVersion it must be the
    /// current one (optimistic concurrency, as on the real server).
    pub fn update<K>(&self, obj: &K) -> Result<K, FakeError>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let (resource, key, mut value) = prepare(obj)?;
        let mut store = self.shared.store();
        let current = store
            .get(resource, &key)
            .ok_or_else(|| FakeError::NotFound {
                resource,
                key: key_display(&key),
            })?;
        let current_rv = current["metadata"]["resourceVersion"].clone();
        let given = &value["metadata"]["resourceVersion"];
        if !given.is_null() && *given != current_rv {
            return Err(FakeError::Conflict {
                resource,
                key: key_display(&key),
                given: given.to_string(),
                current: current_rv.to_string(),
            });
        }
        value["metadata"]["uid"] = current["metadata"]["uid"].clone();
        let stored = store.commit(resource, key, Some(value));
        self.notify(&store);
        decode(stored)
    }

    /// Deletes an object; `namespace` is ignored for cluster-scoped kinds.
    pub fn delete<K>(&self, namespace: &str, name: &str) -> Result<(), FakeError>
    where
        K: kube::Resource<DynamicType = ()>,
    {
        let resource = Resource::of::<K>()?;
        let namespace = if resource.info().namespaced {
            namespace
        } else {
            ""
        };
        let key = (namespace.to_owned(), name.to_owned());
        let mut store = self.shared.store();
        if store.get(resource, &key).is_none() {
            return Err(FakeError::NotFound {
                resource,
                key: key_display(&key),
            });
        }
        store.commit(resource, key, None);
        self.notify(&store);
        Ok(())
    }

    /// Every stored object of type `K`, ignoring all selectors.
    pub fn objects<K>(&self) -> Vec<K>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let Ok(resource) = Resource::of::<K>() else {
            return Vec::new();
        };
        let store = self.shared.store();
        store
            .objects
            .get(&resource)
            .into_iter()
            .flat_map(BTreeMap::values)
            .map(|value| decode(value.clone()).expect("stored objects were encoded from K"))
            .collect()
    }

    /// Closes every open watch stream (as an API-server restart or a load balancer would).
    /// Clients reconnect from the last resourceVersion they saw.
    pub fn drop_watches(&self) {
        self.shared.tick.send_modify(|tick| tick.drops += 1);
    }

    /// Forgets the event history (as etcd compaction does): from now on a watch or list
    /// continuation from any resourceVersion older than the current one gets `410 Gone`.
    pub fn expire_history(&self) {
        let mut store = self.shared.store();
        store.history.clear();
        store.compacted = store.rv;
    }

    /// Holds every new request, and event delivery on open watches, until [`resume`].
    ///
    /// [`resume`]: FakeApiServer::resume
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Answers everything held since [`pause`](FakeApiServer::pause), against the
    /// state at the time of answering.
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Whether `networking.k8s.io/v1` serves `servicecidrs` (discovery, list and watch);
    /// off, the fake behaves like a server older than v1.33. Streams already open stay so.
    pub fn serve_servicecidrs(&self, serve: bool) {
        self.shared.store().serve_servicecidrs = serve;
    }

    /// `METHOD path?query` of every request received so far, oldest first.
    pub fn requests(&self) -> Vec<String> {
        self.shared.store().requests.clone()
    }

    /// Every Event clients created, in key order, as last patched.
    pub fn events(&self) -> Vec<Event> {
        let store = self.shared.store();
        store
            .events
            .values()
            .map(|value| decode(value.clone()).expect("stored Events decoded when written"))
            .collect()
    }

    /// How many watch streams are open right now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::SeqCst)
    }

    fn notify(&self, store: &Store) {
        let rv = store.rv;
        self.shared.tick.send_modify(|tick| tick.rv = rv);
    }
}

/// Validates a test's object and encodes it with `kind` and `apiVersion` filled in.
fn prepare<K>(obj: &K) -> Result<(Resource, Key, Value), FakeError>
where
    K: kube::Resource<DynamicType = ()> + Serialize,
{
    let resource = Resource::of::<K>()?;
    let info = resource.info();
    let meta = obj.meta();
    let name =
        meta.name.clone().filter(|n| !n.is_empty()).ok_or_else(|| {
            FakeError::Invalid(format!("{}: metadata.name is required", info.kind))
        })?;
    let namespace = match (info.namespaced, meta.namespace.as_deref()) {
        (true, Some(ns)) if !ns.is_empty() => ns.to_owned(),
        (true, _) => {
            return Err(FakeError::Invalid(format!(
                "{} {name}: metadata.namespace is required",
                info.kind
            )))
        }
        (false, None | Some("")) => String::new(),
        (false, Some(ns)) => {
            return Err(FakeError::Invalid(format!(
                "{} {name} is cluster-scoped but has metadata.namespace {ns}",
                info.kind
            )))
        }
    };
    let mut value = serde_json::to_value(obj)
        .map_err(|err| FakeError::Invalid(format!("{} {name}: {err}", info.kind)))?;
    value["kind"] = json!(info.kind);
    value["apiVersion"] = json!(resource.api_version());
    Ok((resource, (namespace, name), value))
}

fn decode<K: DeserializeOwned>(value: Value) -> Result<K, FakeError> {
    serde_json::from_value(value).map_err(|err| FakeError::Invalid(err.to_string()))
}

impl Store {
    fn get(&self, resource: Resource, key: &Key) -> Option<&Value> {
        self.objects.get(&resource)?.get(key)
    }

    /// Applies one change at a new resourceVersion and records it; returns what is stored
    /// (for a delete, the object as deleted).
    fn commit(&mut self, resource: Resource, key: Key, mut new: Option<Value>) -> Value {
        self.rv += 1;
        let rv = self.rv;
        if let Some(new) = &mut new {
            new["metadata"]["resourceVersion"] = json!(rv.to_string());
        }
        let objects = self.objects.entry(resource).or_default();
        let old = match &new {
            Some(new) => objects.insert(key.clone(), new.clone()),
            None => objects.remove(&key),
        };
        let result = new.clone().or_else(|| old.clone()).unwrap_or(Value::Null);
        self.history.push_back(Change {
            rv,
            resource,
            key,
            old,
            new,
        });
        result
    }

    /// The objects of `resource` as they were at `rv`, undoing later changes.
    fn snapshot(
        &self,
        resource: Resource,
        rv: u64,
    ) -> Result<Cow<'_, BTreeMap<Key, Value>>, ApiError> {
        static EMPTY: BTreeMap<Key, Value> = BTreeMap::new();
        let current = self.objects.get(&resource).unwrap_or(&EMPTY);
        if rv >= self.rv {
            return Ok(Cow::Borrowed(current));
        }
        if rv < self.compacted {
            return Err(ApiError::expired(format!(
                "resourceVersion {rv} is older than the oldest retained ({})",
                self.compacted
            )));
        }
        let mut past = current.clone();
        for change in self.history.iter().rev().take_while(|c| c.rv > rv) {
            if change.resource != resource {
                continue;
            }
            match &change.old {
                Some(old) => past.insert(change.key.clone(), old.clone()),
                None => past.remove(&change.key),
            };
        }
        Ok(Cow::Owned(past))
    }

    /// The watch events for `filter` after `cursor`, and the RV they bring the watch to.
    fn events_since(&self, filter: &Filter, cursor: u64) -> Result<(Vec<Bytes>, u64), Bytes> {
        if cursor < self.compacted {
            let status = ApiError::expired(format!(
                "too old resource version: {cursor} ({})",
                self.compacted
            ));
            return Err(watch_line("ERROR", &status.to_status()));
        }
        let start = self.history.partition_point(|c| c.rv <= cursor);
        let lines = self
            .history
            .range(start..)
            .filter(|c| c.resource == filter.resource)
            .filter_map(|c| watch_event(c, filter))
            .collect();
        Ok((lines, self.rv))
    }
}

/// The event a watch with `filter` sees for `change`, if any: an object that starts
/// matching is ADDED, one that stops matching is DELETED, as the watch cache does.
fn watch_event(change: &Change, filter: &Filter) -> Option<Bytes> {
    let old = change
        .old
        .as_ref()
        .filter(|o| filter.matches(&change.key, o));
    let new = change
        .new
        .as_ref()
        .filter(|n| filter.matches(&change.key, n));
    match (old, new) {
        (Some(_), Some(new)) => Some(watch_line("MODIFIED", new)),
        (None, Some(new)) => Some(watch_line("ADDED", new)),
        (Some(old), None) => {
            // The object as it was, at the resourceVersion of its deletion.
            let mut gone = old.clone();
            gone["metadata"]["resourceVersion"] = json!(change.rv.to_string());
            Some(watch_line("DELETED", &gone))
        }
        (None, None) => None,
    }
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({ "type": kind, "object": object }))
        .expect("JSON values always serialize");
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark_line(resource: Resource, rv: u64, annotations: Value) -> Bytes {
    let info = resource.info();
    watch_line(
        "BOOKMARK",
        &json!({
            "kind": info.kind,
            "apiVersion": resource.api_version(),
            "metadata": { "resourceVersion": rv.to_string(), "annotations": annotations },
        }),
    )
}

// ---------------------------------------------------------------------------------------
// HTTP

type ResBody = UnsyncBoxBody<Bytes, Infallible>;

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    // Owning the connections here means aborting this task closes all of them.
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                eprintln!("fake apiserver: accept failed: {err}");
                continue;
            }
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| handle(shared.clone(), req));
            // Errors here are clients hanging up, which is their right.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, Infallible> {
    shared.wait_unpaused().await;
    shared
        .store()
        .requests
        .push(format!("{} {}", req.method(), req.uri()));
    let response = match *req.method() {
        Method::GET => {
            let query = Query::parse(req.uri().query().unwrap_or(""));
            route(&shared, req.uri().path(), &query)
        }
        Method::POST | Method::PATCH => write_event(&shared, req).await,
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!(
                "the fake API server only serves GET, and POST/PATCH of Events, not {}",
                req.method()
            ),
        )),
    };
    Ok(response.unwrap_or_else(|err| err.response()))
}

/// Creates (POST) or merge-patches (PATCH) an `events.k8s.io/v1` Event, answering as
/// the real server does: 201 or 200 with the stored object, 409 for a name taken, 404
/// for a patch of a missing Event. Events are not watchable here, so they take no part
/// in the resourceVersion history.
async fn write_event(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, ApiError> {
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let is_patch = req.method() == Method::PATCH;
    let (namespace, name) = match segments.as_slice() {
        ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"] if !is_patch => (*ns, None),
        ["apis", "events.k8s.io", "v1", "namespaces", ns, "events", name] if is_patch => {
            (*ns, Some(*name))
        }
        _ => {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!("the fake API server writes only Events, not {path}"),
            ))
        }
    };
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?
        .to_bytes();
    let sent: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let mut store = shared.store();
    let (code, stored) = match name {
        None => (
            StatusCode::CREATED,
            create_event(&mut store, namespace, sent)?,
        ),
        Some(name) => (
            StatusCode::OK,
            patch_event(&mut store, namespace, name, &sent)?,
        ),
    };
    Ok(json_response_with(code, &stored))
}

fn create_event(store: &mut Store, namespace: &str, mut event: Value) -> Result<Value, ApiError> {
    let name = event["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::new(422, "Invalid", "metadata.name: Required value".into()))?
        .to_owned();
    let in_body = event["metadata"]["namespace"].as_str().unwrap_or(namespace);
    if in_body != namespace {
        return Err(ApiError::bad_request(format!(
            "the namespace of the object ({in_body}) does not match the namespace on the request ({namespace})"
        )));
    }
    let key = (namespace.to_owned(), name);
    if store.events.contains_key(&key) {
        return Err(ApiError::new(
            409,
            "AlreadyExists",
            format!("events.events.k8s.io {:?} already exists", key.1),
        ));
    }
    let uid = store.next_uid;
    store.next_uid += 1;
    let meta = &mut event["metadata"];
    meta["namespace"] = json!(namespace);
    meta["uid"] = json!(format!("00000000-0000-4000-8000-{uid:012x}"));
    meta["resourceVersion"] = json!(store.rv.to_string());
    event["kind"] = json!("Event");
    event["apiVersion"] = json!("events.k8s.io/v1");
    decode::<Event>(event.clone()).map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
    store.events.insert(key, event.clone());
    Ok(event)
}

fn patch_event(
    store: &mut Store,
    namespace: &str,
    name: &str,
    patch: &Value,
) -> Result<Value, ApiError> {
    let key = (namespace.to_owned(), name.to_owned());
    let Some(current) = store.events.get(&key) else {
        return Err(ApiError::not_found(format!(
            "events.events.k8s.io {name:?} not found"
        )));
    };
    let mut patched = current.clone();
    merge_patch(&mut patched, patch);
    // What identifies the object is the server's, whatever the patch says.
    for field in ["name", "namespace", "uid"] {
        patched["metadata"][field] = current["metadata"][field].clone();
    }
    decode::<Event>(patched.clone()).map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
    store.events.insert(key, patched.clone());
    Ok(patched)
}

/// Applies an RFC 7386 JSON merge patch: objects merge key by key, `null` deletes, any
/// other value replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().expect("made an object above");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn route(shared: &Arc<Shared>, path: &str, query: &Query) -> Result<Response<ResBody>, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["version"] => Ok(json_response(&version_info())),
        ["api"] => Ok(json_response(&core_versions(shared.addr))),
        ["apis"] => Ok(json_response(&group_list())),
        ["api", version] => resource_list(shared, "", version),
        ["apis", group, version] => resource_list(shared, group, version),
        ["api", version, rest @ ..] => collection(shared, "", version, rest, query),
        ["apis", group, version, rest @ ..] => collection(shared, group, version, rest, query),
        _ => Err(ApiError::not_found(format!("no route for {path}"))),
    }
}

/// The resource at `group/version/plural`, if served right now.
fn served(shared: &Shared, group: &str, version: &str, plural: &str) -> Option<Resource> {
    let resource = Resource::lookup(group, version, plural)?;
    let serving = resource != Resource::ServiceCidrs || shared.store().serve_servicecidrs;
    serving.then_some(resource)
}

fn collection(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    query: &Query,
) -> Result<Response<ResBody>, ApiError> {
    let (namespace, plural) = match rest {
        [plural] => (None, *plural),
        ["namespaces", namespace, plural] => (Some(*namespace), *plural),
        _ => {
            return Err(ApiError::not_found(format!(
                "no route for {}",
                rest.join("/")
            )))
        }
    };
    let resource = served(shared, group, version, plural).ok_or_else(|| {
        ApiError::not_found(format!(
            "the server could not find the requested resource {}/{plural}",
            group_version(group, version)
        ))
    })?;
    if namespace.is_some() && !resource.info().namespaced {
        return Err(ApiError::not_found(format!("{plural} is not namespaced")));
    }
    let filter = Filter::new(resource, namespace, query)?;
    if query.flag("watch") {
        start_watch(shared, filter, query)
    } else {
        let list = list(&shared.store(), &filter, query)?;
        Ok(json_response(&list))
    }
}

/// A list response: one page of the snapshot, in key order.
fn list(store: &Store, filter: &Filter, query: &Query) -> Result<Value, ApiError> {
    let (snapshot_rv, after) = match query.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => decode_continue(token)?,
        None => (list_rv(store, query)?, None),
    };
    let objects = store.snapshot(filter.resource, snapshot_rv)?;
    let limit = query
        .number("limit")?
        .filter(|l| *l > 0)
        .unwrap_or(u64::MAX);
    let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut matching = objects
        .range((lower, Bound::Unbounded))
        .filter(|(key, obj)| filter.matches(key, obj));
    let mut items = Vec::new();
    let mut last = None;
    for (key, obj) in matching
        .by_ref()
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
    {
        items.push(strip_type(obj));
        last = Some(key);
    }
    let mut metadata = json!({ "resourceVersion": snapshot_rv.to_string() });
    if let (Some(last), Some(_)) = (last, matching.next()) {
        metadata["continue"] = json!(encode_continue(snapshot_rv, last));
    }
    let info = filter.resource.info();
    Ok(json!({
        "kind": format!("{}List", info.kind),
        "apiVersion": filter.resource.api_version(),
        "metadata": metadata,
        "items": items,
    }))
}

/// Items of a list carry neither `kind` nor `apiVersion`, as on the real server.
fn strip_type(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(map) = obj.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    obj
}

/// The resourceVersion a fresh list is served at.
fn list_rv(store: &Store, query: &Query) -> Result<u64, ApiError> {
    let Some(rv) = query.number("resourceVersion")? else {
        return Ok(store.rv);
    };
    if rv > store.rv {
        return Err(ApiError::too_large(rv, store.rv));
    }
    match query.get("resourceVersionMatch") {
        Some("Exact") => Ok(rv),
        _ => Ok(store.rv),
    }
}

fn encode_continue(rv: u64, (namespace, name): &Key) -> String {
    format!("{rv}:{namespace}/{name}")
}

fn decode_continue(token: &str) -> Result<(u64, Option<Key>), ApiError> {
    let invalid = || ApiError::bad_request(format!("invalid continue token {token:?}"));
    let (rv, key) = token.split_once(':').ok_or_else(invalid)?;
    let (namespace, name) = key.split_once('/').ok_or_else(invalid)?;
    let rv = rv.parse().map_err(|_| invalid())?;
    Ok((rv, Some((namespace.to_owned(), name.to_owned()))))
}

/// Opens a watch stream: validates the request, then hands the stream to a [`pump`].
fn start_watch(
    shared: &Arc<Shared>,
    filter: Filter,
    query: &Query,
) -> Result<Response<ResBody>, ApiError> {
    let timeout = query
        .number("timeoutSeconds")?
        .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
    let from = match query.get("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(_) => query.number("resourceVersion")?,
    };
    let send_initial = query.flag("sendInitialEvents");
    if send_initial && from.is_some() {
        return Err(ApiError::bad_request(
            "sendInitialEvents with a specific resourceVersion is not supported by the fake".into(),
        ));
    }
    let store = shared.store();
    let (cursor, mut initial) = match from {
        Some(rv) if rv > store.rv => return Err(ApiError::too_large(rv, store.rv)),
        Some(rv) => (rv, Vec::new()),
        // "Start at most recent": the current objects as ADDED, then changes.
        None => {
            let objects = store.objects.get(&filter.resource);
            let added = objects
                .into_iter()
                .flatten()
                .filter(|(key, obj)| filter.matches(key, obj))
                .map(|(_, obj)| watch_line("ADDED", obj))
                .collect();
            (store.rv, added)
        }
    };
    if send_initial {
        let end = json!({ "k8s.io/initial-events-end": "true" });
        initial.push(bookmark_line(filter.resource, store.rv, end));
    }
    drop(store);
    let stream = WatchStream {
        filter,
        cursor,
        initial,
        bookmarks: query.flag("allowWatchBookmarks"),
        deadline: Instant::now() + timeout,
        drops: shared.tick.borrow().drops,
    };
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    tokio::spawn(pump(shared.clone(), stream, tx));
    let body = LinesBody(rx).boxed_unsync();
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(body)
        .expect("static response parts are valid"))
}

/// One open watch.
struct WatchStream {
    filter: Filter,
    /// The RV up to which events were sent.
    cursor: u64,
    /// Lines to send before any change.
    initial: Vec<Bytes>,
    bookmarks: bool,
    deadline: Instant,
    /// [`Tick::drops`] when the watch was opened.
    drops: u64,
}

/// Counts a watch as open while it lives.
struct OpenWatch(Arc<Shared>);

impl OpenWatch {
    fn new(shared: Arc<Shared>) -> Self {
        shared.open_watches.fetch_add(1, Ordering::SeqCst);
        OpenWatch(shared)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Feeds one watch stream until it times out, is dropped, falls behind the retained
/// history (410) or the client goes away.
async fn pump(shared: Arc<Shared>, mut watch: WatchStream, tx: mpsc::Sender<Bytes>) {
    let _open = OpenWatch::new(shared.clone());
    let mut tick = shared.tick.subscribe();
    let mut paused = shared.paused.subscribe();
    for line in std::mem::take(&mut watch.initial) {
        if tx.send(line).await.is_err() {
            return;
        }
    }
    let mut next_bookmark = Instant::now() + BOOKMARK_INTERVAL;
    let mut bookmark_due = false;
    loop {
        if tick.borrow_and_update().drops != watch.drops {
            return;
        }
        if !*paused.borrow_and_update() {
            let events = shared.store().events_since(&watch.filter, watch.cursor);
            let (lines, cursor) = match events {
                Ok(ok) => ok,
                Err(gone) => {
                    let _ = tx.send(gone).await;
                    return;
                }
            };
            for line in lines {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            watch.cursor = cursor;
            if std::mem::take(&mut bookmark_due) {
                let line = bookmark_line(watch.filter.resource, cursor, json!({}));
                if tx.send(line).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            changed = tick.changed() => if changed.is_err() { return },
            changed = paused.changed() => if changed.is_err() { return },
            () = tokio::time::sleep_until(watch.deadline) => return,
            () = tokio::time::sleep_until(next_bookmark), if watch.bookmarks => {
                bookmark_due = true;
                next_bookmark = Instant::now() + BOOKMARK_INTERVAL;
            }
            () = tx.closed() => return,
        }
    }
}

/// A response body made of the lines a [`pump`] sends; ends when the pump does.
struct LinesBody(mpsc::Receiver<Bytes>);

impl Body for LinesBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok(Frame::data(l))))
    }
}

fn json_response(value: &Value) -> Response<ResBody> {
    json_response_with(StatusCode::OK, value)
}

fn json_response_with(status: StatusCode, value: &Value) -> Response<ResBody> {
    let body = serde_json::to_vec(value).expect("JSON values always serialize");
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .expect("static response parts are valid")
}

/// An error answered as a `Status` object.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: String) -> Self {
        ApiError {
            code,
            reason,
            message,
        }
    }

    fn not_found(message: String) -> Self {
        Self::new(404, "NotFound", message)
    }

    fn bad_request(message: String) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn expired(message: String) -> Self {
        Self::new(410, "Expired", message)
    }

    /// What the real server answers, after waiting a few seconds, for an RV it has not
    /// reached.
    fn too_large(rv: u64, current: u64) -> Self {
        Self::new(
            504,
            "Timeout",
            format!("Too large resource version: {rv}, current: {current}"),
        )
    }

    fn to_status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }

    fn response(&self) -> Response<ResBody> {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        json_response_with(status, &self.to_status())
    }
}

// ---------------------------------------------------------------------------------------
// Discovery

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-fake",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "",
        "platform": "linux/amd64",
    })
}

fn core_versions(addr: SocketAddr) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": addr.to_string() }],
    })
}

/// The named groups; always listed, as a real server lists `networking.k8s.io` for its
/// other resources even when it has no ServiceCIDRs.
fn group_list() -> Value {
    let mut groups: Vec<(&str, &str)> = Resource::ALL
        .iter()
        .map(|r| (r.info().group, r.info().version))
        .filter(|(group, _)| !group.is_empty())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(group, version)| {
            let gv = json!({ "groupVersion": group_version(group, version), "version": version });
            json!({ "name": group, "versions": [gv.clone()], "preferredVersion": gv })
        })
        .collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

fn resource_list(
    shared: &Shared,
    group: &str,
    version: &str,
) -> Result<Response<ResBody>, ApiError> {
    let group_version = group_version(group, version);
    let known = Resource::ALL
        .iter()
        .any(|r| r.api_version() == group_version);
    if !known {
        return Err(ApiError::not_found(format!(
            "no API group version {group_version}"
        )));
    }
    let resources: Vec<Value> = Resource::ALL
        .into_iter()
        .filter(|r| r.api_version() == group_version)
        .filter(|r| served(shared, group, version, r.info().plural).is_some())
        .map(|r| {
            let info = r.info();
            json!({
                "name": info.plural,
                "singularName": info.kind.to_lowercase(),
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": ["get", "list", "watch"],
            })
        })
        .collect();
    Ok(json_response(&json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    })))
}

// ---------------------------------------------------------------------------------------
// Query strings and selectors

/// Decoded query parameters.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Query {
        let pairs = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key), percent_decode(value))
            })
            .collect();
        Query(pairs)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        self.get(key) == Some("true")
    }

    fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        match self.get(key).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(value) => value.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value {value:?} for parameter {key}"))
            }),
        }
    }
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a list or watch selects.
struct Filter {
    resource: Resource,
    namespace: Option<String>,
    labels: Vec<LabelRequirement>,
    fields: Vec<FieldRequirement>,
}

impl Filter {
    fn new(resource: Resource, namespace: Option<&str>, query: &Query) -> Result<Filter, ApiError> {
        Ok(Filter {
            resource,
            namespace: namespace.map(str::to_owned),
            labels: parse_label_selector(query.get("labelSelector").unwrap_or(""))?,
            fields: parse_field_selector(query.get("fieldSelector").unwrap_or(""))?,
        })
    }

    fn matches(&self, (namespace, name): &Key, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        self.namespace.as_ref().is_none_or(|ns| ns == namespace)
            && self.labels.iter().all(|req| req.matches(labels))
            && self.fields.iter().all(|req| req.matches(namespace, name))
    }
}

enum LabelRequirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelRequirement {
    fn matches(&self, labels: &Value) -> bool {
        let value = |key: &str| labels.get(key).and_then(Value::as_str);
        match self {
            LabelRequirement::Exists(key) => value(key).is_some(),
            LabelRequirement::NotExists(key) => value(key).is_none(),
            LabelRequirement::In(key, values) => {
                value(key).is_some_and(|v| values.iter().any(|x| x == v))
            }
            LabelRequirement::NotIn(key, values) => {
                value(key).is_none_or(|v| values.iter().all(|x| x != v))
            }
        }
    }
}

/// Parses a label selector the way apimachinery's `labels.Parse` does, for the operators
/// `key`, `!key`, `=`, `==`, `!=`, `in` and `notin`.
fn parse_label_selector(selector: &str) -> Result<Vec<LabelRequirement>, ApiError> {
    if selector.trim().is_empty() {
        return Ok(Vec::new());
    }
    split_outside_parens(selector)
        .into_iter()
        .map(|term| {
            parse_label_term(term.trim()).map_err(|why| {
                ApiError::bad_request(format!("unable to parse labelSelector {selector:?}: {why}"))
            })
        })
        .collect()
}

fn parse_label_term(term: &str) -> Result<LabelRequirement, String> {
    let single = |key: &str, value: &str, negate: bool| {
        let (key, value) = (label_key(key)?, label_value(value)?);
        Ok(if negate {
            LabelRequirement::NotIn(key, vec![value])
        } else {
            LabelRequirement::In(key, vec![value])
        })
    };
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelRequirement::NotExists(label_key(key)?));
    }
    if let Some((key, value)) = term.split_once("!=") {
        return single(key, value, true);
    }
    if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return single(key, value, false);
    }
    if let Some((key, set, negate)) = set_term(term) {
        let values = set
            .split(',')
            .map(label_value)
            .collect::<Result<Vec<_>, _>>()?;
        let key = label_key(key)?;
        return Ok(if negate {
            LabelRequirement::NotIn(key, values)
        } else {
            LabelRequirement::In(key, values)
        });
    }
    Ok(LabelRequirement::Exists(label_key(term)?))
}

/// Splits `key in (a,b)` / `key notin (a,b)` into key, set body and negation.
fn set_term(term: &str) -> Option<(&str, &str, bool)> {
    let (head, set) = term.strip_suffix(')')?.split_once('(')?;
    let mut words = head.split_whitespace();
    let (key, op) = (words.next()?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    match op {
        "in" => Some((key, set, false)),
        "notin" => Some((key, set, true)),
        _ => None,
    }
}

fn label_key(key: &str) -> Result<String, String> {
    let key = key.trim();
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'));
    valid
        .then(|| key.to_owned())
        .ok_or_else(|| format!("invalid label key {key:?}"))
}

fn label_value(value: &str) -> Result<String, String> {
    let value = value.trim();
    let valid = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    valid
        .then(|| value.to_owned())
        .ok_or_else(|| format!("invalid label value {value:?}"))
}

/// Splits on commas that are not inside `( )`.
fn split_outside_parens(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `metadata.name` / `metadata.namespace` `=`, `==` or `!=` a value.
struct FieldRequirement {
    field: Field,
    value: String,
    negate: bool,
}

enum Field {
    Name,
    Namespace,
}

impl FieldRequirement {
    fn matches(&self, namespace: &str, name: &str) -> bool {
        let actual = match self.field {
            Field::Name => name,
            Field::Namespace => namespace,
        };
        (actual == self.value) != self.negate
    }
}

fn parse_field_selector(selector: &str) -> Result<Vec<FieldRequirement>, ApiError> {
    if selector.trim().is_empty() {
        return Ok(Vec::new());
    }
    selector.split(',').map(parse_field_term).collect()
}

fn parse_field_term(term: &str) -> Result<FieldRequirement, ApiError> {
    let (field, value, negate) = if let Some((f, v)) = term.split_once("!=") {
        (f, v, true)
    } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        (f, v, false)
    } else {
        return Err(ApiError::bad_request(format!(
            "invalid field selector term {term:?}"
        )));
    };
    let field = match field.trim() {
        "metadata.name" => Field::Name,
        "metadata.namespace" => Field::Namespace,
        other => {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {other}"
            )))
        }
    };
    Ok(FieldRequirement {
        field,
        value: value.trim().to_owned(),
        negate,
    })
}
