//! The waypoint `Gateway` as `istioctl waypoint generate` builds it, and its YAML.
//!
//! Pure: flags in, a [`Gateway`] (or its YAML) out. `waypoint generate` prints the YAML and
//! `waypoint apply` sends the same object to the API server with server-side apply; the
//! waypoint controller (istiod, or this project's controller for `--gateway-class
//! ambient-waypoint`) then provisions the waypoint the Gateway describes.

use std::collections::BTreeMap;

use gateway_api::gateways::{Gateway, GatewayListeners, GatewaySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{DEFAULT_NAME, RESERVED_NAME, labels};

/// Why the waypoint `Gateway` could not be built from the flags. The messages are istioctl's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// `--name none`: `none` is what `istio.io/use-waypoint` uses to opt out of a waypoint.
    #[error("invalid name provided for waypoint, 'none' is a reserved value")]
    ReservedName,
    /// `--for` is not one of [`TrafficType`]'s values.
    #[error("invalid traffic type: {0}. Valid options are: [all none service workload]")]
    InvalidTrafficType(String),
    /// The Gateway could not be serialized (not expected for the fields set here).
    #[error("{0}")]
    Yaml(String),
}

/// The traffic a waypoint handles: the `istio.io/waypoint-for` label of its Gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficType {
    /// Traffic addressed to services (istiod's default when the label is absent).
    Service,
    /// Traffic addressed to workloads (pod IPs).
    Workload,
    /// Both.
    All,
    /// Neither.
    None,
}

impl TrafficType {
    /// Every value, in istioctl's (sorted) order.
    pub const ALL: [TrafficType; 4] = [Self::All, Self::None, Self::Service, Self::Workload];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Workload => "workload",
            Self::All => "all",
            Self::None => "none",
        }
    }

    /// Parses a `--for` value; anything else is [`GatewayError::InvalidTrafficType`].
    pub fn parse(value: &str) -> Result<Self, GatewayError> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == value)
            .ok_or_else(|| GatewayError::InvalidTrafficType(value.to_owned()))
    }
}

/// What the waypoint Gateway is built from: the flags of `generate` and `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayParams<'a> {
    /// `--name`; empty means [`DEFAULT_NAME`].
    pub name: &'a str,
    /// The namespace written into the object; `None` (generate without `-n`) omits it.
    pub namespace: Option<&'a str>,
    /// `--for`, unparsed; `None` leaves the label off (the class or istiod decides).
    pub traffic_type: Option<&'a str>,
    /// `-r/--revision`; `None` or empty leaves the `istio.io/rev` label off.
    pub revision: Option<&'a str>,
    /// `spec.gatewayClassName`.
    pub gateway_class: &'a str,
}

/// `--name` as istioctl reads it: empty is the default name, `none` is refused.
pub fn waypoint_name(name: &str) -> Result<&str, GatewayError> {
    match name {
        "" => Ok(DEFAULT_NAME),
        RESERVED_NAME => Err(GatewayError::ReservedName),
        name => Ok(name),
    }
}

/// The waypoint Gateway: one `mesh` listener, HBONE on 15008, labels only for the flags given.
pub fn gateway(params: &GatewayParams<'_>) -> Result<Gateway, GatewayError> {
    let name = waypoint_name(params.name)?;
    let mut labels = BTreeMap::new();
    if let Some(value) = params.traffic_type {
        labels.insert(
            labels::WAYPOINT_FOR.to_owned(),
            TrafficType::parse(value)?.as_str().to_owned(),
        );
    }
    if let Some(revision) = params.revision.filter(|r| !r.is_empty()) {
        labels.insert(labels::REVISION.to_owned(), revision.to_owned());
    }
    let mut gateway = Gateway::new(
        name,
        GatewaySpec {
            gateway_class_name: params.gateway_class.to_owned(),
            listeners: vec![GatewayListeners {
                name: "mesh".to_owned(),
                port: i32::from(crate::HBONE_PORT),
                protocol: "HBONE".to_owned(),
                ..GatewayListeners::default()
            }],
            ..GatewaySpec::default()
        },
    );
    gateway.metadata = ObjectMeta {
        name: Some(name.to_owned()),
        namespace: params
            .namespace
            .filter(|ns| !ns.is_empty())
            .map(str::to_owned),
        labels: (!labels.is_empty()).then_some(labels),
        ..ObjectMeta::default()
    };
    Ok(gateway)
}

/// The YAML `istioctl waypoint generate` prints for the same flags, byte for byte.
pub fn generate(params: &GatewayParams<'_>) -> Result<String, GatewayError> {
    let gateway = gateway(params)?;
    serde_yaml_ng::to_string(&gateway).map_err(|e| GatewayError::Yaml(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params<'a>() -> GatewayParams<'a> {
        GatewayParams {
            name: "",
            namespace: None,
            traffic_type: None,
            revision: None,
            gateway_class: super::super::ISTIO_WAYPOINT_CLASS,
        }
    }

    #[test]
    fn names() {
        for (flag, want) in [
            ("", Ok("waypoint")),
            ("waypoint", Ok("waypoint")),
            ("foo", Ok("foo")),
            ("none", Err(GatewayError::ReservedName)),
        ] {
            assert_eq!(waypoint_name(flag), want, "--name {flag:?}");
        }
    }

    #[test]
    fn traffic_types() {
        for (flag, want) in [
            ("service", Ok(TrafficType::Service)),
            ("workload", Ok(TrafficType::Workload)),
            ("all", Ok(TrafficType::All)),
            ("none", Ok(TrafficType::None)),
            (
                "Service",
                Err(GatewayError::InvalidTrafficType("Service".into())),
            ),
            ("", Err(GatewayError::InvalidTrafficType(String::new()))),
        ] {
            assert_eq!(TrafficType::parse(flag), want, "--for {flag:?}");
        }
        assert_eq!(
            GatewayError::InvalidTrafficType("x".into()).to_string(),
            "invalid traffic type: x. Valid options are: [all none service workload]"
        );
    }

    #[test]
    fn labels_only_for_given_flags() {
        let gw = gateway(&params()).expect("gateway");
        assert_eq!(gw.metadata.labels, None);
        assert_eq!(gw.metadata.namespace, None);
        let gw = gateway(&GatewayParams {
            traffic_type: Some("workload"),
            revision: Some("canary"),
            namespace: Some("bookinfo"),
            ..params()
        })
        .expect("gateway");
        let labels = gw.metadata.labels.expect("labels");
        assert_eq!(labels["istio.io/waypoint-for"], "workload");
        assert_eq!(labels["istio.io/rev"], "canary");
        assert_eq!(gw.metadata.namespace.as_deref(), Some("bookinfo"));
        // An empty revision is no revision, as in istioctl.
        let gw = gateway(&GatewayParams {
            revision: Some(""),
            ..params()
        })
        .expect("gateway");
        assert_eq!(gw.metadata.labels, None);
    }
}
