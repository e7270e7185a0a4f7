//! The API-server source: list/watch Services, EndpointSlices, our own Node and (where
//! served) ServiceCIDRs, and turn what the watchers see into [`SourceEvent`]s.
//!
//! Selection mirrors upstream kube-proxy (`cmd/kube-proxy/app/server.go`): Services,
//! EndpointSlices and ServiceCIDRs come from one informer factory whose list options carry
//! the label selector [`SERVICE_LABEL_SELECTOR`]; the Node comes from a second factory
//! restricted to `metadata.name=<node>`.

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Config};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::Sender;
use tracing::{debug, info, warn};

use super::{Kind, Object, SourceEvent};

/// Upstream's selector for the Service, EndpointSlice and ServiceCIDR informers: skip
/// objects that belong to another service proxy (`service.kubernetes.io/service-proxy-name`)
/// and headless Services' EndpointSlices (`service.kubernetes.io/headless`).
pub const SERVICE_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// The API group/version that serves ServiceCIDRs (GA since Kubernetes 1.33).
const SERVICE_CIDR_GROUP_VERSION: &str = "networking.k8s.io/v1";

/// Why no API client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The `--kubeconfig` file could not be read, parsed, or does not describe a usable
    /// cluster and user.
    #[error("kubeconfig {}: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// `--master` is not a valid URL.
    #[error("invalid --master URL {url:?}: {source}")]
    Master {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    /// Neither `--kubeconfig` nor `--master` was given, we are not in a cluster and there
    /// is no default kubeconfig either.
    #[error(
        "neither --kubeconfig nor --master was given; in-cluster config failed ({in_cluster}) \
         and so did the default kubeconfig ({kubeconfig})"
    )]
    NoConfig {
        in_cluster: kube::config::InClusterError,
        kubeconfig: kube::config::KubeconfigError,
    },
    /// The configuration was loaded but the HTTP client could not be built from it.
    #[error("building API client: {0}")]
    Build(#[from] kube::Error),
}

/// Builds the API client the way upstream's `clientcmd.BuildConfigFromFlags` does: the
/// `--kubeconfig` file if given; otherwise the in-cluster config; otherwise the default
/// kubeconfig (`$KUBECONFIG`, `~/.kube/config`). A non-empty `--master` overrides the
/// server URL of whatever was loaded (with only `--master`, credentials still come from
/// the in-cluster service account when there is one, as client-go does).
pub async fn client(
    kubeconfig: Option<&Path>,
    master: Option<&str>,
) -> Result<Client, ClientError> {
    let master = master.filter(|m| !m.is_empty());
    let kubeconfig = kubeconfig.filter(|p| !p.as_os_str().is_empty());
    let mut config = match (kubeconfig, master) {
        (Some(path), master) => from_kubeconfig_file(path, master).await?,
        (None, Some(master)) => Config::incluster().or_else(|err| {
            debug!(error = %err, "no in-cluster credentials; talking to --master without any");
            Ok::<_, ClientError>(Config::new(master_url(master, false)?))
        })?,
        (None, None) => in_cluster_or_default().await?,
    };
    if let Some(master) = master {
        config.cluster_url = master_url(master, carries_tls(&config))?;
    }
    Ok(Client::try_from(config)?)
}

/// Loads `path`; `master` replaces its servers before validation, so that (as with
/// client-go's overrides) a kubeconfig that names no server at all is fine with `--master`.
async fn from_kubeconfig_file(path: &Path, master: Option<&str>) -> Result<Config, ClientError> {
    let error = |source| ClientError::Kubeconfig {
        path: path.to_owned(),
        source,
    };
    let mut file = Kubeconfig::read_from(path).map_err(error)?;
    if let Some(master) = master {
        for cluster in file.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
            cluster.server = Some(master.to_owned());
        }
    }
    Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(error)
}

async fn in_cluster_or_default() -> Result<Config, ClientError> {
    info!("neither --kubeconfig nor --master was specified; using the in-cluster config");
    let in_cluster = match Config::incluster() {
        Ok(config) => return Ok(config),
        Err(err) => err,
    };
    warn!(error = %in_cluster, "in-cluster config failed, falling back to the default kubeconfig");
    Config::from_kubeconfig(&KubeConfigOptions::default())
        .await
        .map_err(|kubeconfig| ClientError::NoConfig {
            in_cluster,
            kubeconfig,
        })
}

/// Whether `config` has TLS settings, which is what makes client-go default to https.
fn carries_tls(config: &Config) -> bool {
    config.root_cert.is_some() || config.root_cert_file.is_some() || config.accept_invalid_certs
}

/// Parses `--master`. Like client-go, a bare `host:port` gets `https://` when the loaded
/// config carries TLS material and `http://` otherwise.
fn master_url(master: &str, tls: bool) -> Result<http::Uri, ClientError> {
    let url = if master.contains("://") {
        master.to_owned()
    } else {
        format!("{}://{master}", if tls { "https" } else { "http" })
    };
    url.parse().map_err(|source| ClientError::Master {
        url: master.to_owned(),
        source,
    })
}

/// Watches everything the proxy consumes and sends it to `tx` until `tx` is closed.
///
/// Each kind is an independent kube-rs watcher (bookmarks on, default exponential backoff
/// on errors, automatic relist on `410 Gone`). Every (re)list becomes exactly one
/// [`SourceEvent::Listed`] so that objects deleted while we were not watching disappear
/// downstream; afterwards each change is one `Applied` or `Deleted`. Watch errors are
/// logged and retried, never fatal. ServiceCIDRs are only watched when the server serves
/// them; when it does not, nothing at all is sent for that kind.
pub async fn run(client: Client, node_name: String, tx: Sender<SourceEvent>) {
    // Lists stay consistent reads (`resourceVersion` unset, 500 per page): since 1.31 the
    // server answers them from its watch cache, and unlike kube-rs' `Any` semantic a relist
    // after `410 Gone` can never go back in time to an older cache.
    let services = watcher::Config::default().labels(SERVICE_LABEL_SELECTOR);
    let node = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let all = futures::future::join4(
        watch::<Service>(Api::all(client.clone()), services.clone(), &tx),
        watch::<EndpointSlice>(Api::all(client.clone()), services.clone(), &tx),
        watch::<Node>(Api::all(client.clone()), node, &tx),
        watch_service_cidrs(client, services, &tx),
    );
    tokio::select! {
        _ = all => {}
        _ = tx.closed() => {}
    }
    debug!("API-server source stopped: event receiver closed");
}

/// A Kubernetes type this source watches.
trait Watched:
    kube::Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + 'static
{
    /// The [`Kind`] its [`Object`]s have.
    const KIND: Kind;
    /// Wraps it as an [`Object`].
    fn into_object(self) -> Object;
}

impl Watched for Service {
    const KIND: Kind = Kind::Service;
    fn into_object(self) -> Object {
        Object::Service(Box::new(self))
    }
}

impl Watched for EndpointSlice {
    const KIND: Kind = Kind::EndpointSlice;
    fn into_object(self) -> Object {
        Object::EndpointSlice(Box::new(self))
    }
}

impl Watched for Node {
    const KIND: Kind = Kind::Node;
    fn into_object(self) -> Object {
        Object::Node(Box::new(self))
    }
}

impl Watched for ServiceCIDR {
    const KIND: Kind = Kind::ServiceCidr;
    fn into_object(self) -> Object {
        Object::ServiceCidr(Box::new(self))
    }
}

/// Runs one watcher forever (or until `tx` closes), forwarding its events.
async fn watch<K: Watched>(api: Api<K>, config: watcher::Config, tx: &Sender<SourceEvent>) {
    let stream = watcher::watcher(api, config).default_backoff();
    forward::<K>(stream, tx).await;
}

/// Turns a watcher's event stream into [`SourceEvent`]s. Returns when `tx` is closed.
async fn forward<K: Watched>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    tx: &Sender<SourceEvent>,
) {
    let mut stream = std::pin::pin!(stream);
    // Objects of the (re)list in progress; `None` while watching.
    let mut listing: Option<Vec<Object>> = None;
    while let Some(event) = stream.next().await {
        let out = match event {
            Ok(Event::Init) => {
                listing = Some(Vec::new());
                None
            }
            Ok(Event::InitApply(obj)) => {
                listing.get_or_insert_with(Vec::new).push(obj.into_object());
                None
            }
            Ok(Event::InitDone) => {
                let objects = listing.take().unwrap_or_default();
                debug!(kind = ?K::KIND, count = objects.len(), "listed");
                Some(SourceEvent::Listed(K::KIND, objects))
            }
            Ok(Event::Apply(obj)) => Some(SourceEvent::Applied(obj.into_object())),
            Ok(Event::Delete(obj)) => Some(SourceEvent::Deleted(obj.into_object())),
            // Compaction outran us: routine, and the watcher relists on its own.
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                info!(kind = ?K::KIND, message = %status.message, "watch history expired; relisting");
                None
            }
            Err(err) => {
                warn!(kind = ?K::KIND, error = %err, "watch failed; retrying with backoff");
                None
            }
        };
        if let Some(out) = out {
            if tx.send(out).await.is_err() {
                return;
            }
        }
    }
}

/// Watches ServiceCIDRs if discovery says the server serves them. Older servers do not,
/// which is normal: then this logs once and returns without sending anything.
async fn watch_service_cidrs(client: Client, config: watcher::Config, tx: &Sender<SourceEvent>) {
    if serves_service_cidrs(&client).await {
        watch::<ServiceCIDR>(Api::all(client), config, tx).await;
    } else {
        info!("API server does not serve {SERVICE_CIDR_GROUP_VERSION} servicecidrs; not watching them");
    }
}

/// Asks API discovery whether `networking.k8s.io/v1` has `servicecidrs`. A 404 means no;
/// any other failure (server unreachable, 5xx) is retried with backoff because it says
/// nothing about what the server serves.
async fn serves_service_cidrs(client: &Client) -> bool {
    let mut delay = Duration::from_millis(800);
    loop {
        match client
            .list_api_group_resources(SERVICE_CIDR_GROUP_VERSION)
            .await
        {
            Ok(list) => return list.resources.iter().any(|r| r.name == "servicecidrs"),
            Err(kube::Error::Api(status)) if status.is_not_found() => return false,
            Err(err) => {
                warn!(error = %err, "discovery of {SERVICE_CIDR_GROUP_VERSION} failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}
