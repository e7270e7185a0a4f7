//! Kubernetes Events (`events.k8s.io/v1`), recorded as upstream kube-proxy's recorder
//! records them: reporting controller `kube-proxy`, reporting instance
//! `kube-proxy-<node>` (upstream's is `kube-proxy-<hostname>`, which on a host-network
//! pod is the node's name).
//!
//! Recording never holds up the caller and never fails it: each Event is published on a
//! task of its own, and a failure is only logged. An Event is a courtesy to whoever runs
//! `kubectl describe`, never a reason to delay or abort a sync. kube's [`Recorder`] sends
//! a repeat of the same Event (within its cache window) as a PATCH that counts it in the
//! Event's series, as upstream's recorder does.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// Upstream's reporting controller (`s.Recorder = broadcaster.NewRecorder(..., "kube-proxy")`).
const CONTROLLER: &str = "kube-proxy";

/// Where this proxy's Events go.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    /// Events sent through `client`, reported by the proxy of node `node_name`.
    pub fn new(client: kube::Client, node_name: &str) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.to_owned(),
            instance: Some(format!("{CONTROLLER}-{node_name}")),
        };
        Events {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Records a Warning about `regarding`, in the background. `reason` is upstream's
    /// CamelCase reason, `action` what was being attempted (`Listen`), `note` the message.
    pub fn warning(&self, regarding: ObjectReference, reason: &str, action: &str, note: String) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &regarding).await {
                tracing::warn!(error = %e, reason = %event.reason, "recording an Event failed");
            }
        });
    }
}

/// A reference to Service `namespace/name` as upstream's health-check server makes it: the
/// proxy keeps no UIDs, so the UID is the namespaced name.
pub fn service_ref(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        kind: Some("Service".to_owned()),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        uid: Some(format!("{namespace}/{name}")),
        ..ObjectReference::default()
    }
}

/// A reference to Node `name` as upstream's `NodeRef`: the UID is the name. Events about
/// a Node (cluster-scoped) are created in the `default` namespace, as upstream's are.
pub fn node_ref(name: &str) -> ObjectReference {
    ObjectReference {
        kind: Some("Node".to_owned()),
        name: Some(name.to_owned()),
        uid: Some(name.to_owned()),
        ..ObjectReference::default()
    }
}
