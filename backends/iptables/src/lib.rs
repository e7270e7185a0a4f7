//! The iptables backend of kube-proxy-rs: upstream kube-proxy's iptables mode.
//!
//! Chains, names and rules are upstream's: `KUBE-SERVICES`, `KUBE-NODEPORTS`,
//! `KUBE-EXTERNAL-SERVICES`, `KUBE-POSTROUTING`, `KUBE-MARK-MASQ`, `KUBE-FORWARD`,
//! `KUBE-PROXY-FIREWALL`, `KUBE-FIREWALL`, and per service port `KUBE-SVC-`, `KUBE-SVL-`,
//! `KUBE-EXT-`, `KUBE-FW-` and `KUBE-SEP-` chains named with upstream's hash.
//!
//! # How a sync works
//!
//! Each sync sends one `iptables-restore --noflush` (and one `ip6tables-restore`) whose
//! input rewrites the fixed chains of the filter and nat tables in full, and only the
//! chains of the service ports in [`Changes::services`](kube_proxy_model::Changes), as
//! upstream's `MinimizeIPTablesRestore` does; chains of changed ports that are no longer
//! needed are deleted in the same input. A full sync (the first one, one the caller asks
//! for, any after an error, or when a canary is gone) writes every chain, deletes every
//! service chain of ours that is not needed (found with `iptables-save -t nat`), and then
//! ensures the jumps from the built-in chains (`-C`, else `-I`). A partial sync that
//! would send exactly what was sent before sends nothing.
//!
//! The `KUBE-PROXY-CANARY` chains in mangle, filter and nat hold one rule each; when one
//! is gone (a firewall reload deleted the table, or `iptables -t nat -F` flushed it) the
//! sync is a full one. Upstream polls for the chain in the background; here every sync
//! looks, with one `iptables -S` per table.
//!
//! # Modules
//!
//! * [`restore`]: restore input as data, rendered in upstream's layout.
//! * [`rules`]: the rules, as pure functions of the model; [`names`]: the chain names.
//! * [`exec`]: the [`IptablesExecutor`] trait and [`IptablesCommand`]; [`fake`]:
//!   [`FakeIptables`], an in-memory kernel for tests; [`detect`]: which [`Variant`]
//!   the node uses.
//! * [`cleanup`]: removing everything iptables mode created ([`cleanup_leftovers`]).

mod backend;
pub mod cleanup;
pub mod detect;
pub mod exec;
pub mod fake;
pub mod ipset;
pub mod names;
pub mod restore;
pub mod rules;

pub use backend::IptablesBackend;
pub use cleanup::cleanup_leftovers;
pub use detect::detect_variant;
pub use exec::{ExecError, IptablesCommand, IptablesExecutor, Variant};
pub use fake::FakeIptables;
pub use restore::{RestoreInput, Table};

/// The `--proxy-mode` name.
pub(crate) const MODE: &str = "iptables";
