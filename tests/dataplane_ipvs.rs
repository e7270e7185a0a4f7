//! Real packets through the IPVS mode: every scenario of `tests/dataplane/` under
//! `--proxy-mode ipvs`, plus what only IPVS mode has (graceful termination, `ipvsadm -Ln`
//! against the manifests).
//!
//! The host kernel has no IPVS: `.ci/test` runs this binary inside the project's VM
//! (`.ci/vm`); elsewhere every test skips, saying so. By hand:
//! `CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$PWD/.ci/vm/cargo-runner cargo test --test dataplane_ipvs`

#[macro_use]
mod dataplane;
mod support;

all_scenarios!(dataplane::Mode::Ipvs);

/// Scenarios of IPVS mode alone.
mod ipvs_only {
    use crate::dataplane::{ipvs, Mode};

    #[test]
    fn ipvsadm_matches_the_manifests() {
        if Mode::Ipvs.runs_here("ipvsadm_matches_the_manifests") {
            ipvs::ipvsadm_matches_the_manifests();
        }
    }

    #[test]
    fn graceful_termination_keeps_open_connections() {
        if Mode::Ipvs.runs_here("graceful_termination_keeps_open_connections") {
            ipvs::graceful_termination_keeps_open_connections();
        }
    }
}
