//! IPVS virtual services and real servers: the [`IpvsClient`] interface, the kernel
//! client [`Ipvs`] over generic netlink, and the in-memory [`FakeIpvs`].

mod fake;
mod socket;
mod types;
pub(crate) mod wire;

pub use fake::FakeIpvs;
pub use socket::Ipvs;
pub use types::{
    Destination, FwdMethod, RealServer, RealServerStats, Scheduler, ServiceFlags, ServiceKey,
    Timeouts, VirtualServer,
};

use crate::Error;

/// What the IPVS backend needs from the kernel's IPVS. Errors are the kernel's: adding
/// what exists fails with [`Error::is_exists`], changing or deleting what does not with
/// [`Error::is_not_found`].
pub trait IpvsClient: Send {
    /// All virtual services of both families (firewall-mark services, which kube-proxy
    /// never creates, are left out).
    fn services(&mut self) -> Result<Vec<VirtualServer>, Error>;

    /// Adds a virtual service.
    fn add_service(&mut self, svc: &VirtualServer) -> Result<(), Error>;

    /// Changes the scheduler, flags, timeout and netmask of the service with `svc`'s key.
    fn update_service(&mut self, svc: &VirtualServer) -> Result<(), Error>;

    /// Deletes a virtual service with its real servers.
    fn delete_service(&mut self, svc: &ServiceKey) -> Result<(), Error>;

    /// The real servers of a service, with their connection counters. Like the kernel,
    /// an unknown service has none.
    fn destinations(&mut self, svc: &ServiceKey) -> Result<Vec<Destination>, Error>;

    /// Adds a real server to a service. Its family must be the service's.
    fn add_destination(&mut self, svc: &ServiceKey, dest: &RealServer) -> Result<(), Error>;

    /// Changes the weight, forwarding method and thresholds of the real server with
    /// `dest`'s address and port.
    fn update_destination(&mut self, svc: &ServiceKey, dest: &RealServer) -> Result<(), Error>;

    /// Deletes the real server with `dest`'s address and port (the rest is ignored).
    fn delete_destination(&mut self, svc: &ServiceKey, dest: &RealServer) -> Result<(), Error>;

    /// Deletes every virtual service, of whoever made it.
    fn flush(&mut self) -> Result<(), Error>;

    /// The global connection timeouts.
    fn config(&mut self) -> Result<Timeouts, Error>;

    /// Sets the global connection timeouts; zero ones stay as they are.
    fn set_config(&mut self, timeouts: &Timeouts) -> Result<(), Error>;
}
