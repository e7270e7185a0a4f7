//! Golden restore inputs of every scenario, under `tests/golden/`. Regenerate them with
//! `UPDATE_GOLDEN=1 cargo test -p kube-proxy-iptables --test golden`. `real_iptables.rs`
//! checks that both iptables variants accept each of them.

mod common;

use std::path::PathBuf;

use common::*;
use kube_proxy_iptables::FakeIptables;
use kube_proxy_model::Backend;

fn golden() -> GoldenFiles {
    GoldenFiles::new(env!("CARGO_MANIFEST_DIR"), "rules")
}

fn rendered() -> Vec<(PathBuf, String)> {
    scenarios()
        .into_iter()
        .map(|s| {
            let b = backend(s.options, FakeIptables::new())
                .with_localhost_node_ports(s.localhost_node_ports);
            (golden().path(s.name), b.render(&s.state).unwrap())
        })
        .collect()
}

#[test]
fn inputs_match_golden_files() {
    golden().assert_match(rendered(), "inputs");
}

#[test]
fn every_golden_file_has_a_scenario() {
    golden().assert_none_stale(rendered().into_iter().map(|(p, _)| p));
}
