//! Real packets through the nftables mode: every scenario of `tests/dataplane/`.

#[macro_use]
mod dataplane;
mod support;

all_scenarios!(dataplane::Mode::Nftables);
