//! The backend against the real kernel, through the `nft` binary, each test in its own
//! private network namespace: what nft reads back is exactly what the backend models, a
//! restarted backend sends nothing, and partial syncs work on the kernel.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use kube_proxy_model::{Backend, Changes, Protocol, ProxyOptions, ProxyState, SessionAffinity};
use kube_proxy_nftables::ir::{Chain, Object};
use kube_proxy_nftables::{
    ExecError, FakeNft, Family, NftCommand, NftExecutor, NftablesBackend, TableState, Transaction,
};

fn real_backend(
    options: ProxyOptions,
) -> (
    NftablesBackend,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let (exec, scripts) = Recording::new(NftCommand::new());
    let backend = NftablesBackend::with_executor(options, exec)
        .with_address_source(addresses())
        .with_stale_chain_grace(Duration::ZERO);
    (backend, scripts)
}

fn read_back() -> Vec<Option<TableState>> {
    let mut nft = NftCommand::new();
    Family::ALL
        .iter()
        .map(|f| nft.read_table(*f).unwrap())
        .collect()
}

/// The tables a full sync of `state` leaves in the fake kernel.
fn modelled(options: &ProxyOptions, state: &ProxyState) -> Vec<Option<TableState>> {
    let fake = FakeNft::new();
    let mut b = NftablesBackend::with_executor(options.clone(), fake.clone())
        .with_address_source(addresses());
    b.sync(state, &Changes::full()).unwrap();
    Family::ALL.iter().map(|f| fake.table(*f)).collect()
}

/// A readable account of where two tables differ.
fn differences(real: &Option<TableState>, model: &Option<TableState>) -> Vec<String> {
    let (Some(real), Some(model)) = (real, model) else {
        return if real == model {
            vec![]
        } else {
            vec![format!(
                "table presence: {} vs {}",
                real.is_some(),
                model.is_some()
            )]
        };
    };
    let mut out = Vec::new();
    for name in real.chains.keys().chain(model.chains.keys()) {
        if real.chains.get(name) != model.chains.get(name) {
            out.push(format!(
                "chain {name}:\n  nft:   {:?}\n  model: {:?}",
                real.chains.get(name),
                model.chains.get(name)
            ));
        }
    }
    for name in real.sets.keys().chain(model.sets.keys()) {
        if real.sets.get(name) != model.sets.get(name) {
            out.push(format!(
                "set {name}:\n  nft:   {:?}\n  model: {:?}",
                real.sets.get(name),
                model.sets.get(name)
            ));
        }
    }
    out.dedup();
    out
}

fn assert_kernel_is(model: &[Option<TableState>], what: &str) {
    let real = read_back();
    let diffs: Vec<String> = real
        .iter()
        .zip(model)
        .flat_map(|(r, m)| differences(r, m))
        .collect();
    assert!(
        diffs.is_empty(),
        "{what}: kernel differs from the model:\n{}",
        diffs.join("\n")
    );
}

fn nft_script(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "nft -f failed for {script}"
    );
}

#[test]
fn every_scenario_reads_back_as_modelled_and_a_restart_sends_nothing() {
    in_netns(|| {
        for s in scenarios() {
            let (mut b, _) = real_backend(s.options.clone());
            b.cleanup().unwrap();
            b.sync(&s.state, &Changes::full()).unwrap();
            assert_kernel_is(&modelled(&s.options, &s.state), s.name);

            let (mut restarted, scripts) = real_backend(s.options.clone());
            let report = restarted.sync(&s.state, &Changes::full()).unwrap();
            assert!(
                !report.applied,
                "{}: a restart sent {:?}",
                s.name,
                scripts.lock().unwrap()
            );
        }
    });
}

#[test]
fn the_nft_backend_probes_the_kernel_and_syncs() {
    in_netns(|| {
        let mut b = NftablesBackend::new(default_options()).unwrap();
        let st = state(
            node(),
            vec![(
                port("ns1", "web", "http", Protocol::Tcp, "172.30.0.10", 80),
                vec![ep("10.0.1.5", 8080, true)],
            )],
        );
        assert!(b.sync(&st, &Changes::full()).unwrap().applied);
        let v4 = read_back()[0].clone().unwrap();
        assert!(v4.sets["service-ips"]
            .elements
            .contains_key("172.30.0.10 . tcp . 80"));
        assert!(read_back()[1].is_some(), "IPv6 table programmed too");
    });
}

#[test]
fn a_refused_transaction_reports_nfts_message() {
    in_netns(|| {
        let mut tx = Transaction::new();
        tx.flush(Family::Ip, Object::Chain(Chain::named("services")));
        let mut nft = NftCommand::new();
        for result in [nft.check(&tx), nft.apply(&tx)] {
            match result {
                Err(ExecError::Refused(msg)) => assert!(msg.contains("No such file"), "{msg}"),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    });
}

#[test]
fn partial_syncs_and_stale_chains_on_the_kernel() {
    in_netns(|| {
        // Someone else's table, which must survive everything below.
        nft_script("add table inet other\nadd chain inet other keep { type filter hook input priority 0 ; }\n");
        let options = default_options();
        let (mut b, scripts) = real_backend(options.clone());
        let web = port("ns1", "web", "http", Protocol::Tcp, "172.30.0.10", 80);
        let mut st = state(
            node(),
            vec![(web.clone(), vec![ep("10.0.1.5", 8080, true)])],
        );
        b.sync(&st, &Changes::full()).unwrap();

        insert(
            &mut st,
            web.clone(),
            vec![ep("10.0.1.5", 8080, true), ep("10.0.2.5", 8080, false)],
        );
        let one = Changes {
            services: [web.name.clone()].into(),
            ..Changes::default()
        };
        assert!(b.sync(&st, &one).unwrap().applied);
        assert_kernel_is(&modelled(&options, &st), "after adding an endpoint");
        let before = scripts.lock().unwrap().len();
        assert!(!b.sync(&st, &Changes::default()).unwrap().applied);
        assert!(!b.sync(&st, &Changes::full()).unwrap().applied);
        assert_eq!(
            scripts.lock().unwrap().len(),
            before,
            "no-op syncs sent something"
        );

        // Affinity timeout changes recreate the sets the chains use.
        let sticky = |t| kube_proxy_model::ServicePort {
            session_affinity: Some(SessionAffinity { timeout_seconds: t }),
            ..web.clone()
        };
        insert(
            &mut st,
            sticky(10800),
            vec![ep("10.0.1.5", 8080, true), ep("10.0.2.5", 8080, false)],
        );
        b.sync(&st, &one).unwrap();
        insert(
            &mut st,
            sticky(60),
            vec![ep("10.0.1.5", 8080, true), ep("10.0.2.5", 8080, false)],
        );
        b.sync(&st, &one).unwrap();
        assert_kernel_is(
            &modelled(&options, &st),
            "after changing the affinity timeout",
        );

        // Removing the service flushes its chains; the next sync deletes them.
        st.v4.remove(&web.name);
        b.sync(&st, &one).unwrap();
        let v4 = read_back()[0].clone().unwrap();
        assert!(v4
            .chains
            .iter()
            .filter(|(n, _)| n.contains("ns1/web"))
            .all(|(_, c)| c.rules.is_empty()));
        b.sync(&st, &Changes::default()).unwrap();
        assert_kernel_is(&modelled(&options, &st), "after removing the service");

        b.cleanup().unwrap();
        assert_eq!(read_back(), vec![None, None]);
        let out = Command::new("nft")
            .args(["list", "table", "inet", "other"])
            .output()
            .unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("chain keep")
        );
    });
}

#[test]
fn a_thousand_services_sync_partially_and_survive_a_restart() {
    in_netns(|| {
        let options = default_options();
        let svc = |i: usize| kube_proxy_model::ServicePort {
            node_port: 30000 + i as u16,
            ..port(
                "scale",
                &format!("s{i}"),
                "http",
                Protocol::Tcp,
                &format!("172.30.{}.{}", i / 250, i % 250 + 1),
                80,
            )
        };
        let endpoints = |i: usize, n: usize| {
            (0..n)
                .map(|j| {
                    ep(
                        &format!("10.{}.{}.{}", 1 + i / 250, i % 250, j + 1),
                        8080,
                        j == 0,
                    )
                })
                .collect()
        };
        let mut st = state(node(), vec![]);
        for i in 0..1000 {
            insert(&mut st, svc(i), endpoints(i, 10));
        }
        let (mut b, scripts) = real_backend(options.clone());
        let started = std::time::Instant::now();
        b.sync(&st, &Changes::full()).unwrap();
        eprintln!("full sync of 1000 x 10: {:?}", started.elapsed());

        insert(&mut st, svc(500), endpoints(500, 11));
        let one = Changes {
            services: [svc(500).name].into(),
            ..Changes::default()
        };
        let started = std::time::Instant::now();
        assert!(b.sync(&st, &one).unwrap().applied);
        eprintln!("partial sync of one service: {:?}", started.elapsed());
        let script = scripts.lock().unwrap().last().unwrap().clone();
        assert!(
            script.lines().count() <= 8,
            "a one-endpoint change sent:\n{script}"
        );

        let (mut restarted, restarted_scripts) = real_backend(options);
        let started = std::time::Instant::now();
        let report = restarted.sync(&st, &Changes::full()).unwrap();
        eprintln!("restart read-back and reconcile: {:?}", started.elapsed());
        assert!(
            !report.applied,
            "a restart sent {:?}",
            restarted_scripts.lock().unwrap()
        );
    });
}
