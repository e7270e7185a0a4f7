//! Golden `nft -f` scripts of every scenario, under `tests/golden/`. Regenerate them with
//! `UPDATE_GOLDEN=1 cargo test -p kube-proxy-nftables --test golden`; every script must be
//! accepted by `nft -c -f` (run in a private network namespace).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use kube_proxy_model::Backend;
use kube_proxy_nftables::{FakeNft, NftablesBackend};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn rendered() -> Vec<(PathBuf, String)> {
    scenarios()
        .into_iter()
        .map(|s| {
            let backend = NftablesBackend::with_executor(s.options, FakeNft::new())
                .with_address_source(addresses());
            let script = backend.render(&s.state).unwrap();
            (golden_dir().join(format!("{}.nft", s.name)), script)
        })
        .collect()
}

#[test]
fn scripts_match_golden_files() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatched = Vec::new();
    for (path, script) in rendered() {
        if update {
            std::fs::write(&path, &script).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
                path.display()
            )
        });
        if want != script {
            mismatched.push(format!("{}:\n{script}", path.display()));
        }
    }
    assert!(
        mismatched.is_empty(),
        "rendered scripts differ from golden files (UPDATE_GOLDEN=1 regenerates):\n{}",
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
