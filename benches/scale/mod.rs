//! A synthetic cluster of any size, as the API server would hand it to the proxy.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_proxy::builder::ModelBuilder;
use kube_proxy::sources::{Kind, Object, SourceEvent};
use kube_proxy_model::{Changes, ProxyState};

/// The node the benchmarks program.
pub const NODE: &str = "node-a";

/// An IPv4 address `base + offset`.
fn ip(base: [u8; 4], offset: u32) -> String {
    Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) + offset).to_string()
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}

/// Service `i`: a ClusterIP in 10.96.0.0/12 on TCP port 80; every tenth also a NodePort.
pub fn service(i: u32) -> Service {
    let node_port = (i % 10 == 0).then_some(30000 + (i / 10) as i32 % 2768);
    Service {
        metadata: meta(&format!("ns-{}", i / 100), &format!("svc-{i}")),
        spec: Some(ServiceSpec {
            type_: Some(
                if node_port.is_some() {
                    "NodePort"
                } else {
                    "ClusterIP"
                }
                .into(),
            ),
            cluster_ip: Some(ip([10, 96, 0, 10], i)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                protocol: Some("TCP".into()),
                node_port,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The EndpointSlice of service `i` with `generation`-dependent addresses: `endpoints`
/// ready pods on port 8080, the first one on our node.
pub fn slice(i: u32, endpoints: u32, generation: u32) -> EndpointSlice {
    let mut metadata = meta(&format!("ns-{}", i / 100), &format!("svc-{i}-abcde"));
    metadata.labels = Some([("kubernetes.io/service-name".to_string(), format!("svc-{i}"))].into());
    EndpointSlice {
        metadata,
        address_type: "IPv4".into(),
        endpoints: (0..endpoints)
            .map(|j| Endpoint {
                addresses: vec![ip([10, 128, 0, 0], (i * endpoints + j) * 2 + generation)],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                node_name: Some(if j == 0 { NODE } else { "node-b" }.into()),
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

/// The initial lists of a cluster with `services` Services of `endpoints` endpoints each.
pub fn cluster(services: u32, endpoints: u32) -> Vec<SourceEvent> {
    let svcs = (0..services)
        .map(|i| Object::Service(Box::new(service(i))))
        .collect();
    let slices = (0..services)
        .map(|i| Object::EndpointSlice(Box::new(slice(i, endpoints, 0))))
        .collect();
    vec![
        SourceEvent::Listed(Kind::Service, svcs),
        SourceEvent::Listed(Kind::EndpointSlice, slices),
    ]
}

/// A builder that has seen the whole cluster, with its first (full) changes taken.
pub fn built(services: u32, endpoints: u32) -> (ModelBuilder, ProxyState) {
    let mut builder = ModelBuilder::new(NODE.into(), vec!["192.0.2.10".parse().unwrap()]);
    for ev in cluster(services, endpoints) {
        builder.handle(ev);
    }
    let (state, _) = builder.take_changes();
    (builder, state)
}

/// Replaces the endpoints of service 0 (a pod restart) and returns what the next sync gets.
pub fn churn_one(
    builder: &mut ModelBuilder,
    endpoints: u32,
    generation: u32,
) -> (ProxyState, Changes) {
    let ev = SourceEvent::Applied(Object::EndpointSlice(Box::new(slice(
        0, endpoints, generation,
    ))));
    builder.handle(ev);
    builder.take_changes()
}
