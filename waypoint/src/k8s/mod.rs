//! The Kubernetes side of the waypoint: the controller that provisions a waypoint for every
//! Gateway API `Gateway` of a class it serves (`waypoint controller --config <file>`).
//!
//! It sits before the data path: it creates the Deployment that runs the `waypoint` proxy,
//! the Service ztunnel sends HBONE to (15008), the ServiceAccount whose identity the
//! waypoint presents, its copy of istiod's mesh configuration and the binding that lets that identity read the waypoint's L7
//! configuration from the API server (`WAYPOINT_CONFIG_SOURCE=k8s://`), and reports the
//! Gateway's status (`Programmed` with the Service's address). The proxy itself never talks
//! to the Kubernetes API for provisioning.
//!
//! - [`settings`]: the controller's configuration file (the Helm chart's ConfigMap).
//! - [`reconcile`]: the pure decision — Gateway, GatewayClass, settings and the observed
//!   Service in, desired objects and Gateway status out.
//! - [`controller`]: the loop — watches, server-side apply of the decision, status writes,
//!   retries, readiness (15021) and metrics (15020).

pub mod controller;
pub mod reconcile;
pub mod settings;

#[cfg(test)]
mod tests;

pub use controller::{Controller, ControllerError, ControllerOptions};
pub use reconcile::{Desired, reconcile};
pub use settings::{ConfigScope, ControllerConfig};

/// Well-known names (groups, annotations) of the Gateway API and Istio.
pub mod names {
    /// The Gateway API group.
    pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
    /// Gateway annotation naming the waypoint's Deployment and Service (istiod's).
    pub const NAME_OVERRIDE: &str = "gateway.istio.io/name-override";
    /// Gateway annotation naming the waypoint's ServiceAccount (istiod's).
    pub const SERVICE_ACCOUNT: &str = "gateway.istio.io/service-account";
}

/// Labels the controller reads and writes.
pub mod labels {
    /// The Gateway an object belongs to; the waypoint Service's selector.
    pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";
    /// The Gateway's class.
    pub const GATEWAY_CLASS_NAME: &str = "gateway.networking.k8s.io/gateway-class-name";
    /// Which controller manages an object (value: the controller name, `/` → `-`).
    pub const MANAGED: &str = "gateway.istio.io/managed";
    /// The traffic a waypoint handles (`service`, `workload`, `all`, `none`), on the Gateway
    /// or its class; reflected on the objects.
    pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
    /// Ambient enrollment; waypoint pods are `none` (ztunnel does not capture them).
    pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
    /// Sidecar injection; waypoint pods are `"false"`.
    pub const SIDECAR_INJECT: &str = "sidecar.istio.io/inject";
}
