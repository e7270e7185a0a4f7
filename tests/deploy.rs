//! The deployment under `deploy/` (not `deploy/examples/`, which is a cluster dump for
//! `render`), read the way the cluster and kube-proxy-rs read it: every YAML document
//! decodes into its k8s-openapi type without losing a field, the ConfigMap's
//! `config.conf` passes our own config parser, the DaemonSet's command line passes our
//! own CLI parser, its mounts name real volumes, and the RBAC grants exactly what the code
//! calls on the API server, nothing more.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, PodSpec, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::config::Kubeconfig;
use kube_proxy::cli::{self, Command};
use kube_proxy::config::{KubeProxyConfiguration, ProxyMode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The node the DaemonSet's pod is pretended to run on.
const NODE: &str = "node-a";

/// Where the kubelet mounts a pod's ServiceAccount token and CA.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Every (apiGroup, resource, verb) kube-proxy-rs needs on the API server, read off
/// `src/sources/apiserver.rs`: each `Api::<K>` there feeds a watcher, which lists and
/// then watches (Services, EndpointSlices, ServiceCIDRs); our Node is watched the same
/// way through a `metadata.name` field selector, so it needs no `get`. API discovery
/// (`/apis/networking.k8s.io/v1`) is open to every authenticated user and needs no rule.
/// Events: `src/events.rs` records them with kube's `Recorder`, which creates an Event in
/// `events.k8s.io/v1` and patches it when it repeats (never the core API, never update).
const NEEDED: &[(&str, &str, &str)] = &[
    ("", "services", "list"),
    ("", "services", "watch"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
    ("", "nodes", "list"),
    ("", "nodes", "watch"),
    ("networking.k8s.io", "servicecidrs", "list"),
    ("networking.k8s.io", "servicecidrs", "watch"),
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
];

/// Every object of `deploy/`, by kind.
#[derive(Default)]
struct Manifests {
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

/// The YAML files under `dir`, recursively, skipping `deploy/examples`.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path != deploy_dir().join("examples") {
                files.extend(yaml_files(&path));
            }
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The YAML documents of `path` as JSON values (empty documents skipped).
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// Decodes `doc` as `T` and insists nothing was lost on the way: a misspelt or misplaced
/// field, which the API server would drop or reject, fails here.
fn typed<T: DeserializeOwned + Serialize>(doc: Value, origin: &str) -> T {
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: not a valid object of its kind: {e}"));
    let back = serde_json::to_value(&object).unwrap();
    assert_eq!(back, doc, "{origin}: fields its type does not know");
    object
}

/// The object `namespace/name` (`name` when cluster-scoped) among `items`.
fn named<'a, T>(items: &'a [T], namespace: Option<&str>, name: &str) -> &'a T
where
    T: k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let mut found = items.iter().filter(|item| {
        let meta = item.metadata();
        meta.name.as_deref() == Some(name) && meta.namespace.as_deref() == namespace
    });
    let item = found
        .next()
        .unwrap_or_else(|| panic!("no {} {namespace:?}/{name} in deploy/", T::KIND));
    assert!(found.next().is_none(), "two of {namespace:?}/{name}");
    item
}

impl Manifests {
    /// Loads every document of every YAML file under `deploy/`.
    fn load() -> Self {
        let mut all = Manifests::default();
        let files = yaml_files(&deploy_dir());
        assert!(!files.is_empty(), "no manifests under deploy/");
        for path in files {
            for doc in documents(&path) {
                let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
                let origin = format!("{} ({kind} {})", path.display(), doc["metadata"]["name"]);
                match kind.as_str() {
                    "ServiceAccount" => all.service_accounts.push(typed(doc, &origin)),
                    "ClusterRole" => all.cluster_roles.push(typed(doc, &origin)),
                    "ClusterRoleBinding" => all.bindings.push(typed(doc, &origin)),
                    "ConfigMap" => all.config_maps.push(typed(doc, &origin)),
                    "DaemonSet" => all.daemon_sets.push(typed(doc, &origin)),
                    _ => panic!("{origin}: unexpected kind"),
                }
            }
        }
        all
    }

    fn daemon_set(&self) -> &DaemonSet {
        named(&self.daemon_sets, Some("kube-system"), "kube-proxy")
    }

    fn pod(&self) -> &PodSpec {
        let spec = self.daemon_set().spec.as_ref().expect("DaemonSet spec");
        spec.template.spec.as_ref().expect("pod template spec")
    }

    /// The one container of the pod.
    fn container(&self) -> &Container {
        let containers = &self.pod().containers;
        assert_eq!(containers.len(), 1, "one container");
        &containers[0]
    }

    /// The pod's ServiceAccount as a binding subject names it.
    fn service_account(&self) -> Subject {
        let name = self
            .pod()
            .service_account_name
            .as_deref()
            .unwrap_or("default");
        let account = named(&self.service_accounts, Some("kube-system"), name);
        Subject {
            kind: "ServiceAccount".into(),
            name: account.metadata.name.clone().unwrap(),
            namespace: account.metadata.namespace.clone(),
            api_group: None,
        }
    }

    /// The container's mount at `path` and the volume it mounts.
    fn mount(&self, path: &str) -> (&VolumeMount, &Volume) {
        let mounts = self
            .container()
            .volume_mounts
            .as_deref()
            .unwrap_or_default();
        let mount = mounts
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"));
        (mount, self.volume(&mount.name))
    }

    fn volume(&self, name: &str) -> &Volume {
        let volumes = self.pod().volumes.as_deref().unwrap_or_default();
        volumes
            .iter()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("volume {name:?} is mounted but not defined"))
    }

    /// The contents of the file at `path` in the container, which must come from a
    /// ConfigMap of `deploy/` mounted there.
    fn container_file(&self, path: &str) -> &str {
        let mounts = self
            .container()
            .volume_mounts
            .as_deref()
            .unwrap_or_default();
        let (mount, key) = mounts
            .iter()
            .find_map(|m| Some((m, path.strip_prefix(&m.mount_path)?.strip_prefix('/')?)))
            .unwrap_or_else(|| panic!("{path} is in no mounted volume"));
        let source = self.volume(&mount.name).config_map.as_ref();
        let name = source.unwrap_or_else(|| panic!("{path} is not in a ConfigMap volume"));
        let map = named(&self.config_maps, Some("kube-system"), &name.name);
        let data = map.data.as_ref().and_then(|data| data.get(key));
        data.unwrap_or_else(|| panic!("ConfigMap {} has no key {key:?} for {path}", name.name))
    }

    /// The container's environment as the kubelet resolves it on [`NODE`].
    fn env(&self) -> BTreeMap<String, String> {
        let vars = self.container().env.as_deref().unwrap_or_default();
        let resolve = |var: &EnvVar| {
            if let Some(value) = &var.value {
                return value.clone();
            }
            let field = var
                .value_from
                .as_ref()
                .and_then(|from| from.field_ref.as_ref());
            match field.map(|f| f.field_path.as_str()) {
                Some("spec.nodeName") => NODE.to_owned(),
                other => panic!("env {}: unexpected source {other:?}", var.name),
            }
        };
        vars.iter()
            .map(|var| (var.name.clone(), resolve(var)))
            .collect()
    }

    /// The container's command line as the kubelet runs it: `command`, then `args`,
    /// with `$(VAR)` expanded from its environment.
    fn command_line(&self) -> Vec<String> {
        let container = self.container();
        let env = self.env();
        let words = container.command.iter().chain(&container.args).flatten();
        words.map(|word| expand(word, &env)).collect()
    }

    /// Every rule the ClusterRoles bound to the pod's ServiceAccount grant, as
    /// (apiGroup, resource, verb); wildcards, resource names and URLs are refused.
    fn grants(&self) -> BTreeSet<(String, String, String)> {
        let account = self.service_account();
        let bound = self.bindings.iter().filter(|b| {
            b.subjects.iter().flatten().any(|s| *s == account) && b.role_ref.kind == "ClusterRole"
        });
        let mut grants = BTreeSet::new();
        for binding in bound {
            let role = named(&self.cluster_roles, None, &binding.role_ref.name);
            for rule in role.rules.iter().flatten() {
                assert!(rule.resource_names.is_none(), "resourceNames in {rule:?}");
                assert!(
                    rule.non_resource_urls.is_none(),
                    "nonResourceURLs in {rule:?}"
                );
                for group in rule.api_groups.iter().flatten() {
                    for resource in rule.resources.iter().flatten() {
                        for verb in &rule.verbs {
                            for word in [group, resource, verb] {
                                assert!(!word.contains('*'), "wildcard in {rule:?}");
                            }
                            grants.insert((group.clone(), resource.clone(), verb.clone()));
                        }
                    }
                }
            }
        }
        grants
    }
}

/// Expands `$(NAME)` as the kubelet does; an undefined name (which the kubelet would
/// leave as it is) fails the test.
fn expand(word: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(start) = rest.find("$(") {
        let end = rest[start..].find(')').expect("unclosed $(") + start;
        let name = &rest[start + 2..end];
        let value = env.get(name);
        out.push_str(&rest[..start]);
        out.push_str(value.unwrap_or_else(|| panic!("{word}: $({name}) is not in env")));
        rest = &rest[end + 1..];
    }
    out + rest
}

#[test]
fn every_manifest_decodes_into_its_kubernetes_type() {
    let all = Manifests::load();
    assert_eq!(all.service_accounts.len(), 1);
    assert_eq!(all.config_maps.len(), 1);
    assert_eq!(all.daemon_sets.len(), 1);
    assert!(!all.cluster_roles.is_empty() && !all.bindings.is_empty());
}

#[test]
fn config_map_holds_an_nftables_configuration_our_parser_accepts() {
    let all = Manifests::load();
    let map = named(&all.config_maps, Some("kube-system"), "kube-proxy");
    let text = &map.data.as_ref().expect("data")["config.conf"];
    let mut config = KubeProxyConfiguration::decode(text).unwrap_or_else(|e| panic!("{e}"));
    config.apply_defaults();
    config.validate().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.mode, "nftables");
    assert_eq!(config.effective_mode(), ProxyMode::NfTables);
    assert!(!config.cluster_cidrs().unwrap().is_empty(), "clusterCIDR");
}

#[test]
fn daemon_set_command_line_parses_with_our_cli() {
    let all = Manifests::load();
    let mut args = all.command_line();
    // `--config` names a file in the mounted ConfigMap; hand the parser a copy of it.
    let file = tempfile::NamedTempFile::new().unwrap();
    let config = args
        .iter_mut()
        .find(|arg| arg.starts_with("--config="))
        .expect("--config=PATH");
    let path = &config["--config=".len()..];
    std::fs::write(file.path(), all.container_file(path)).unwrap();
    *config = format!("--config={}", file.path().display());

    let invocation = cli::parse(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert_eq!(invocation.command, Command::Daemon);
    assert_eq!(invocation.config.effective_mode(), ProxyMode::NfTables);
    assert_eq!(invocation.config.node_name().unwrap(), NODE);
    assert!(invocation.warnings.is_empty(), "{:?}", invocation.warnings);

    // The kubeconfig the file names is in the ConfigMap too, and authenticates with the
    // pod's ServiceAccount.
    let kubeconfig = invocation.kubeconfig.expect("clientConnection.kubeconfig");
    let kubeconfig = all.container_file(kubeconfig.to_str().unwrap());
    let kubeconfig = Kubeconfig::from_yaml(kubeconfig).unwrap_or_else(|e| panic!("{e}"));
    let cluster = kubeconfig.clusters[0].cluster.as_ref().unwrap();
    let user = kubeconfig.auth_infos[0].auth_info.as_ref().unwrap();
    let in_account_dir = |file: &str| format!("{SERVICE_ACCOUNT_DIR}/{file}");
    assert_eq!(
        cluster.certificate_authority,
        Some(in_account_dir("ca.crt"))
    );
    assert_eq!(user.token_file, Some(in_account_dir("token")));
}

#[test]
fn daemon_set_runs_on_every_node_like_kubeadms() {
    let all = Manifests::load();
    let spec = all.daemon_set().spec.as_ref().unwrap();
    let strategy = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref());
    assert_eq!(strategy, Some("RollingUpdate"));
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    let selector = spec.selector.match_labels.as_ref().expect("matchLabels");
    assert!(selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v)));

    let pod = all.pod();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "a toleration of every taint"
    );

    let container = all.container();
    let privileged = container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged);
    assert_eq!(privileged, Some(true));
    let image = container.image.as_deref().unwrap();
    assert_eq!(
        image,
        format!("kube-proxy-rs:{}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn volume_mounts_reference_defined_volumes() {
    let all = Manifests::load();
    for mount in all.container().volume_mounts.iter().flatten() {
        all.volume(&mount.name);
    }
    let (lock, volume) = all.mount("/run/xtables.lock");
    let host = volume
        .host_path
        .as_ref()
        .expect("xtables lock from the host");
    assert_eq!(host.path, "/run/xtables.lock");
    assert_eq!(host.type_.as_deref(), Some("FileOrCreate"));
    assert_ne!(lock.read_only, Some(true), "the lock is taken, so written");

    let (modules, volume) = all.mount("/lib/modules");
    let host = volume.host_path.as_ref().expect("modules from the host");
    assert_eq!(host.path, "/lib/modules");
    assert_eq!(modules.read_only, Some(true));

    let (_, volume) = all.mount("/var/lib/kube-proxy");
    let map = volume.config_map.as_ref().expect("the ConfigMap");
    named(&all.config_maps, Some("kube-system"), &map.name);
}

#[test]
fn binding_binds_the_cluster_role_to_the_service_account() {
    let all = Manifests::load();
    let account = all.service_account();
    assert_eq!(
        (account.name.as_str(), account.namespace.as_deref()),
        ("kube-proxy", Some("kube-system"))
    );
    for binding in &all.bindings {
        assert_eq!(binding.role_ref.api_group, "rbac.authorization.k8s.io");
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        named(&all.cluster_roles, None, &binding.role_ref.name);
        assert_eq!(binding.subjects.as_deref(), Some(&[account.clone()][..]));
    }
    for role in &all.cluster_roles {
        let name = role.metadata.name.as_deref();
        let bound = all
            .bindings
            .iter()
            .any(|b| Some(b.role_ref.name.as_str()) == name);
        assert!(bound, "ClusterRole {name:?} is bound by nothing");
    }
}

#[test]
fn rbac_grants_exactly_what_the_code_calls() {
    let needed: BTreeSet<_> = NEEDED
        .iter()
        .map(|&(g, r, v)| (g.to_owned(), r.to_owned(), v.to_owned()))
        .collect();
    let granted = Manifests::load().grants();
    let missing: Vec<_> = needed.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&needed).collect();
    assert!(missing.is_empty(), "not granted: {missing:?}");
    assert!(extra.is_empty(), "granted beyond need: {extra:?}");
}

#[test]
fn dockerfile_installs_the_binary_where_the_daemonset_runs_it() {
    let dockerfile = std::fs::read_to_string(deploy_dir().join("Dockerfile")).unwrap();
    let program = Manifests::load().command_line().remove(0);
    let copy = dockerfile
        .lines()
        .filter(|line| line.starts_with("COPY --from="))
        .last()
        .expect("the binary copied from the build stage");
    assert!(copy.ends_with(&format!(" {program}")), "{copy}");
    assert!(dockerfile.contains("cargo build --release --locked --bin kube-proxy"));
    let install = dockerfile
        .lines()
        .find(|l| l.contains("apt-get install"))
        .unwrap();
    for package in ["nftables", "iptables", "ipset"] {
        assert!(install.contains(package), "{package} not installed");
    }
}
