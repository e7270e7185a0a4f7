//! The nftables backend of kube-proxy-rs: upstream kube-proxy's nftables mode.
//!
//! The backend owns `table ip kube-proxy` and `table ip6 kube-proxy` and nothing else.
//! It keeps a model of what those tables hold (read back from the kernel at start-up and
//! after errors, then updated from every transaction it applies), computes what they should
//! hold from the [`ProxyState`](kube_proxy_model::ProxyState), and sends only the
//! difference, as one atomic `nft -f` transaction per sync.
//!
//! * [`ir`] and [`transaction`]: nft objects and verbs, rendered to an `nft -f` script.
//! * [`exec`]: the [`NftExecutor`] trait and [`NftCommand`], which runs `nft`; [`fake`]:
//!   [`FakeNft`], an in-memory kernel for tests.
//! * [`table`] and [`parse`]: table content as data, and the parser of `nft list` output.
//! * [`names`]: upstream's table, chain, set and map names.

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
