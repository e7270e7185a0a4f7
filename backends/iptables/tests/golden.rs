//! Golden restore inputs of every scenario, under `tests/golden/`. Regenerate them with
//! `UPDATE_GOLDEN=1 cargo test -p kube-proxy-iptables --test golden`. `real_iptables.rs`
//! checks that both iptables variants accept each of them.

mod common;

use std::path::PathBuf;

use common::*;
use kube_proxy_iptables::FakeIptables;
use kube_proxy_model::Backend;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn rendered() -> Vec<(PathBuf, String)> {
    scenarios()
        .into_iter()
        .map(|s| {
            let b = backend(s.options, FakeIptables::new())
                .with_localhost_node_ports(s.localhost_node_ports);
            (
                golden_dir().join(format!("{}.rules", s.name)),
                b.render(&s.state).unwrap(),
            )
        })
        .collect()
}

#[test]
fn inputs_match_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatched = Vec::new();
    for (path, text) in rendered() {
        if update {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
                path.display()
            )
        });
        if want != text {
            mismatched.push(format!("{}:\n{text}", path.display()));
        }
    }
    assert!(
        mismatched.is_empty(),
        "rendered inputs differ from golden files (UPDATE_GOLDEN=1 regenerates):\n{}",
        mismatched.join("\n")
    );
}

#[test]
fn every_golden_file_has_a_scenario() {
    let known: Vec<PathBuf> = rendered().into_iter().map(|(p, _)| p).collect();
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let path = entry.unwrap().path();
        assert!(
            known.contains(&path),
            "stale golden file {}",
            path.display()
        );
    }
}
