//! Cost of the nftables backend's own work at 10 000 services x 10 endpoints, without the
//! kernel: rendering, a full sync's planning, and a one-service partial sync.

use std::collections::BTreeSet;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use kube_proxy_model::{
    Backend, Changes, Endpoint, NodeInfo, Protocol, ProxyOptions, ProxyState, ServiceEntry,
    ServicePort, ServicePortName,
};
use kube_proxy_nftables::{
    ExecError, Family, NftExecutor, NftablesBackend, StaticAddresses, TableState, Transaction,
};

/// Accepts everything and holds nothing: only the backend's own work is measured.
struct NullExec;

impl NftExecutor for NullExec {
    fn apply(&mut self, _: &Transaction) -> Result<(), ExecError> {
        Ok(())
    }

    fn read_table(&mut self, _: Family) -> Result<Option<TableState>, ExecError> {
        Ok(None)
    }
}

const SERVICES: usize = 10_000;

fn service(i: usize, endpoints: usize, node: &NodeInfo) -> Arc<ServiceEntry> {
    let cluster_ip = format!("172.{}.{}.{}", 16 + i / 65536, (i / 256) % 256, i % 256)
        .parse()
        .unwrap();
    let name = ServicePortName {
        namespace: "bench".into(),
        name: format!("svc{i}"),
        port: "http".into(),
        protocol: Protocol::Tcp,
    };
    let port = ServicePort {
        node_port: 30000 + (i % 2000) as u16,
        ..ServicePort::new(name, cluster_ip, 80)
    };
    let eps = (0..endpoints)
        .map(|j| {
            Endpoint::ready(
                format!("10.{}.{}.{}", i / 256, i % 256, j + 1)
                    .parse()
                    .unwrap(),
                8080,
                j == 0,
            )
        })
        .collect();
    Arc::new(ServiceEntry::new(port, eps, node))
}

fn big_state() -> ProxyState {
    let node = NodeInfo {
        name: "node1".into(),
        ips: vec!["192.168.0.2".parse().unwrap()],
        ..NodeInfo::default()
    };
    let mut st = ProxyState {
        node,
        ..ProxyState::default()
    };
    for i in 0..SERVICES {
        let entry = service(i, 10, &st.node);
        st.v4.insert(entry.port.name.clone(), entry);
    }
    st
}

fn backend() -> NftablesBackend {
    NftablesBackend::with_executor(ProxyOptions::default(), NullExec)
        .with_address_source(StaticAddresses::default())
}

fn benches(c: &mut Criterion) {
    let st = big_state();
    let mut group = c.benchmark_group("nftables_10k_x10");
    group.sample_size(10);
    group.bench_function("render", |b| b.iter(|| backend().render(&st).unwrap()));
    group.bench_function("full_sync", |b| {
        b.iter(|| backend().sync(&st, &Changes::full()).unwrap())
    });

    let mut be = backend();
    be.sync(&st, &Changes::full()).unwrap();
    let mut st = st;
    let mut grow = false;
    group.bench_function("partial_sync_one_service", |b| {
        b.iter(|| {
            grow = !grow;
            let entry = service(4242, if grow { 11 } else { 10 }, &st.node);
            let name = entry.port.name.clone();
            st.v4.insert(name.clone(), entry);
            let changes = Changes {
                services: BTreeSet::from([name]),
                ..Changes::default()
            };
            be.sync(&st, &changes).unwrap()
        })
    });
    group.finish();
}

criterion_group!(nftables, benches);
criterion_main!(nftables);
