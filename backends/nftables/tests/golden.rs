//! Golden `nft -f` scripts of every scenario, under `tests/golden/`. Regenerate them with
//! `UPDATE_GOLDEN=1 cargo test -p kube-proxy-nftables --test golden`; every script must be
//! accepted by `nft -c -f` (run in a private network namespace).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use kube_proxy_model::Backend;
use kube_proxy_nftables::{FakeNft, NftablesBackend};

fn golden() -> GoldenFiles {
    GoldenFiles::new(env!("CARGO_MANIFEST_DIR"), "nft")
}

fn rendered() -> Vec<(PathBuf, String)> {
    scenarios()
        .into_iter()
        .map(|s| {
            let backend = NftablesBackend::with_executor(s.options, FakeNft::new())
                .with_address_source(addresses());
            let script = backend.render(&s.state).unwrap();
            (golden().path(s.name), script)
        })
        .collect()
}

#[test]
fn scripts_match_golden_files() {
    golden().assert_match(rendered(), "scripts");
}

#[test]
fn every_golden_file_has_a_scenario() {
    golden().assert_none_stale(rendered().into_iter().map(|(p, _)| p));
}

#[test]
fn golden_scripts_are_accepted_by_nft() {
    let files: Vec<PathBuf> = rendered().into_iter().map(|(p, _)| p).collect();
    let failures = in_netns(move || {
        files
            .iter()
            .filter_map(|path| {
                let out = Command::new("nft")
                    .arg("-c")
                    .arg("-f")
                    .arg(path)
                    .output()
                    .expect("running nft");
                (!out.status.success()).then(|| {
                    format!(
                        "{}: {}",
                        path.display(),
                        String::from_utf8_lossy(&out.stderr)
                    )
                })
            })
            .collect::<Vec<_>>()
    });
    assert!(
        failures.is_empty(),
        "nft -c rejected:\n{}",
        failures.join("\n")
    );
}
