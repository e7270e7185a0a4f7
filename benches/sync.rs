//! Rule syncs at scale, end to end: building the model from API objects, and applying it
//! to a real kernel (in a private network namespace). The backend's own work without the
//! kernel (render, planning) is measured by `backends/nftables/benches/sync.rs`.
//!
//! `cargo bench --bench sync` runs the 1k and 10k model cases and the 1k kernel applies;
//! `KPRS_BENCH_10K=1` adds the 10k-Service kernel applies. A 10k apply from empty takes
//! minutes per sample; `KPRS_BENCH_10K=1 cargo bench --bench sync -- one_service_changed`
//! times it once (printed as `setup:`) and benches the partial sync.

mod scale;

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion};
use kube_proxy_model::{Backend, Changes, ProxyOptions};
use kube_proxy_nftables::NftablesBackend;

const ENDPOINTS: u32 = 10;

fn sizes(kernel: bool) -> Vec<u32> {
    let big = !kernel || std::env::var_os("KPRS_BENCH_10K").is_some();
    if big {
        vec![1_000, 10_000]
    } else {
        vec![1_000]
    }
}

fn options() -> ProxyOptions {
    ProxyOptions {
        local_detector: kube_proxy_model::LocalDetector::Cidrs(vec!["10.128.0.0/9"
            .parse()
            .unwrap()]),
        ..ProxyOptions::default()
    }
}

/// The controller side: Services and EndpointSlices to a categorized model.
fn model(c: &mut Criterion) {
    let mut g = c.benchmark_group("model");
    g.sample_size(10);
    for n in sizes(false) {
        g.bench_with_input(BenchmarkId::new("initial_list", n), &n, |b, &n| {
            b.iter_with_large_drop(|| scale::built(n, ENDPOINTS))
        });
        let (mut builder, _) = scale::built(n, ENDPOINTS);
        let mut generation = 0;
        g.bench_with_input(BenchmarkId::new("one_slice_changed", n), &n, |b, _| {
            b.iter(|| {
                generation = (generation + 1) % 2;
                black_box(scale::churn_one(&mut builder, ENDPOINTS, generation))
            })
        });
    }
}

fn delete_tables() {
    for family in ["ip", "ip6"] {
        // Absent tables are fine: this only resets the private namespace between samples.
        let _ = Command::new("nft")
            .args(["delete", "table", family, "kube-proxy"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Real `nft` transactions: programming an empty node, and a sync after one pod restart.
fn apply(c: &mut Criterion) {
    let mut g = c.benchmark_group("nftables_apply");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    for n in sizes(true) {
        let (mut builder, state) = scale::built(n, ENDPOINTS);
        g.bench_with_input(
            BenchmarkId::new("full_from_empty", n),
            &state,
            |b, state| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        delete_tables();
                        let mut backend =
                            NftablesBackend::new(options()).expect("nftables backend");
                        let start = Instant::now();
                        backend.sync(state, &Changes::full()).expect("full sync");
                        total += start.elapsed();
                    }
                    total
                })
            },
        );
        delete_tables();
        let mut backend = NftablesBackend::new(options()).expect("nftables backend");
        let start = Instant::now();
        backend.sync(&state, &Changes::full()).expect("full sync");
        // At 10k the from-empty sync takes minutes, too long for criterion's ten samples:
        // this one timing of the partial-sync setup is what README records for it.
        eprintln!(
            "setup: full sync of {n} services from empty took {:?}",
            start.elapsed()
        );
        let mut generation = 0;
        g.bench_with_input(BenchmarkId::new("one_service_changed", n), &n, |b, _| {
            b.iter(|| {
                generation = (generation + 1) % 2;
                let (state, changes) = scale::churn_one(&mut builder, ENDPOINTS, generation);
                assert_eq!(changes.services.len(), 1);
                backend.sync(&state, &changes).expect("partial sync")
            })
        });
        delete_tables();
    }
}

criterion_group!(benches, model, apply);

fn main() {
    // Everything below runs in a network namespace of its own: the host's rules are never
    // touched, and the namespace vanishes with the process.
    // SAFETY: called before any thread is started, with no pointers involved.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!(
            "unshare(CLONE_NEWNET) failed (run as root): {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
