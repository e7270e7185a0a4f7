//! The one place where Kubernetes API objects become model types.
//!
//! Each function reads one object the way upstream kube-proxy does (`newBaseServiceInfo`,
//! the EndpointSlice cache, `GetNodeHostIPs`) and reports what it could not use as
//! [`ConvertError`]s that name the object and the field. A bad port, address or range is
//! skipped on its own; nothing here panics, whatever the input.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::SystemTime;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::{self as discovery, EndpointSlice};
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_proxy_model::{
    Endpoint, IpFamily, Protocol, ServicePort, ServicePortName, SessionAffinity,
    LABEL_TOPOLOGY_ZONE,
};

/// Services (and their slices) with this label belong to another proxy implementation.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Set by the EndpointSlice controller on objects of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Names the Service an EndpointSlice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// When the change that produced an EndpointSlice happened (RFC 3339).
pub const ANNOTATION_LAST_CHANGE_TRIGGER_TIME: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";

/// The API's upper bound for `sessionAffinityConfig.clientIP.timeoutSeconds` (one day).
const MAX_AFFINITY_TIMEOUT_SECONDS: i32 = 86400;

/// Identifies a namespaced (or, with an empty namespace, cluster-scoped) object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Something in an object that the proxy cannot use, e.g.
/// `Service ns/name: spec.ports[1].protocol: unsupported "XYZ"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {field}: {message}")]
pub struct ConvertError {
    /// The object's kind (`Service`, `EndpointSlice`, ...).
    pub kind: &'static str,
    /// `namespace/name`, or as much of it as the object carries.
    pub object: String,
    /// The path of the offending field.
    pub field: String,
    pub message: String,
}

/// The result of a conversion: what could be used, and what was skipped and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Converted<T> {
    pub value: T,
    pub problems: Vec<ConvertError>,
}

impl<T> Converted<T> {
    /// Logs every problem as a warning and returns the value.
    pub fn log(self) -> T {
        for problem in &self.problems {
            tracing::warn!("{problem}");
        }
        self.value
    }
}

/// Collects the problems of one object.
struct Problems {
    kind: &'static str,
    object: String,
    list: Vec<ConvertError>,
}

impl Problems {
    fn new(kind: &'static str, object: impl fmt::Display) -> Self {
        Problems {
            kind,
            object: object.to_string(),
            list: Vec::new(),
        }
    }

    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.list.push(ConvertError {
            kind: self.kind,
            object: self.object.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn finish<T>(self, value: T) -> Converted<T> {
        Converted {
            value,
            problems: self.list,
        }
    }
}

/// The key of an object; an object without a name cannot be tracked and is an error.
pub fn object_key(kind: &'static str, meta: &ObjectMeta) -> Result<ObjectKey, ConvertError> {
    let namespace = meta.namespace.clone().unwrap_or_default();
    match meta.name.as_deref() {
        Some(name) if !name.is_empty() => Ok(ObjectKey::new(namespace, name)),
        _ => Err(ConvertError {
            kind,
            object: ObjectKey::new(namespace, "<unnamed>").to_string(),
            field: "metadata.name".into(),
            message: "missing".into(),
        }),
    }
}

/// A DNS label as Kubernetes validates names: at most 63 lower-case letters, digits and
/// `-`, starting and ending with a letter or digit (RFC 1123), or, with `letter_first`,
/// starting with a letter (RFC 1035).
fn is_dns_label(s: &str, letter_first: bool) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            bytes.len() <= 63
                && alnum(first)
                && (!letter_first || first.is_ascii_lowercase())
                && alnum(last)
                && bytes.iter().all(|&c| alnum(c) || c == b'-')
        }
        _ => false,
    }
}

fn has_label(meta: &ObjectMeta, label: &str) -> bool {
    meta.labels.as_ref().is_some_and(|l| l.contains_key(label))
}

/// Why upstream's informers or `ShouldSkipService` would never show this Service to the
/// proxier, if they would not.
fn service_skip_reason(svc: &Service) -> Option<&'static str> {
    if has_label(&svc.metadata, LABEL_SERVICE_PROXY_NAME) {
        return Some("owned by another proxy (service-proxy-name label)");
    }
    if has_label(&svc.metadata, LABEL_HEADLESS) {
        return Some("headless label");
    }
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some("type ExternalName");
    }
    // The API server keeps clusterIP equal to clusterIPs[0]; hand-written manifests may
    // give only one of them.
    let primary = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty())
        .or_else(|| spec.cluster_ips.as_ref()?.first().map(String::as_str));
    match primary.unwrap_or("") {
        "" => Some("no clusterIP"),
        "None" => Some("headless"),
        _ => None,
    }
}

/// The ports of a Service the proxy handles, in every family it has a ClusterIP of.
///
/// Empty for Services the proxy ignores (headless, ExternalName, no ClusterIP, labelled for
/// another proxy or as headless) and for Services it cannot use at all.
pub fn service_ports(svc: &Service) -> Converted<Vec<ServicePort>> {
    let key = match object_key("Service", &svc.metadata) {
        Ok(key) => key,
        Err(e) => {
            return Converted {
                value: Vec::new(),
                problems: vec![e],
            }
        }
    };
    let mut problems = Problems::new("Service", &key);
    if let Some(reason) = service_skip_reason(svc) {
        tracing::debug!(service = %key, reason, "skipping Service");
        return problems.finish(Vec::new());
    }
    // The API server guarantees these; manifests do not. The names end up in rule and
    // chain names, where a stray character would make the kernel refuse every service's
    // rules at once, so an invalid Service is refused on its own here.
    if !is_dns_label(&key.namespace, false) {
        problems.push("metadata.namespace", "must be a DNS-1123 label");
        return problems.finish(Vec::new());
    }
    if !is_dns_label(&key.name, true) {
        problems.push("metadata.name", "must be a DNS-1035 label");
        return problems.finish(Vec::new());
    }
    let Some(spec) = svc.spec.as_ref() else {
        return problems.finish(Vec::new());
    };
    let Some(shared) = ServiceShared::read(svc, &mut problems) else {
        return problems.finish(Vec::new());
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let Some((name, port, node_port)) = read_port(&key, i, port, &mut problems) else {
            continue;
        };
        if !seen.insert((name.port.clone(), name.protocol)) {
            problems.push(
                format!("spec.ports[{i}]"),
                format!("duplicate port name {:?} for {}", name.port, name.protocol),
            );
            continue;
        }
        for family in IpFamily::ALL {
            if let Some(sp) = shared.port_for(family, &name, port, node_port) {
                out.push(sp);
            }
        }
    }
    problems.finish(out)
}

/// Reads `spec.ports[i]`: its name, port and NodePort, or `None` if it is unusable.
fn read_port(
    key: &ObjectKey,
    i: usize,
    port: &k8s_openapi::api::core::v1::ServicePort,
    problems: &mut Problems,
) -> Option<(ServicePortName, u16, u16)> {
    // The API server defaults the protocol to TCP; hand-written manifests may omit it.
    let protocol_str = port.protocol.as_deref().unwrap_or("TCP");
    let Some(protocol) = Protocol::from_k8s(protocol_str) else {
        problems.push(
            format!("spec.ports[{i}].protocol"),
            format!("unsupported {protocol_str:?}"),
        );
        return None;
    };
    let number = match u16::try_from(port.port) {
        Ok(p) if p != 0 => p,
        _ => {
            problems.push(
                format!("spec.ports[{i}].port"),
                format!("{} is out of range 1-65535", port.port),
            );
            return None;
        }
    };
    let node_port = port.node_port.unwrap_or(0);
    let Ok(node_port) = u16::try_from(node_port) else {
        problems.push(
            format!("spec.ports[{i}].nodePort"),
            format!("{node_port} is out of range 0-65535"),
        );
        return None;
    };
    let port_name = port.name.clone().unwrap_or_default();
    if !port_name.is_empty() && !is_dns_label(&port_name, false) {
        problems.push(
            format!("spec.ports[{i}].name"),
            format!("{port_name:?} must be a DNS-1123 label"),
        );
        return None;
    }
    let name = ServicePortName {
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        port: port_name,
        protocol,
    };
    Some((name, number, node_port))
}

/// What every port of a Service shares, already split by family.
struct ServiceShared {
    cluster_ips: Vec<IpAddr>,
    external_ips: Vec<IpAddr>,
    load_balancer_ips: Vec<IpAddr>,
    source_ranges: Vec<IpNet>,
    session_affinity: Option<SessionAffinity>,
    external_policy_local: bool,
    internal_policy_local: bool,
    health_check_node_port: u16,
}

impl ServiceShared {
    /// Reads the Service-wide fields; `None` when the Service cannot be used at all.
    fn read(svc: &Service, problems: &mut Problems) -> Option<Self> {
        let spec = svc.spec.as_ref()?;
        let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !matches!(type_, "ClusterIP" | "NodePort" | "LoadBalancer") {
            problems.push("spec.type", format!("unsupported {type_:?}"));
            return None;
        }
        let external_ips = unique(parse_ips(
            spec.external_ips.iter().flatten(),
            "spec.externalIPs",
            problems,
        ));
        let externally_accessible = type_ != "ClusterIP" || !external_ips.is_empty();
        let external_policy_local = externally_accessible
            && read_policy(
                spec.external_traffic_policy.as_deref(),
                "spec.externalTrafficPolicy",
                problems,
            );
        let health_check_node_port = if type_ == "LoadBalancer" && external_policy_local {
            read_health_check_node_port(spec.health_check_node_port, problems)
        } else {
            0
        };
        Some(ServiceShared {
            cluster_ips: read_cluster_ips(spec, problems)?,
            external_ips,
            load_balancer_ips: unique(read_load_balancer_ips(svc, problems)),
            source_ranges: unique(read_source_ranges(
                spec.load_balancer_source_ranges.as_deref(),
                problems,
            )?),
            session_affinity: read_session_affinity(spec, problems)?,
            external_policy_local,
            internal_policy_local: read_policy(
                spec.internal_traffic_policy.as_deref(),
                "spec.internalTrafficPolicy",
                problems,
            ),
            health_check_node_port,
        })
    }

    /// The model port of `family`, if the Service has a ClusterIP of that family.
    fn port_for(
        &self,
        family: IpFamily,
        name: &ServicePortName,
        port: u16,
        node_port: u16,
    ) -> Option<ServicePort> {
        let of_family = |ips: &[IpAddr]| {
            ips.iter()
                .copied()
                .filter(|ip| IpFamily::of(ip) == family)
                .collect()
        };
        Some(ServicePort {
            name: name.clone(),
            family,
            cluster_ip: self
                .cluster_ips
                .iter()
                .copied()
                .find(|ip| IpFamily::of(ip) == family)?,
            port,
            node_port,
            external_ips: of_family(&self.external_ips),
            load_balancer_ips: of_family(&self.load_balancer_ips),
            load_balancer_source_ranges: self
                .source_ranges
                .iter()
                .copied()
                .filter(|net| IpFamily::of_net(net) == family)
                .collect(),
            session_affinity: self.session_affinity,
            external_policy_local: self.external_policy_local,
            internal_policy_local: self.internal_policy_local,
            health_check_node_port: self.health_check_node_port,
        })
    }
}

/// `items` without repeats, in their first order: the API lets an address be listed twice,
/// and a backend would then add the same set element twice.
fn unique<T: Copy + Eq + std::hash::Hash>(items: Vec<T>) -> Vec<T> {
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    items.into_iter().filter(|x| seen.insert(*x)).collect()
}

/// The ClusterIPs, at most one per family: `spec.clusterIPs`, else `spec.clusterIP`.
/// `None` (the Service is unusable) if one of them does not parse.
fn read_cluster_ips(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    problems: &mut Problems,
) -> Option<Vec<IpAddr>> {
    let raw: Vec<(String, &str)> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip.as_str()))
            .collect(),
        _ => spec
            .cluster_ip
            .iter()
            .map(|ip| ("spec.clusterIP".to_string(), ip.as_str()))
            .collect(),
    };
    let mut parsed = Vec::with_capacity(raw.len());
    for (field, s) in raw {
        let Some(ip) = parse_ip_sloppy(s) else {
            problems.push(field, format!("invalid IP {s:?}"));
            return None;
        };
        parsed.push(ip);
    }
    Some(first_per_family(parsed))
}

/// `status.loadBalancer.ingress[].ip`, except `ipMode: Proxy` ones, which the load balancer
/// itself delivers to the node and so need no rules.
fn read_load_balancer_ips(svc: &Service, problems: &mut Problems) -> Vec<IpAddr> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let mut out = Vec::new();
    for (i, ing) in ingress.into_iter().flatten().enumerate() {
        let ip = match ing.ip.as_deref() {
            None | Some("") => continue,
            Some(ip) => ip,
        };
        if ing.ip_mode.as_deref() == Some("Proxy") {
            continue;
        }
        match parse_ip_sloppy(ip) {
            Some(ip) => out.push(ip),
            None => problems.push(
                format!("status.loadBalancer.ingress[{i}].ip"),
                format!("invalid IP {ip:?}"),
            ),
        }
    }
    out
}

/// `spec.loadBalancerSourceRanges`, trimmed (validation lets whitespace through) and
/// normalized. `None` if one does not parse: dropping it would open the load balancer to
/// more sources than its owner allowed, so the Service is not programmed at all.
fn read_source_ranges(ranges: Option<&[String]>, problems: &mut Problems) -> Option<Vec<IpNet>> {
    let mut out = Vec::new();
    for (i, raw) in ranges.into_iter().flatten().enumerate() {
        match parse_cidr_sloppy(raw.trim()) {
            Some(net) => out.push(net),
            None => {
                problems.push(
                    format!("spec.loadBalancerSourceRanges[{i}]"),
                    format!("invalid CIDR {raw:?}"),
                );
                return None;
            }
        }
    }
    Some(out)
}

/// `Some(None)` without affinity, `Some(Some(..))` with ClientIP affinity, `None` when the
/// affinity cannot be read (the Service is unusable).
fn read_session_affinity(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    problems: &mut Problems,
) -> Option<Option<SessionAffinity>> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => return Some(None),
        Some("ClientIP") => {}
        Some(other) => {
            problems.push("spec.sessionAffinity", format!("unsupported {other:?}"));
            return None;
        }
    }
    let timeout = spec
        .session_affinity_config
        .as_ref()
        .and_then(|c| c.client_ip.as_ref())
        .and_then(|c| c.timeout_seconds);
    let timeout_seconds = match timeout {
        None => SessionAffinity::DEFAULT_TIMEOUT_SECONDS,
        Some(t @ 1..=MAX_AFFINITY_TIMEOUT_SECONDS) => t.unsigned_abs(),
        Some(t) => {
            problems.push(
                "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                format!("{t} is out of range 1-{MAX_AFFINITY_TIMEOUT_SECONDS}"),
            );
            return None;
        }
    };
    Some(Some(SessionAffinity { timeout_seconds }))
}

/// True for `Local`; `Cluster` and unset are the default.
fn read_policy(policy: Option<&str>, field: &str, problems: &mut Problems) -> bool {
    match policy {
        Some("Local") => true,
        None | Some("Cluster") => false,
        Some(other) => {
            problems.push(field, format!("unsupported {other:?}, using Cluster"));
            false
        }
    }
}

fn read_health_check_node_port(port: Option<i32>, problems: &mut Problems) -> u16 {
    match port.map(u16::try_from) {
        Some(Ok(p)) if p != 0 => p,
        None | Some(Ok(_)) => {
            // Upstream logs this too: the API server allocates one for such Services.
            problems.push(
                "spec.healthCheckNodePort",
                "missing for a LoadBalancer with externalTrafficPolicy Local",
            );
            0
        }
        Some(Err(_)) => {
            problems.push(
                "spec.healthCheckNodePort",
                format!("{} is out of range 1-65535", port.unwrap_or(0)),
            );
            0
        }
    }
}

fn parse_ips<'a>(
    raw: impl Iterator<Item = &'a String>,
    field: &str,
    problems: &mut Problems,
) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for (i, s) in raw.enumerate() {
        match parse_ip_sloppy(s) {
            Some(ip) => out.push(ip),
            None => problems.push(format!("{field}[{i}]"), format!("invalid IP {s:?}")),
        }
    }
    out
}

/// The endpoints one EndpointSlice contributes, ready to be merged with the Service's
/// other slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoints {
    /// The Service the slice belongs to (its `kubernetes.io/service-name` label).
    pub service: ObjectKey,
    /// The slice's `addressType`; endpoints of the other family are dropped.
    pub family: IpFamily,
    pub ports: Vec<SlicePort>,
    /// One entry per usable endpoint. `port` is 0: an endpoint serves every port of its
    /// slice, so the port is filled in per [`SlicePort`] when the slice is merged.
    pub endpoints: Vec<Endpoint>,
}

/// One `ports[]` entry of an EndpointSlice: the Service port it serves and the target port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    /// The Service port's name (empty for an unnamed port).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// The endpoints of an EndpointSlice as seen from node `node_name`, or `None` when the
/// proxy does not use the slice (FQDN address type, labelled for another proxy or as
/// headless, no Service name).
pub fn endpoint_slice(slice: &EndpointSlice, node_name: &str) -> Converted<Option<SliceEndpoints>> {
    let key = match object_key("EndpointSlice", &slice.metadata) {
        Ok(key) => key,
        Err(e) => {
            return Converted {
                value: None,
                problems: vec![e],
            }
        }
    };
    let mut problems = Problems::new("EndpointSlice", &key);
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        other => {
            tracing::debug!(slice = %key, address_type = other, "ignoring EndpointSlice address type");
            return problems.finish(None);
        }
    };
    if has_label(&slice.metadata, LABEL_SERVICE_PROXY_NAME)
        || has_label(&slice.metadata, LABEL_HEADLESS)
    {
        return problems.finish(None);
    }
    let service_name = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_SERVICE_NAME));
    let Some(service_name) = service_name.filter(|n| !n.is_empty()) else {
        problems.push(format!("metadata.labels[{LABEL_SERVICE_NAME}]"), "missing");
        return problems.finish(None);
    };
    let ports = slice
        .ports
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, p)| read_slice_port(i, p, &mut problems))
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, ep)| read_endpoint(i, ep, family, node_name, &mut problems))
        .collect();
    let service = ObjectKey::new(key.namespace.clone(), service_name.clone());
    problems.finish(Some(SliceEndpoints {
        service,
        family,
        ports,
        endpoints,
    }))
}

fn read_slice_port(
    i: usize,
    p: &discovery::EndpointPort,
    problems: &mut Problems,
) -> Option<SlicePort> {
    // Upstream ignores ports without a name (the controller always sets one, "" when the
    // Service port is unnamed) and ports without a number ("all ports" is unimplemented).
    let Some(name) = p.name.clone() else {
        problems.push(format!("ports[{i}].name"), "missing, port ignored");
        return None;
    };
    let protocol_str = p.protocol.as_deref().unwrap_or("TCP");
    let Some(protocol) = Protocol::from_k8s(protocol_str) else {
        problems.push(
            format!("ports[{i}].protocol"),
            format!("unsupported {protocol_str:?}"),
        );
        return None;
    };
    match p.port.map(u16::try_from) {
        Some(Ok(port)) if port != 0 => Some(SlicePort {
            name,
            protocol,
            port,
        }),
        _ => {
            let shown = p.port.map_or_else(
                || "missing".to_string(),
                |n| format!("{n} is out of range 1-65535"),
            );
            problems.push(format!("ports[{i}].port"), shown);
            None
        }
    }
}

fn read_endpoint(
    i: usize,
    ep: &discovery::Endpoint,
    family: IpFamily,
    node_name: &str,
    problems: &mut Problems,
) -> Option<Endpoint> {
    // Like upstream, only the first address counts: the others are the same endpoint.
    let Some(raw) = ep.addresses.first() else {
        problems.push(
            format!("endpoints[{i}].addresses"),
            "empty, endpoint ignored",
        );
        return None;
    };
    let Some(ip) = parse_ip_sloppy(raw) else {
        problems.push(
            format!("endpoints[{i}].addresses[0]"),
            format!("invalid IP {raw:?}"),
        );
        return None;
    };
    if IpFamily::of(&ip) != family {
        problems.push(
            format!("endpoints[{i}].addresses[0]"),
            format!("{ip} is not {family}"),
        );
        return None;
    }
    let conditions = ep.conditions.as_ref();
    let hints = ep.hints.as_ref();
    Some(Endpoint {
        ip,
        port: 0,
        // Unset conditions mean the endpoint is usable and not going away.
        ready: conditions.and_then(|c| c.ready).unwrap_or(true),
        serving: conditions.and_then(|c| c.serving).unwrap_or(true),
        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        is_local: !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name),
        zone_hints: hints
            .and_then(|h| h.for_zones.as_ref())
            .into_iter()
            .flatten()
            .map(|z| z.name.clone())
            .collect(),
        node_hints: hints
            .and_then(|h| h.for_nodes.as_ref())
            .into_iter()
            .flatten()
            .map(|n| n.name.clone())
            .collect(),
    })
}

/// The slice's `endpoints.kubernetes.io/last-change-trigger-time`, if set and valid.
pub fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let raw = slice
        .metadata
        .annotations
        .as_ref()?
        .get(ANNOTATION_LAST_CHANGE_TRIGGER_TIME)?;
    match raw.parse::<k8s_openapi::jiff::Timestamp>() {
        // Before 1970 cannot be a trigger time; such a value is as useless as a typo.
        Ok(t) => {
            let secs = u64::try_from(t.as_second()).ok()?;
            let nanos = u32::try_from(t.subsec_nanosecond()).ok()?;
            SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
        }
        Err(e) => {
            tracing::debug!(annotation = %raw, error = %e, "ignoring unparsable trigger time");
            None
        }
    }
}

/// What the proxy reads from its own Node object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The `topology.kubernetes.io/zone` label.
    pub zone: Option<String>,
    /// The primary node IP first, then the first IP of the other family, as upstream's
    /// `GetNodeHostIPs`: InternalIPs rank before ExternalIPs.
    pub ips: Vec<IpAddr>,
    /// `spec.podCIDRs`, else `spec.podCIDR`.
    pub pod_cidrs: Vec<IpNet>,
    /// The Node is going away: it has a deletionTimestamp or the cluster autoscaler's
    /// `ToBeDeletedByClusterAutoscaler` taint, so `/healthz` turns load balancers away.
    pub to_be_deleted: bool,
}

/// The taint the cluster autoscaler puts on a Node it is about to delete.
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

/// The facts the proxy needs from a Node.
pub fn node_facts(node: &Node) -> Converted<NodeFacts> {
    let name = node
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "<unnamed>".into());
    let mut problems = Problems::new("Node", name);
    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
        .cloned();
    let ips = node_ips(node, &mut problems);
    let spec = node.spec.as_ref();
    let (field, raw): (&str, Vec<&String>) = match spec.and_then(|s| s.pod_cidrs.as_ref()) {
        Some(cidrs) if !cidrs.is_empty() => ("spec.podCIDRs", cidrs.iter().collect()),
        _ => (
            "spec.podCIDR",
            spec.and_then(|s| s.pod_cidr.as_ref()).into_iter().collect(),
        ),
    };
    let pod_cidrs = parse_cidrs(raw, field, &mut problems);
    let tainted = spec
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|taints| taints.iter().any(|t| t.key == TAINT_TO_BE_DELETED));
    problems.finish(NodeFacts {
        zone,
        ips,
        pod_cidrs,
        to_be_deleted: node.metadata.deletion_timestamp.is_some() || tainted,
    })
}

fn node_ips(node: &Node, problems: &mut Problems) -> Vec<IpAddr> {
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    let mut ranked = Vec::new();
    for wanted in ["InternalIP", "ExternalIP"] {
        for (i, addr) in addresses
            .into_iter()
            .flatten()
            .enumerate()
            .filter(|(_, a)| a.type_ == wanted)
        {
            match parse_ip_sloppy(&addr.address) {
                Some(ip) => ranked.push(ip),
                None => problems.push(
                    format!("status.addresses[{i}].address"),
                    format!("invalid IP {:?}", addr.address),
                ),
            }
        }
    }
    first_per_family(ranked)
}

/// The first address of each family, in the order they come.
pub fn first_per_family(ips: impl IntoIterator<Item = IpAddr>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in ips {
        if out
            .iter()
            .all(|have| IpFamily::of(have) != IpFamily::of(&ip))
        {
            out.push(ip);
        }
    }
    out
}

/// The ranges of a ServiceCIDR object.
pub fn service_cidrs(obj: &ServiceCIDR) -> Converted<Vec<IpNet>> {
    let name = obj
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| "<unnamed>".into());
    let mut problems = Problems::new("ServiceCIDR", name);
    let raw = obj
        .spec
        .as_ref()
        .and_then(|s| s.cidrs.as_ref())
        .into_iter()
        .flatten()
        .collect();
    let cidrs = parse_cidrs(raw, "spec.cidrs", &mut problems);
    problems.finish(cidrs)
}

fn parse_cidrs(raw: Vec<&String>, field: &str, problems: &mut Problems) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        match parse_cidr_sloppy(s) {
            Some(net) => out.push(net),
            None => problems.push(format!("{field}[{i}]"), format!("invalid CIDR {s:?}")),
        }
    }
    out
}

/// Parses an IP address as Go's `ParseIPSloppy` does: IPv4 octets may carry leading zeros
/// (read as decimal, not octal), and an IPv4-mapped IPv6 address is an IPv4 address.
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    let ip = if !s.contains(':') {
        IpAddr::V4(parse_ipv4_sloppy(s)?)
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        ip
    } else {
        // An IPv6 address ending in a dotted quad with leading zeros.
        let (head, tail) = s.rsplit_once(':')?;
        format!("{head}:{}", parse_ipv4_sloppy(tail)?)
            .parse()
            .ok()?
    };
    Some(match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    })
}

fn parse_ipv4_sloppy(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        *octet = parse_decimal(parts.next()?, 255)?.try_into().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// A non-empty run of ASCII digits, any number of leading zeros, at most `max`.
fn parse_decimal(s: &str, max: u16) -> Option<u16> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = s.trim_start_matches('0');
    if digits.len() > 3 {
        return None;
    }
    let n = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    (n <= max).then_some(n)
}

/// Parses a CIDR as Go's `ParseCIDRSloppy` does (leading zeros tolerated, see
/// [`parse_ip_sloppy`]) and masks off host bits: `203.0.113.000/025` is `203.0.113.0/25`.
pub fn parse_cidr_sloppy(s: &str) -> Option<IpNet> {
    let (addr, prefix) = s.split_once('/')?;
    let ip = parse_ip_sloppy(addr)?;
    let mut prefix = parse_decimal(prefix, 128)?;
    if ip.is_ipv4() && addr.contains(':') {
        // An IPv4-mapped IPv6 prefix: only the bits past ::ffff:0:0/96 say anything.
        prefix = prefix.checked_sub(96)?;
    }
    Some(IpNet::new(ip, prefix.try_into().ok()?).ok()?.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
        serde_json::from_value(v).expect("test object deserializes")
    }

    fn service(spec: Value) -> Service {
        from(json!({"metadata": {"name": "svc", "namespace": "ns"}, "spec": spec}))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn messages(problems: &[ConvertError]) -> Vec<String> {
        problems.iter().map(ToString::to_string).collect()
    }

    /// Converts and asserts there were no problems.
    fn clean_ports(svc: &Service) -> Vec<ServicePort> {
        let c = service_ports(svc);
        assert_eq!(messages(&c.problems), Vec::<String>::new());
        c.value
    }

    #[test]
    fn plain_cluster_ip_service_with_api_defaults() {
        let ports = clean_ports(&service(
            json!({"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}),
        ));
        assert_eq!(ports.len(), 1);
        let p = &ports[0];
        assert_eq!(p.name.to_string(), "ns/svc");
        assert_eq!(p.name.protocol, Protocol::Tcp, "protocol defaults to TCP");
        assert_eq!(
            (p.family, p.cluster_ip, p.port, p.node_port),
            (IpFamily::V4, ip("10.96.0.5"), 80, 0)
        );
        assert!(p.session_affinity.is_none());
        assert!(!p.external_policy_local && !p.internal_policy_local);
        assert_eq!(p.health_check_node_port, 0);
    }

    #[test]
    fn cluster_ips_give_one_port_per_family() {
        let svc = service(json!({
            "clusterIP": "fd00:10:96::7",
            "clusterIPs": ["fd00:10:96::7", "10.96.0.7"],
            "ipFamilies": ["IPv6", "IPv4"],
            "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}],
        }));
        let ports = clean_ports(&svc);
        let got: Vec<(String, IpFamily, IpAddr)> = ports
            .iter()
            .map(|p| (p.name.to_string(), p.family, p.cluster_ip))
            .collect();
        assert_eq!(
            got,
            [
                ("ns/svc:http".into(), IpFamily::V4, ip("10.96.0.7")),
                ("ns/svc:http".into(), IpFamily::V6, ip("fd00:10:96::7")),
                ("ns/svc:dns".into(), IpFamily::V4, ip("10.96.0.7")),
                ("ns/svc:dns".into(), IpFamily::V6, ip("fd00:10:96::7")),
            ]
        );
        assert_eq!(ports[2].name.protocol, Protocol::Udp);
    }

    #[test]
    fn single_cluster_ip_without_cluster_ips_field() {
        let ports = clean_ports(&service(
            json!({"clusterIP": "fd00::5", "ports": [{"port": 80}]}),
        ));
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].family, IpFamily::V6);
    }

    #[test]
    fn services_the_proxy_ignores_yield_nothing_and_no_error() {
        let port = json!([{"port": 80}]);
        let cases = [
            service(json!({"clusterIP": "None", "ports": port})),
            service(json!({"clusterIP": "", "ports": port})),
            service(json!({"ports": port})),
            service(
                json!({"type": "ExternalName", "externalName": "db.example.com", "ports": port}),
            ),
            from(json!({
                "metadata": {"name": "svc", "namespace": "ns",
                             "labels": {LABEL_SERVICE_PROXY_NAME: "other"}},
                "spec": {"clusterIP": "10.96.0.5", "ports": port},
            })),
            from(json!({
                "metadata": {"name": "svc", "namespace": "ns", "labels": {LABEL_HEADLESS: ""}},
                "spec": {"clusterIP": "10.96.0.5", "ports": port},
            })),
            from(json!({"metadata": {"name": "svc", "namespace": "ns"}})),
        ];
        for svc in &cases {
            assert_eq!(clean_ports(svc), Vec::new(), "{svc:?}");
        }
    }

    #[test]
    fn node_port_external_ips_and_load_balancer_ips_per_family() {
        let svc: Service = from(json!({
            "metadata": {"name": "svc", "namespace": "ns"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIPs": ["10.96.0.9", "fd00::9"],
                "externalIPs": ["198.51.100.1", "2001:db8::1", "198.51.100.2", "198.51.100.1"],
                "ports": [{"port": 443, "nodePort": 30443}],
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "203.0.113.1"},
                {"ip": "203.0.113.2", "ipMode": "VIP"},
                {"ip": "203.0.113.3", "ipMode": "Proxy"},
                {"hostname": "lb.example.com"},
                {"ip": "2001:db8::10"},
                {"ip": "203.0.113.1"},
            ]}},
        }));
        let ports = clean_ports(&svc);
        let (v4, v6) = (&ports[0], &ports[1]);
        assert_eq!((v4.node_port, v6.node_port), (30443, 30443));
        assert_eq!(v4.external_ips, [ip("198.51.100.1"), ip("198.51.100.2")]);
        assert_eq!(v6.external_ips, [ip("2001:db8::1")]);
        assert_eq!(v4.load_balancer_ips, [ip("203.0.113.1"), ip("203.0.113.2")]);
        assert_eq!(v6.load_balancer_ips, [ip("2001:db8::10")]);
    }

    #[test]
    fn bad_addresses_are_skipped_one_by_one_and_named() {
        let svc: Service = from(json!({
            "metadata": {"name": "svc", "namespace": "ns"},
            "spec": {"clusterIP": "10.96.0.9", "externalIPs": ["nope", "198.51.100.1"], "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "300.1.1.1"}, {"ip": "203.0.113.1"}]}},
        }));
        let c = service_ports(&svc);
        assert_eq!(
            messages(&c.problems),
            [
                r#"Service ns/svc: spec.externalIPs[0]: invalid IP "nope""#,
                r#"Service ns/svc: status.loadBalancer.ingress[0].ip: invalid IP "300.1.1.1""#,
            ]
        );
        assert_eq!(c.value[0].external_ips, [ip("198.51.100.1")]);
        assert_eq!(c.value[0].load_balancer_ips, [ip("203.0.113.1")]);
    }

    #[test]
    fn source_ranges_are_trimmed_sloppy_and_split_by_family() {
        let svc = service(json!({
            "type": "LoadBalancer",
            "clusterIPs": ["10.96.0.9", "fd00::9"],
            "loadBalancerSourceRanges": [" 203.0.113.000/025 ", "2001:db8::/32\t", "10.1.2.3/8", "203.0.113.0/25"],
            "ports": [{"port": 80, "nodePort": 30080}],
        }));
        let ports = clean_ports(&svc);
        assert_eq!(
            ports[0].load_balancer_source_ranges,
            [net("203.0.113.0/25"), net("10.0.0.0/8")]
        );
        assert_eq!(ports[1].load_balancer_source_ranges, [net("2001:db8::/32")]);
    }

    #[test]
    fn an_invalid_source_range_rejects_the_service_rather_than_widening_it() {
        let svc = service(json!({
            "type": "LoadBalancer", "clusterIP": "10.96.0.9",
            "loadBalancerSourceRanges": ["203.0.113.0/24", "203.0.113.0/33"],
            "ports": [{"port": 80, "nodePort": 30080}],
        }));
        let c = service_ports(&svc);
        assert!(c.value.is_empty());
        assert_eq!(
            messages(&c.problems),
            [r#"Service ns/svc: spec.loadBalancerSourceRanges[1]: invalid CIDR "203.0.113.0/33""#]
        );
    }

    #[test]
    fn session_affinity_defaults_and_limits() {
        let affinity = |extra: Value| {
            let mut spec = json!({"clusterIP": "10.96.0.9", "ports": [{"port": 80}], "sessionAffinity": "ClientIP"});
            spec.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            service_ports(&service(spec))
        };
        let c = affinity(json!({}));
        assert_eq!(
            c.value[0].session_affinity,
            Some(SessionAffinity {
                timeout_seconds: 10800
            })
        );
        let c = affinity(json!({"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}));
        assert_eq!(
            c.value[0].session_affinity,
            Some(SessionAffinity {
                timeout_seconds: 600
            })
        );
        let c = affinity(json!({"sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}}));
        assert!(c.value.is_empty());
        assert_eq!(
            messages(&c.problems),
            ["Service ns/svc: spec.sessionAffinityConfig.clientIP.timeoutSeconds: 0 is out of range 1-86400"]
        );
        let none = clean_ports(&service(
            json!({"clusterIP": "10.96.0.9", "ports": [{"port": 80}], "sessionAffinity": "None"}),
        ));
        assert_eq!(none[0].session_affinity, None);
    }

    #[test]
    fn external_policy_local_only_counts_when_externally_accessible() {
        let local = |spec: Value| {
            let p = &clean_ports(&service(spec))[0];
            (p.external_policy_local, p.health_check_node_port)
        };
        let port = json!([{"port": 80, "nodePort": 30080}]);
        let cluster_only = json!({"clusterIP": "10.96.0.9", "externalTrafficPolicy": "Local", "ports": [{"port": 80}]});
        assert_eq!(local(cluster_only), (false, 0));
        let with_external_ip = json!({"clusterIP": "10.96.0.9", "externalIPs": ["198.51.100.1"],
                                      "externalTrafficPolicy": "Local", "ports": [{"port": 80}]});
        assert_eq!(local(with_external_ip), (true, 0));
        let node_port = json!({"type": "NodePort", "clusterIP": "10.96.0.9", "externalTrafficPolicy": "Local",
                               "healthCheckNodePort": 32000, "ports": port});
        assert_eq!(
            local(node_port),
            (true, 0),
            "only LoadBalancers get health checks"
        );
        let lb = json!({"type": "LoadBalancer", "clusterIP": "10.96.0.9", "externalTrafficPolicy": "Local",
                        "healthCheckNodePort": 32000, "ports": port});
        assert_eq!(local(lb), (true, 32000));
        let lb_cluster = json!({"type": "LoadBalancer", "clusterIP": "10.96.0.9", "externalTrafficPolicy": "Cluster",
                                "healthCheckNodePort": 32000, "ports": port});
        assert_eq!(local(lb_cluster), (false, 0));
    }

    #[test]
    fn load_balancer_local_without_health_check_port_is_reported_but_kept() {
        let svc = service(json!({"type": "LoadBalancer", "clusterIP": "10.96.0.9",
                                 "externalTrafficPolicy": "Local", "ports": [{"port": 80, "nodePort": 30080}]}));
        let c = service_ports(&svc);
        assert_eq!(c.value.len(), 1);
        assert_eq!(c.value[0].health_check_node_port, 0);
        assert_eq!(c.problems.len(), 1);
        assert_eq!(c.problems[0].field, "spec.healthCheckNodePort");
    }

    #[test]
    fn internal_policy_local() {
        let p = clean_ports(&service(
            json!({"clusterIP": "10.96.0.9", "internalTrafficPolicy": "Local", "ports": [{"port": 80}]}),
        ));
        assert!(p[0].internal_policy_local);
    }

    #[test]
    fn bad_ports_are_skipped_and_named_the_rest_kept() {
        let svc = service(json!({
            "clusterIP": "10.96.0.9",
            "ports": [
                {"name": "ok", "port": 80},
                {"name": "p1", "port": 81, "protocol": "XYZ"},
                {"name": "p2", "port": 70000},
                {"name": "p3", "port": 0},
                {"name": "p4", "port": 84, "nodePort": -1},
                {"name": "ok", "port": 85},
            ],
        }));
        let c = service_ports(&svc);
        assert_eq!(c.value.len(), 1);
        assert_eq!(c.value[0].name.port, "ok");
        assert_eq!(
            messages(&c.problems),
            [
                r#"Service ns/svc: spec.ports[1].protocol: unsupported "XYZ""#,
                "Service ns/svc: spec.ports[2].port: 70000 is out of range 1-65535",
                "Service ns/svc: spec.ports[3].port: 0 is out of range 1-65535",
                "Service ns/svc: spec.ports[4].nodePort: -1 is out of range 0-65535",
                r#"Service ns/svc: spec.ports[5]: duplicate port name "ok" for tcp"#,
            ]
        );
    }

    #[test]
    fn names_that_would_not_survive_as_rule_names_are_refused() {
        let named = |namespace: &str, name: &str| -> Service {
            from(json!({
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80}]},
            }))
        };
        for (namespace, name, field) in [
            ("ns", "Web", "metadata.name"),
            ("ns", "web app", "metadata.name"),
            ("ns", "9web", "metadata.name"),
            ("ns", "caf\u{e9}", "metadata.name"),
            ("ns", &"a".repeat(64), "metadata.name"),
            ("ns/x", "web", "metadata.namespace"),
            ("-ns", "web", "metadata.namespace"),
        ] {
            let c = service_ports(&named(namespace, name));
            assert!(c.value.is_empty(), "{namespace}/{name} was accepted");
            assert_eq!(c.problems.len(), 1, "{namespace}/{name}");
            assert_eq!(c.problems[0].field, field, "{namespace}/{name}");
        }
        assert_eq!(clean_ports(&named("kube-system", "kube-dns-2")).len(), 1);
        assert_eq!(clean_ports(&named("0ns", &"a".repeat(63))).len(), 1);

        let c = service_ports(&service(json!({
            "clusterIP": "10.96.0.9",
            "ports": [{"name": "HTTP", "port": 80}, {"name": "dns-tcp", "port": 53}],
        })));
        assert_eq!(c.value.len(), 1);
        assert_eq!(c.value[0].name.port, "dns-tcp");
        assert_eq!(
            messages(&c.problems),
            [r#"Service ns/svc: spec.ports[0].name: "HTTP" must be a DNS-1123 label"#]
        );
    }

    #[test]
    fn unusable_services_are_named() {
        let nameless: Service =
            from(json!({"metadata": {"namespace": "ns"}, "spec": {"clusterIP": "10.96.0.9"}}));
        let bad_ip = service(json!({"clusterIP": "10.96.0.999", "ports": [{"port": 80}]}));
        let bad_type =
            service(json!({"type": "Weird", "clusterIP": "10.96.0.9", "ports": [{"port": 80}]}));
        let got: Vec<Vec<String>> = [nameless, bad_ip, bad_type]
            .iter()
            .map(|s| {
                let c = service_ports(s);
                assert!(c.value.is_empty());
                messages(&c.problems)
            })
            .collect();
        assert_eq!(
            got,
            [
                vec!["Service ns/<unnamed>: metadata.name: missing".to_string()],
                vec![r#"Service ns/svc: spec.clusterIP: invalid IP "10.96.0.999""#.to_string()],
                vec![r#"Service ns/svc: spec.type: unsupported "Weird""#.to_string()],
            ]
        );
    }

    fn slice(extra: Value) -> EndpointSlice {
        let mut v = json!({
            "metadata": {"name": "svc-abc", "namespace": "ns", "labels": {LABEL_SERVICE_NAME: "svc"}},
            "addressType": "IPv4",
            "endpoints": [],
        });
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        from(v)
    }

    #[test]
    fn slice_endpoints_conditions_locality_and_hints() {
        let s = slice(json!({
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["10.244.0.1", "10.244.0.99"], "nodeName": "node-a"},
                {"addresses": ["10.244.1.1"], "nodeName": "node-b",
                 "conditions": {"ready": false, "serving": true, "terminating": true},
                 "hints": {"forZones": [{"name": "zone-b"}], "forNodes": [{"name": "node-b"}]}},
                {"addresses": ["10.244.1.2"], "conditions": {"ready": false}},
                {"addresses": []},
            ],
        }));
        let c = endpoint_slice(&s, "node-a");
        assert_eq!(
            messages(&c.problems),
            ["EndpointSlice ns/svc-abc: endpoints[3].addresses: empty, endpoint ignored"]
        );
        let got = c.value.unwrap();
        assert_eq!(got.service, ObjectKey::new("ns", "svc"));
        assert_eq!(got.family, IpFamily::V4);
        assert_eq!(
            got.ports,
            [
                SlicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 8080
                },
                SlicePort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53
                },
            ]
        );
        let eps = &got.endpoints;
        assert_eq!(eps.len(), 3);
        assert_eq!(
            (
                eps[0].ip,
                eps[0].ready,
                eps[0].serving,
                eps[0].terminating,
                eps[0].is_local
            ),
            (ip("10.244.0.1"), true, true, false, true)
        );
        assert_eq!(
            (
                eps[1].ready,
                eps[1].serving,
                eps[1].terminating,
                eps[1].is_local
            ),
            (false, true, true, false)
        );
        assert_eq!(eps[1].zone_hints.iter().collect::<Vec<_>>(), ["zone-b"]);
        assert_eq!(eps[1].node_hints.iter().collect::<Vec<_>>(), ["node-b"]);
        assert_eq!(
            (eps[2].ready, eps[2].serving, eps[2].is_local),
            (false, true, false)
        );
    }

    #[test]
    fn slices_the_proxy_ignores() {
        let fqdn =
            slice(json!({"addressType": "FQDN", "endpoints": [{"addresses": ["db.example.com"]}]}));
        let other_proxy: EndpointSlice = from(json!({
            "metadata": {"name": "x", "namespace": "ns",
                         "labels": {LABEL_SERVICE_NAME: "svc", LABEL_SERVICE_PROXY_NAME: "other"}},
            "addressType": "IPv4", "endpoints": [],
        }));
        for s in [fqdn, other_proxy] {
            let c = endpoint_slice(&s, "node-a");
            assert_eq!((c.value, c.problems), (None, Vec::new()));
        }
    }

    #[test]
    fn bad_slices_and_slice_parts_are_named() {
        let unlabelled: EndpointSlice = from(json!({
            "metadata": {"name": "orphan", "namespace": "ns"}, "addressType": "IPv4", "endpoints": [],
        }));
        let c = endpoint_slice(&unlabelled, "node-a");
        assert!(c.value.is_none());
        assert_eq!(
            messages(&c.problems),
            ["EndpointSlice ns/orphan: metadata.labels[kubernetes.io/service-name]: missing"]
        );

        let s = slice(json!({
            "ports": [{"port": 80}, {"name": "a", "protocol": "XYZ", "port": 80}, {"name": "b"},
                      {"name": "c", "port": 65536}, {"name": "d"}],
            "endpoints": [{"addresses": ["fd00::1"]}, {"addresses": ["10.0.0.256"]}, {"addresses": ["10.0.0.1"]}],
        }));
        let c = endpoint_slice(&s, "node-a");
        assert_eq!(
            messages(&c.problems),
            [
                "EndpointSlice ns/svc-abc: ports[0].name: missing, port ignored",
                r#"EndpointSlice ns/svc-abc: ports[1].protocol: unsupported "XYZ""#,
                "EndpointSlice ns/svc-abc: ports[2].port: missing",
                "EndpointSlice ns/svc-abc: ports[3].port: 65536 is out of range 1-65535",
                "EndpointSlice ns/svc-abc: ports[4].port: missing",
                "EndpointSlice ns/svc-abc: endpoints[0].addresses[0]: fd00::1 is not IPv4",
                r#"EndpointSlice ns/svc-abc: endpoints[1].addresses[0]: invalid IP "10.0.0.256""#,
            ]
        );
        let got = c.value.unwrap();
        assert!(got.ports.is_empty());
        assert_eq!(got.endpoints.len(), 1);
    }

    #[test]
    fn trigger_time_annotation() {
        let annotated = |t: &str| -> EndpointSlice {
            from(json!({
                "metadata": {"name": "s", "namespace": "ns",
                             "annotations": {ANNOTATION_LAST_CHANGE_TRIGGER_TIME: t}},
                "addressType": "IPv4", "endpoints": [],
            }))
        };
        let t = trigger_time(&annotated("2026-02-20T11:02:17.5Z")).unwrap();
        let since_epoch = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(since_epoch.as_millis(), 1_771_585_337_500);
        assert_eq!(trigger_time(&annotated("yesterday")), None);
        assert_eq!(trigger_time(&slice(json!({}))), None);
    }

    fn node(addresses: Value, spec: Value) -> Node {
        from(json!({
            "metadata": {"name": "node-a", "labels": {LABEL_TOPOLOGY_ZONE: "zone-a"}},
            "spec": spec,
            "status": {"addresses": addresses},
        }))
    }

    #[test]
    fn node_ips_prefer_internal_then_external_one_per_family() {
        let n = node(
            json!([
                {"type": "Hostname", "address": "node-a"},
                {"type": "ExternalIP", "address": "203.0.113.5"},
                {"type": "ExternalIP", "address": "2001:db8::5"},
                {"type": "InternalIP", "address": "192.0.2.5"},
                {"type": "InternalIP", "address": "192.0.2.6"},
            ]),
            json!({"podCIDR": "10.244.0.0/24"}),
        );
        let facts = node_facts(&n).log();
        assert_eq!(facts.zone.as_deref(), Some("zone-a"));
        assert_eq!(facts.ips, [ip("192.0.2.5"), ip("2001:db8::5")]);
        assert_eq!(
            facts.pod_cidrs,
            [net("10.244.0.0/24")],
            "podCIDR when podCIDRs is unset"
        );

        let v6_primary = node(
            json!([{"type": "InternalIP", "address": "2001:db8::7"}, {"type": "InternalIP", "address": "192.0.2.7"}]),
            json!({"podCIDR": "10.244.0.0/24", "podCIDRs": ["fd00:10:244::/64", "10.244.0.0/24"]}),
        );
        let facts = node_facts(&v6_primary).log();
        assert_eq!(facts.ips, [ip("2001:db8::7"), ip("192.0.2.7")]);
        assert_eq!(
            facts.pod_cidrs,
            [net("fd00:10:244::/64"), net("10.244.0.0/24")]
        );
    }

    #[test]
    fn node_to_be_deleted_by_deletion_timestamp_or_autoscaler_taint() {
        let plain = node(
            json!([]),
            json!({"taints": [{"key": "other", "effect": "NoSchedule"}]}),
        );
        assert!(!node_facts(&plain).log().to_be_deleted);
        let tainted = node(
            json!([]),
            json!({"taints": [{"key": TAINT_TO_BE_DELETED, "effect": "NoSchedule"}]}),
        );
        assert!(node_facts(&tainted).log().to_be_deleted);
        let mut deleting = node(json!([]), json!({}));
        deleting.metadata.deletion_timestamp = from(json!("2026-01-01T00:00:00Z"));
        assert!(node_facts(&deleting).log().to_be_deleted);
    }

    #[test]
    fn node_problems_are_named() {
        let n = node(
            json!([{"type": "InternalIP", "address": "bogus"}]),
            json!({"podCIDRs": ["10.244.0.0/99"]}),
        );
        let c = node_facts(&n);
        assert!(c.value.ips.is_empty() && c.value.pod_cidrs.is_empty());
        assert_eq!(
            messages(&c.problems),
            [
                r#"Node node-a: status.addresses[0].address: invalid IP "bogus""#,
                r#"Node node-a: spec.podCIDRs[0]: invalid CIDR "10.244.0.0/99""#,
            ]
        );
    }

    #[test]
    fn service_cidr_ranges() {
        let sc: ServiceCIDR = from(json!({"metadata": {"name": "kubernetes"},
                                          "spec": {"cidrs": ["10.96.0.0/16", "fd00:10:96::/112", "x"]}}));
        let c = service_cidrs(&sc);
        assert_eq!(c.value, [net("10.96.0.0/16"), net("fd00:10:96::/112")]);
        assert_eq!(
            messages(&c.problems),
            [r#"ServiceCIDR kubernetes: spec.cidrs[2]: invalid CIDR "x""#]
        );
    }

    #[test]
    fn sloppy_ip_parsing_like_go() {
        let cases = [
            ("10.1.2.3", Some("10.1.2.3")),
            ("010.001.000.001", Some("10.1.0.1")),
            ("0000000000010.0.0.1", Some("10.0.0.1")),
            ("::ffff:1.2.3.4", Some("1.2.3.4")),
            ("::ffff:001.002.003.004", Some("1.2.3.4")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("256.1.1.1", None),
            ("1.2.3", None),
            ("1.2.3.4.5", None),
            ("+1.2.3.4", None),
            ("1..2.3", None),
            ("", None),
            ("fe80::1%eth0", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_ip_sloppy(input), want.map(ip), "{input:?}");
        }
    }

    #[test]
    fn sloppy_cidr_parsing_like_go() {
        let cases = [
            ("203.0.113.000/025", Some("203.0.113.0/25")),
            ("10.1.2.3/8", Some("10.0.0.0/8")),
            ("fd00::1/64", Some("fd00::/64")),
            ("0.0.0.0/0", Some("0.0.0.0/0")),
            ("::ffff:10.0.0.0/104", Some("10.0.0.0/8")),
            ("10.0.0.0/33", None),
            ("10.0.0.0/", None),
            ("10.0.0.0", None),
            ("10.0.0.0/-1", None),
            ("fd00::/129", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_cidr_sloppy(input), want.map(net), "{input:?}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn ip_text() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
                any::<std::net::Ipv6Addr>().prop_map(|ip| ip.to_string()),
                "[0-9a-f:./ ]{0,20}",
            ]
        }

        fn word(options: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
            proptest::option::of(proptest::sample::select(options).prop_map(str::to_string))
        }

        prop_compose! {
            fn any_service()(
                cluster_ips in proptest::collection::vec(ip_text(), 0..3),
                external_ips in proptest::collection::vec(ip_text(), 0..3),
                ingress in proptest::collection::vec((ip_text(), word(&["VIP", "Proxy"])), 0..3),
                ranges in proptest::collection::vec(
                    prop_oneof![ip_text(), (ip_text(), 0u8..140).prop_map(|(ip, p)| format!("{ip}/{p}"))], 0..3),
                ports in proptest::collection::vec(
                    (word(&["a", "b", ""]), any::<i32>(), proptest::option::of(any::<i32>()),
                     word(&["TCP", "UDP", "SCTP", "tcp", "XYZ"])), 0..4),
                type_ in word(&["ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "Bogus"]),
                affinity in word(&["ClientIP", "None", "Sticky"]),
                timeout in proptest::option::of(any::<i32>()),
                etp in word(&["Local", "Cluster", "Elsewhere"]),
                hc in proptest::option::of(any::<i32>()),
            ) -> Service {
                let ports: Vec<Value> = ports.into_iter().map(|(name, port, node_port, protocol)| {
                    json!({"name": name, "port": port, "nodePort": node_port, "protocol": protocol})
                }).collect();
                let ingress: Vec<Value> = ingress.into_iter().map(|(ip, mode)| json!({"ip": ip, "ipMode": mode})).collect();
                from(json!({
                    "metadata": {"name": "svc", "namespace": "ns"},
                    "spec": {
                        "clusterIP": cluster_ips.first(), "clusterIPs": cluster_ips, "externalIPs": external_ips,
                        "loadBalancerSourceRanges": ranges, "ports": ports, "type": type_,
                        "sessionAffinity": affinity,
                        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": timeout}},
                        "externalTrafficPolicy": etp, "healthCheckNodePort": hc,
                    },
                    "status": {"loadBalancer": {"ingress": ingress}},
                }))
            }
        }

        proptest! {
            // Failures print their shrunk input; no regression files in the tree.
            #![proptest_config(ProptestConfig {
                failure_persistence: None,
                ..ProptestConfig::default()
            })]
            #[test]
            fn any_service_converts_without_panicking_into_consistent_ports(svc in any_service()) {
                let c = service_ports(&svc);
                for problem in &c.problems {
                    prop_assert!(problem.to_string().starts_with("Service ns/svc: "), "{}", problem);
                }
                for p in &c.value {
                    prop_assert_eq!(IpFamily::of(&p.cluster_ip), p.family);
                    prop_assert!(p.port != 0);
                    let ips = p.external_ips.iter().chain(&p.load_balancer_ips);
                    prop_assert!(ips.into_iter().all(|ip| IpFamily::of(ip) == p.family));
                    prop_assert!(p.load_balancer_source_ranges.iter().all(|n| IpFamily::of_net(n) == p.family));
                }
            }

            #[test]
            fn canonical_addresses_parse_to_themselves(ip in any::<IpAddr>()) {
                let want = match ip {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
                    v4 => v4,
                };
                prop_assert_eq!(parse_ip_sloppy(&ip.to_string()), Some(want));
            }

            #[test]
            fn leading_zeros_do_not_change_an_ipv4_address(
                ip in any::<std::net::Ipv4Addr>(), zeros in proptest::collection::vec(0usize..4, 4), prefix in 0u8..=32,
            ) {
                let padded: Vec<String> =
                    ip.octets().iter().zip(&zeros).map(|(o, z)| format!("{}{o}", "0".repeat(*z))).collect();
                let text = padded.join(".");
                prop_assert_eq!(parse_ip_sloppy(&text), Some(IpAddr::V4(ip)));
                let net = IpNet::new(IpAddr::V4(ip), prefix).unwrap().trunc();
                prop_assert_eq!(parse_cidr_sloppy(&format!("{text}/0{prefix}")), Some(net));
            }
        }
    }
}
