//! The dummy link that holds the service addresses (`kube-ipvs0`): the
//! [`DummyLinkClient`] interface, the rtnetlink client [`DummyLink`] and the in-memory
//! [`FakeDummyLink`].

mod fake;
mod socket;

pub use fake::FakeDummyLink;
pub use socket::DummyLink;

use std::net::IpAddr;

use crate::Error;

/// Upstream's name of the dummy link.
pub const KUBE_IPVS0: &str = "kube-ipvs0";

/// What the IPVS backend needs of its dummy link. Like upstream, the link is created and
/// left down: the kernel treats an address on a down link as local all the same, and a
/// down link never answers ARP or sends anything.
pub trait DummyLinkClient: Send {
    /// Creates the link unless a link of that name exists (of whatever type, as
    /// upstream); true when it existed already.
    fn ensure(&mut self) -> Result<bool, Error>;

    /// The addresses bound to the link.
    fn addresses(&mut self) -> Result<Vec<IpAddr>, Error>;

    /// Binds `addr` to the link as a /32 or /128; false when it was bound already.
    fn add_address(&mut self, addr: IpAddr) -> Result<bool, Error>;

    /// Unbinds `addr` from the link; false when it was not bound.
    fn delete_address(&mut self, addr: IpAddr) -> Result<bool, Error>;

    /// Deletes the link with its addresses; false when there was none. Refuses to delete a
    /// link of that name that is not a dummy.
    fn delete(&mut self) -> Result<bool, Error>;
}
