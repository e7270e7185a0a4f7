//! The nftables backend of kube-proxy-rs: upstream kube-proxy's nftables mode.
//!
//! The backend owns `table ip kube-proxy` and `table ip6 kube-proxy` and nothing else; it
//! never lists or changes another table. Names, chains, maps and rule semantics are
//! upstream's (`service-ips`/`service-nodeports` verdict maps dispatching to per-service
//! `service-`, `local-`, `external-`, `firewall-` and `endpoint-` chains named with
//! upstream's hash scheme).
//!
//! # How a sync works
//!
//! The backend keeps a model of what its tables hold. A full sync (the first one, one the
//! caller asks for, or any after an error) reads the tables back with `nft list table`,
//! computes the whole desired content, and sends only the difference. A partial sync
//! recomputes only the service ports in [`Changes::services`](kube_proxy_model::Changes)
//! and diffs their chains and map elements against the model, so its cost does not grow
//! with the number of services. Every sync, even one without service changes, also reads
//! the interface addresses again and updates the elements of `nodeport-ips`, since
//! addresses change without any API event (as upstream does). Each sync is one atomic
//! `nft -f` transaction; a sync with nothing to change sends nothing, and a restarted
//! process (or a second `kube-proxy apply`) reconciles instead of flushing working rules.
//!
//! Rules are written in the form `nft list` prints them back (`meta mark set meta mark |
//! 0x00004000` rather than upstream's equivalent `mark set mark or 0x004000`), so that the
//! read-back compares equal; the real-kernel tests check this for every golden scenario.
//! Should a listing not compare equal or not parse (another nft version), the affected chain
//! or table is rewritten atomically, which is what upstream does on every full sync.
//!
//! Service chains that stop being referenced are flushed at once and deleted by a later sync
//! at least a second afterwards (kernels before 6.2 release a chain a map element pointed to
//! only a little later), in a small transaction of their own, as upstream does.
//!
//! # Modules
//!
//! * [`ir`] and [`transaction`]: nft objects and verbs, rendered to an `nft -f` script.
//! * [`exec`]: the [`NftExecutor`] trait and [`NftCommand`], which runs `nft`; [`fake`]:
//!   [`FakeNft`], an in-memory kernel for tests.
//! * [`table`] and [`parse`]: table content as data, and the parser of `nft list` output.
//! * [`names`]: upstream's table, chain, set and map names.
//! * [`addresses`]: local addresses and `nodePortAddresses`.

pub mod addresses;
mod backend;
pub mod exec;
pub mod fake;
pub mod ir;
pub mod names;
pub mod parse;
mod plan;
mod rules;
mod sync;
pub mod table;
pub mod transaction;

pub use addresses::{AddressSource, StaticAddresses, SystemAddresses};
pub use backend::NftablesBackend;
pub use exec::{ExecError, NftCommand, NftExecutor};
pub use fake::FakeNft;
pub use ir::Family;
pub use table::TableState;
pub use transaction::Transaction;
