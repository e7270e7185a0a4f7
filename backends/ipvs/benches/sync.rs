//! Cost of the IPVS backend's sync work at 1k and 10k Services x 10 endpoints, over the
//! in-memory kernel (`FakeIpvs`, `FakeDummyLink`, `FakeNft`): planning, the diff against
//! the last plan or the kernel, and the calls into the fakes. No kernel is touched.
//!
//! `cargo bench -p kube-proxy-ipvs --bench sync`

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use kube_proxy_ipvs::{FakeDummyLink, FakeIpvs, IpvsBackend, IpvsSettings};
use kube_proxy_model::{
    Backend, Changes, Endpoint, LocalDetector, NodeInfo, Protocol, ProxyOptions, ProxyState,
    ServiceEntry, ServicePort, ServicePortName,
};
use kube_proxy_nftables::{FakeNft, StaticAddresses};

const ENDPOINTS: u32 = 10;
/// Every tenth Service also has a NodePort (a virtual server on each node address).
const NODE_PORT_EVERY: u32 = 10;
/// The Service whose endpoints `one_service_changed` flips.
const CHURNED: u32 = 7;

fn v4(base: [u8; 4], offset: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) + offset))
}

/// Service `i`: ClusterIP 10.96.0.0/12 + i, pods in 10.128.0.0/9 (16 addresses a Service),
/// the first endpoint on this node. `flipped` moves the last endpoint to another pod IP.
fn entry(i: u32, flipped: bool, node: &NodeInfo) -> (ServicePortName, Arc<ServiceEntry>) {
    let name = ServicePortName {
        namespace: "scale".into(),
        name: format!("svc-{i}"),
        port: "web".into(),
        protocol: Protocol::Tcp,
    };
    let mut port = ServicePort::new(name.clone(), v4([10, 96, 0, 0], i), 80);
    if i % NODE_PORT_EVERY == 0 {
        port.node_port = 30000 + (i / NODE_PORT_EVERY) as u16;
    }
    let mut eps: Vec<Endpoint> = (0..ENDPOINTS)
        .map(|j| Endpoint::ready(v4([10, 128, 0, 0], i * 16 + j), 8080, j == 0))
        .collect();
    if flipped {
        eps[ENDPOINTS as usize - 1].ip = v4([10, 128, 0, 0], i * 16 + 15);
    }
    (name, Arc::new(ServiceEntry::new(port, eps, node)))
}

fn cluster(services: u32) -> ProxyState {
    let mut state = ProxyState {
        node: NodeInfo {
            name: "node-0".into(),
            ips: vec!["192.168.0.2".parse().unwrap()],
            ..NodeInfo::default()
        },
        ..ProxyState::default()
    };
    for i in 0..services {
        let (name, e) = entry(i, false, &state.node);
        state.v4.insert(name, e);
    }
    state
}

/// A backend over fresh fakes, on a node with two addresses (NodePorts listen on both).
fn backend() -> IpvsBackend {
    let options = ProxyOptions {
        local_detector: LocalDetector::Cidrs(vec!["10.128.0.0/9".parse().unwrap()]),
        ..ProxyOptions::default()
    };
    let (ipvs, link, nft) = (FakeIpvs::new(), FakeDummyLink::new(), FakeNft::new());
    let addresses = ["127.0.0.1", "192.168.0.2", "192.168.1.2"].map(|a| a.parse().unwrap());
    IpvsBackend::with_clients(options, IpvsSettings::default(), ipvs, link, nft)
        .with_address_source(StaticAddresses(addresses.to_vec()))
}

fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("ipvs_x10");
    group.sample_size(10);
    for n in [1_000, 10_000] {
        let mut state = cluster(n);
        group.bench_with_input(BenchmarkId::new("full_sync_from_empty", n), &n, |b, _| {
            b.iter_batched(
                backend,
                |mut be| {
                    be.sync(&state, &Changes::full()).unwrap();
                    // Dropped outside the timing, with the fakes' content.
                    be
                },
                BatchSize::PerIteration,
            )
        });

        let mut be = backend();
        be.sync(&state, &Changes::full()).unwrap();
        let mut flipped = false;
        group.bench_with_input(BenchmarkId::new("one_service_changed", n), &n, |b, _| {
            b.iter(|| {
                flipped = !flipped;
                let (name, e) = entry(CHURNED, flipped, &state.node);
                state.v4.insert(name.clone(), e);
                let changes = Changes {
                    services: BTreeSet::from([name]),
                    ..Changes::default()
                };
                assert!(be.sync(&state, &changes).unwrap().applied);
            })
        });
        group.bench_with_input(BenchmarkId::new("no_change_resync", n), &n, |b, _| {
            b.iter(|| be.sync(&state, &Changes::default()).unwrap())
        });
    }
    group.finish();
}

criterion_group!(ipvs, benches);
criterion_main!(ipvs);
