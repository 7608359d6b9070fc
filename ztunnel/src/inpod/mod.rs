//! In-pod redirection: how captured pod traffic reaches ztunnel.
//!
//! In ambient mode the istio-cni node agent installs capture rules inside each enrolled pod's
//! network namespace and hands that namespace to ztunnel over the ZDS unix socket; ztunnel then
//! opens its listeners (15001, 15006, 15008, 15053) inside the pod's namespace, so the pod's own
//! traffic is redirected to them without leaving the pod.
//!
//! # Layout
//! - [`rules`]: the capture ruleset (nftables), rendered from a per-pod config and applied
//!   inside a pod's namespace (ztunnel installs it itself for VMs, tests and local use).
//! - [`zds`]: the ZDS client (ztunnel's side of istio-cni's channel): pods and their network
//!   namespaces, handed to a [`zds::WorkloadHandler`].
//! - [`agent`]: the node-agent side of ZDS (istio-cni's role), for tests and local use.

pub mod agent;
pub mod rules;
pub mod zds;
