//! Where Kubernetes objects come from: the API server (the daemon) or manifest files
//! (`render`, `apply`, `-f`). Every source speaks [`SourceEvent`]s; the model builder turns
//! them into the node-local model.

pub mod apiserver;
pub mod manifest;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;

/// A Kubernetes object the proxy consumes.
#[derive(Debug, Clone)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
    ServiceCidr(Box<ServiceCIDR>),
}

/// The kinds of [`Object`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    ServiceCidr,
}

impl Object {
    /// The kind of this object.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Node(_) => Kind::Node,
            Object::ServiceCidr(_) => Kind::ServiceCidr,
        }
    }
}

/// One thing a source observed.
#[derive(Debug, Clone)]
pub enum SourceEvent {
    /// An object was created or changed.
    Applied(Object),
    /// An object was deleted.
    Deleted(Object),
    /// A complete (re)list of `Kind` finished: these are now all the objects of that kind,
    /// and any other object of that kind the builder holds is gone. The first `Listed` of
    /// Services and of EndpointSlices is what allows the first sync.
    Listed(Kind, Vec<Object>),
}
