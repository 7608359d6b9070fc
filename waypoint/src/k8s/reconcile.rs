//! The controller's decision, pure: from a Gateway, its GatewayClass, the controller's
//! settings and the observed waypoint Service, the objects that provision the waypoint
//! (ServiceAccount, Deployment, Service, and the RoleBinding that lets it read its L7
//! configuration) and the Gateway's status; from every Gateway, the subjects of the
//! cluster-wide configuration binding ([`cluster_subjects`]). No I/O: the controller loop
//! ([`controller`](super::controller)) reads the inputs and applies the outputs.
//!
//! Each waypoint reads its L7 configuration from the API server (`WAYPOINT_CONFIG_SOURCE=
//! k8s://`). In `namespace` scope (the default) it reads its Gateway's namespace
//! (`WAYPOINT_CONFIG_NAMESPACES`) through a RoleBinding there, named after its
//! ServiceAccount, to the configuration ClusterRole; in `cluster` scope it reads every
//! namespace through the one ClusterRoleBinding whose subjects are all the waypoints'
//! ServiceAccounts.
//!
//! The waypoint also gets a copy of istiod's mesh configuration ([`mesh_config_map`]): a
//! ConfigMap `<waypoint>-istio-mesh` in the Gateway's namespace with the `mesh` key of
//! istiod's `istio` ConfigMap, mounted at `/etc/istio/config`. The waypoint re-reads that file
//! when it changes, so a mesh change updates the ConfigMap only and never rolls the pods (no
//! hash annotation on the pod template).
//!
//! The objects and the status follow what istiod renders for a Gateway of class
//! `istio-waypoint`: objects named after the Gateway (or its `gateway.istio.io/name-override`
//! and `gateway.istio.io/service-account` annotations), owned by it, labelled with its name and
//! class; `Accepted`, `Programmed` (with the Service's address, `AddressNotUsable` until the
//! Service has a ClusterIP) and `ResolvedRefs` conditions; one listener status per listener.
//! A waypoint has exactly one listener, `HBONE` on 15008; anything else is refused with
//! istiod's `UnsupportedProtocol` condition and nothing is deployed.

use std::collections::BTreeMap;

use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::{
    Gateway, GatewayStatus, GatewayStatusAddresses, GatewayStatusListeners,
    GatewayStatusListenersSupportedKinds,
};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, LocalObjectReference, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, SecurityContext, Service, ServiceAccount,
    ServiceAccountTokenProjection, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    Condition, LabelSelector, ObjectMeta, OwnerReference, Time,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::settings::{
    ConfigScope, ControllerConfig, DEFAULT_ISTIOD_ADDRESS, DEFAULT_ROOT_CA, DEFAULT_TOKEN,
};
use super::{labels, names};
use crate::ports;

/// The message of a listener refused by a waypoint (istiod's, verbatim).
pub const UNSUPPORTED_LISTENER: &str =
    "Expected a single listener on port 15008 with protocol \"HBONE\"";

/// The traffic a waypoint handles (`istio.io/waypoint-for`).
pub const WAYPOINT_FOR_VALUES: [&str; 4] = ["service", "workload", "all", "none"];

/// The `WAYPOINT_CONFIG_SOURCE` of every waypoint: the Kubernetes API server.
pub const CONFIG_SOURCE: &str = "k8s://";
/// The key of istiod's mesh ConfigMap that holds the `meshConfig` YAML, copied as is.
pub const MESH_KEY: &str = "mesh";
/// Where the waypoint's copy of the mesh configuration is mounted: the directory of its
/// default `MESH_CONFIG_FILE` (`/etc/istio/config/mesh`).
pub const MESH_CONFIG_DIR: &str = "/etc/istio/config";

/// The RBAC API group.
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// Everything the controller wants for one Gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct Desired {
    /// The waypoint's ServiceAccount; `None` when the Gateway is not programmed.
    pub service_account: Option<ServiceAccount>,
    /// The waypoint's Deployment; `None` when the Gateway is not programmed.
    pub deployment: Option<Deployment>,
    /// The waypoint's Service; `None` when the Gateway is not programmed.
    pub service: Option<Service>,
    /// The RoleBinding granting the waypoint's ServiceAccount read access to the L7
    /// configuration of its namespace; `None` when the Gateway is not programmed or in
    /// `cluster` scope.
    pub role_binding: Option<RoleBinding>,
    /// The Gateway's status.
    pub gateway_status: GatewayStatus,
}

/// Whether `class` is served by this controller.
pub fn is_ours(class: &GatewayClass, settings: &ControllerConfig) -> bool {
    class.spec.controller_name == settings.controller_name
}

/// The names of a Gateway's objects: (Deployment and Service, ServiceAccount).
pub fn object_names(gateway: &Gateway) -> (String, String) {
    let name = gateway.metadata.name.clone().unwrap_or_default();
    let annotation = |key: &str| {
        gateway
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    (
        annotation(names::NAME_OVERRIDE).unwrap_or_else(|| name.clone()),
        annotation(names::SERVICE_ACCOUNT).unwrap_or(name),
    )
}

/// The traffic the waypoint handles: the Gateway's `istio.io/waypoint-for` label, else the
/// class's, else `service`. Values other than [`WAYPOINT_FOR_VALUES`] are ignored.
pub fn waypoint_for(gateway: &Gateway, class: &GatewayClass) -> &'static str {
    let label = |l: &Option<BTreeMap<String, String>>| {
        l.as_ref()
            .and_then(|l| l.get(labels::WAYPOINT_FOR))
            .and_then(|v| WAYPOINT_FOR_VALUES.iter().find(|w| **w == v.as_str()))
            .copied()
    };
    label(&gateway.metadata.labels)
        .or_else(|| label(&class.metadata.labels))
        .unwrap_or("service")
}

/// Whether the listeners are what a waypoint serves: exactly one, `HBONE` on 15008.
pub fn listeners_valid(gateway: &Gateway) -> bool {
    matches!(gateway.spec.listeners.as_slice(),
        [l] if l.port == i32::from(ports::HBONE) && l.protocol == "HBONE")
}

/// The desired objects and status of `gateway`, or `None` when its class is not ours (the
/// Gateway is then never touched). `service` is the waypoint Service as observed (its
/// ClusterIP makes the Gateway programmed); `now` stamps conditions whose status changes.
pub fn reconcile(
    gateway: &Gateway,
    class: &GatewayClass,
    settings: &ControllerConfig,
    service: Option<&Service>,
    now: Time,
) -> Option<Desired> {
    let ctx = Objects::of(gateway, class, settings)?;
    let valid = listeners_valid(gateway);
    let hostname = format!(
        "{}.{}.svc.{}",
        ctx.deployment_name,
        ctx.namespace,
        settings.cluster_domain()
    );
    let addresses = if valid {
        service_addresses(service, &hostname)
    } else {
        Vec::new()
    };
    let status = gateway_status(gateway, valid, &hostname, addresses, now);
    if !valid {
        return Some(Desired {
            service_account: None,
            deployment: None,
            service: None,
            role_binding: None,
            gateway_status: status,
        });
    }
    Some(Desired {
        service_account: Some(ctx.service_account()),
        deployment: Some(ctx.deployment()),
        service: Some(ctx.service()),
        role_binding: match settings.waypoint.config_scope {
            ConfigScope::Namespace => Some(ctx.role_binding()),
            ConfigScope::Cluster => None,
        },
        gateway_status: status,
    })
}

/// The name of a waypoint's copy of the mesh configuration: `<waypoint>-istio-mesh`.
pub fn mesh_config_name(deployment_name: &str) -> String {
    format!("{deployment_name}-istio-mesh")
}

/// The waypoint's copy of istiod's mesh configuration: `mesh` is the `mesh` key of istiod's
/// ConfigMap (`None` when it or its key is missing: the copy is then empty, and the waypoint
/// runs without extension providers). `None` when the Gateway is not ours or not programmed,
/// like the other objects.
pub fn mesh_config_map(
    gateway: &Gateway,
    class: &GatewayClass,
    settings: &ControllerConfig,
    mesh: Option<&str>,
) -> Option<ConfigMap> {
    let ctx = Objects::of(gateway, class, settings)?;
    if !listeners_valid(gateway) {
        return None;
    }
    Some(ConfigMap {
        metadata: ctx.meta(&mesh_config_name(&ctx.deployment_name)),
        data: mesh.map(|m| BTreeMap::from([(MESH_KEY.to_string(), m.to_string())])),
        ..ConfigMap::default()
    })
}

/// The ServiceAccount subject of a waypoint.
fn service_account_subject(namespace: &str, name: &str) -> Subject {
    Subject {
        api_group: None,
        kind: "ServiceAccount".into(),
        name: name.into(),
        namespace: Some(namespace.into()),
    }
}

/// The reference to the configuration ClusterRole.
fn config_role_ref(settings: &ControllerConfig) -> RoleRef {
    RoleRef {
        api_group: Some(RBAC_GROUP.into()),
        kind: "ClusterRole".into(),
        name: settings.waypoint.config_cluster_role.clone(),
    }
}

/// The subjects of the cluster-wide configuration binding (`cluster` scope): the
/// ServiceAccount of every waypoint the controller provisions — every Gateway of one of its
/// `classes`, with valid listeners and not being deleted — sorted by namespace and name, each
/// once.
pub fn cluster_subjects<'a>(
    gateways: impl IntoIterator<Item = &'a Gateway>,
    classes: &[GatewayClass],
    settings: &ControllerConfig,
) -> Vec<Subject> {
    let ours: Vec<&str> = classes
        .iter()
        .filter(|c| is_ours(c, settings))
        .map(class_name)
        .collect();
    let accounts: std::collections::BTreeSet<(String, String)> = gateways
        .into_iter()
        .filter(|g| g.metadata.deletion_timestamp.is_none())
        .filter(|g| ours.contains(&g.spec.gateway_class_name.as_str()))
        .filter(|g| listeners_valid(g))
        .map(|g| {
            let namespace = g.metadata.namespace.clone().unwrap_or_default();
            (namespace, object_names(g).1)
        })
        .filter(|(namespace, name)| !namespace.is_empty() && !name.is_empty())
        .collect();
    accounts
        .into_iter()
        .map(|(namespace, name)| service_account_subject(&namespace, &name))
        .collect()
}

/// The cluster-wide configuration binding with `subjects` (`cluster` scope): named like the
/// ClusterRole it binds, created empty by the chart, its subjects kept by the controller.
pub fn cluster_role_binding(
    settings: &ControllerConfig,
    subjects: Vec<Subject>,
) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: ObjectMeta {
            name: Some(settings.waypoint.config_cluster_role.clone()),
            ..ObjectMeta::default()
        },
        role_ref: config_role_ref(settings),
        subjects: Some(subjects),
    }
}

fn class_name(class: &GatewayClass) -> &str {
    class.metadata.name.as_deref().unwrap_or_default()
}

/// The Service's addresses for `status.addresses`: its ClusterIPs as `IPAddress`, then its
/// hostname as `Hostname`; empty while it has no ClusterIP.
fn service_addresses(service: Option<&Service>, hostname: &str) -> Vec<GatewayStatusAddresses> {
    let Some(spec) = service.and_then(|s| s.spec.as_ref()) else {
        return Vec::new();
    };
    let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
    if ips.is_empty()
        && let Some(ip) = &spec.cluster_ip
    {
        ips.push(ip.clone());
    }
    ips.retain(|ip| !ip.is_empty() && ip != "None");
    if ips.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<GatewayStatusAddresses> = ips
        .into_iter()
        .map(|value| GatewayStatusAddresses {
            r#type: Some("IPAddress".into()),
            value,
        })
        .collect();
    out.push(GatewayStatusAddresses {
        r#type: Some("Hostname".into()),
        value: hostname.to_string(),
    });
    out
}

/// A condition, keeping the previous `lastTransitionTime` when the status did not change.
fn condition(
    previous: Option<&[Condition]>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = previous
        .and_then(|p| p.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

fn gateway_status(
    gateway: &Gateway,
    valid: bool,
    hostname: &str,
    addresses: Vec<GatewayStatusAddresses>,
    now: Time,
) -> GatewayStatus {
    let generation = gateway.metadata.generation;
    let previous = gateway.status.as_ref();
    let prev_conditions = previous.and_then(|s| s.conditions.as_deref());
    // Once reported, an address is never removed (istiod: "do not report an address until
    // ready, but once ready never remove it").
    let addresses = if addresses.is_empty() && valid {
        previous
            .and_then(|s| s.addresses.clone())
            .unwrap_or_default()
    } else {
        addresses
    };
    let programmed = valid && !addresses.is_empty();
    let c = |type_, status, reason, message: String| {
        condition(
            prev_conditions,
            type_,
            status,
            reason,
            message,
            generation,
            &now,
        )
    };
    let conditions = vec![
        if valid {
            c("Accepted", true, "Accepted", "Resource accepted".into())
        } else {
            c(
                "Accepted",
                false,
                "ListenersNotValid",
                UNSUPPORTED_LISTENER.into(),
            )
        },
        if programmed {
            c(
                "Programmed",
                true,
                "Programmed",
                format!(
                    "Resource programmed, assigned to service(s) {hostname}:{}",
                    ports::HBONE
                ),
            )
        } else if valid {
            c(
                "Programmed",
                false,
                "AddressNotUsable",
                format!(
                    "Failed to assign to any requested addresses: hostname \"{hostname}\" not found"
                ),
            )
        } else {
            c("Programmed", false, "Invalid", UNSUPPORTED_LISTENER.into())
        },
        c(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "All references resolved".into(),
        ),
    ];
    let listeners = gateway
        .spec
        .listeners
        .iter()
        .map(|l| {
            let prev = previous
                .and_then(|s| s.listeners.as_ref())
                .and_then(|ls| ls.iter().find(|p| p.name == l.name))
                .map(|p| p.conditions.as_slice());
            let c = |type_, status, reason, message: &str| {
                condition(prev, type_, status, reason, message, generation, &now)
            };
            let conditions = if valid {
                vec![
                    c("Accepted", true, "Accepted", "No errors found"),
                    c("Conflicted", false, "NoConflicts", "No errors found"),
                    c("Programmed", true, "Programmed", "No errors found"),
                    c("ResolvedRefs", true, "ResolvedRefs", "No errors found"),
                ]
            } else {
                vec![
                    c(
                        "Accepted",
                        false,
                        "UnsupportedProtocol",
                        UNSUPPORTED_LISTENER,
                    ),
                    c("Conflicted", false, "NoConflicts", "No errors found"),
                    c("Programmed", false, "Invalid", UNSUPPORTED_LISTENER),
                    c("ResolvedRefs", true, "ResolvedRefs", "No errors found"),
                ]
            };
            GatewayStatusListeners {
                name: l.name.clone(),
                attached_routes: 0,
                conditions,
                supported_kinds: Some(
                    ["HTTPRoute", "GRPCRoute"]
                        .into_iter()
                        .map(|kind| GatewayStatusListenersSupportedKinds {
                            group: Some(names::GATEWAY_GROUP.into()),
                            kind: kind.into(),
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    GatewayStatus {
        addresses: (!addresses.is_empty()).then_some(addresses),
        attached_listener_sets: None,
        conditions: Some(conditions),
        listeners: Some(listeners),
    }
}

/// Inputs of the object builders of one Gateway.
struct Objects<'a> {
    gateway: &'a Gateway,
    settings: &'a ControllerConfig,
    deployment_name: String,
    sa_name: String,
    namespace: String,
    traffic: &'static str,
}

impl<'a> Objects<'a> {
    /// The builders of `gateway`'s objects, or `None` when its class is not ours (the
    /// Gateway is then never touched).
    fn of(
        gateway: &'a Gateway,
        class: &GatewayClass,
        settings: &'a ControllerConfig,
    ) -> Option<Self> {
        if !is_ours(class, settings) || gateway.spec.gateway_class_name != class_name(class) {
            return None;
        }
        let (deployment_name, sa_name) = object_names(gateway);
        Some(Self {
            gateway,
            settings,
            deployment_name,
            sa_name,
            namespace: gateway.metadata.namespace.clone().unwrap_or_default(),
            traffic: waypoint_for(gateway, class),
        })
    }

    fn gateway_name(&self) -> String {
        self.gateway.metadata.name.clone().unwrap_or_default()
    }

    /// Labels of every object: the Gateway's name and class, ours as manager, the traffic
    /// type.
    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::GATEWAY_NAME.into(), self.gateway_name()),
            (
                labels::GATEWAY_CLASS_NAME.into(),
                self.gateway.spec.gateway_class_name.clone(),
            ),
            (labels::MANAGED.into(), self.settings.managed_label()),
            (labels::WAYPOINT_FOR.into(), self.traffic.into()),
        ])
    }

    fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![OwnerReference {
                api_version: format!("{}/v1", names::GATEWAY_GROUP),
                kind: "Gateway".into(),
                name: self.gateway_name(),
                uid: self.gateway.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        }
    }

    fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(labels::GATEWAY_NAME.into(), self.gateway_name())])
    }

    fn service_account(&self) -> ServiceAccount {
        ServiceAccount {
            metadata: self.meta(&self.sa_name),
            ..ServiceAccount::default()
        }
    }

    /// Binds the waypoint's ServiceAccount to the configuration ClusterRole in its namespace.
    fn role_binding(&self) -> RoleBinding {
        RoleBinding {
            metadata: self.meta(&self.sa_name),
            role_ref: config_role_ref(self.settings),
            subjects: Some(vec![service_account_subject(
                &self.namespace,
                &self.sa_name,
            )]),
        }
    }

    fn service(&self) -> Service {
        let port = |name: &str, port: u16, app_protocol: &str| ServicePort {
            name: Some(name.into()),
            port: i32::from(port),
            protocol: Some("TCP".into()),
            app_protocol: Some(app_protocol.into()),
            target_port: Some(IntOrString::Int(i32::from(port))),
            ..ServicePort::default()
        };
        let mut metadata = self.meta(&self.deployment_name);
        metadata.annotations = Some(BTreeMap::from([(
            "networking.istio.io/traffic-distribution".into(),
            "PreferClose".into(),
        )]));
        Service {
            metadata,
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                ip_family_policy: Some("PreferDualStack".into()),
                selector: Some(self.selector()),
                ports: Some(vec![
                    port("status-port", ports::READINESS, "tcp"),
                    port("mesh", ports::HBONE, "all"),
                    port("metrics", ports::METRICS, "http"),
                ]),
                ..ServiceSpec::default()
            }),
            status: None,
        }
    }

    /// The container's environment: per-Gateway variables first, then the configured ones
    /// over the defaults (istiod as control plane and CA).
    fn env(&self) -> Vec<EnvVar> {
        let field = |name: &str, path: &str| EnvVar {
            name: name.into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        };
        let value = |name: &str, value: &str| EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        };
        let mut env = vec![
            field("POD_NAME", "metadata.name"),
            field("POD_NAMESPACE", "metadata.namespace"),
            field("INSTANCE_IP", "status.podIP"),
            value("WAYPOINT_NAME", &self.gateway_name()),
            value("SERVICE_ACCOUNT", &self.sa_name),
            value("ISTIO_META_WAYPOINT_FOR", self.traffic),
        ];
        let fixed: Vec<String> = env.iter().map(|e| e.name.clone()).collect();
        let mut configured: BTreeMap<String, String> = [
            ("XDS_ADDRESS", DEFAULT_ISTIOD_ADDRESS),
            ("CA_ADDRESS", DEFAULT_ISTIOD_ADDRESS),
            ("XDS_ROOT_CA", DEFAULT_ROOT_CA),
            ("CA_ROOT_CA", DEFAULT_ROOT_CA),
            ("AUTH_TOKEN", DEFAULT_TOKEN),
            ("TRUST_DOMAIN", "cluster.local"),
            ("CLUSTER_DOMAIN", "cluster.local"),
            ("WAYPOINT_CONFIG_SOURCE", CONFIG_SOURCE),
            (
                "WAYPOINT_CONFIG_NAMESPACES",
                match self.settings.waypoint.config_scope {
                    ConfigScope::Namespace => &self.namespace,
                    ConfigScope::Cluster => "",
                },
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        configured.extend(self.settings.waypoint.env.clone());
        env.extend(
            configured
                .iter()
                .filter(|(k, _)| !fixed.contains(k))
                .map(|(k, v)| value(k, v)),
        );
        env
    }

    fn deployment(&self) -> Deployment {
        let w = &self.settings.waypoint;
        let mut pod_labels = self.labels();
        pod_labels.extend(w.pod_labels.clone());
        pod_labels.extend(
            [
                (labels::DATAPLANE_MODE, "none"),
                (labels::SIDECAR_INJECT, "false"),
                ("service.istio.io/canonical-name", &self.deployment_name),
                ("service.istio.io/canonical-revision", "latest"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let metrics_port = ports::METRICS.to_string();
        let mut annotations: BTreeMap<String, String> = [
            ("prometheus.io/scrape", "true"),
            ("prometheus.io/port", metrics_port.as_str()),
            ("prometheus.io/path", "/stats/prometheus"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        annotations.extend(w.pod_annotations.clone());
        let probe = |period: i32, failures: i32| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(ztunnel::admin::readiness::READY_PATH.into()),
                port: IntOrString::Int(i32::from(ports::READINESS)),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(period),
            failure_threshold: Some(failures),
            ..Probe::default()
        };
        let container_port = |name: &str, port: u16| ContainerPort {
            name: Some(name.into()),
            container_port: i32::from(port),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        };
        let container = Container {
            name: "waypoint".into(),
            image: Some(w.image.clone()),
            image_pull_policy: w.image_pull_policy.clone(),
            env: Some(self.env()),
            ports: Some(vec![
                container_port("mesh", ports::HBONE),
                container_port("metrics", ports::METRICS),
                container_port("status-port", ports::READINESS),
            ]),
            readiness_probe: Some(probe(15, 4)),
            startup_probe: Some(probe(1, 30)),
            resources: w.resources.clone(),
            security_context: Some(SecurityContext {
                privileged: Some(false),
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                run_as_user: Some(1337),
                run_as_group: Some(1337),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".into()]),
                    add: None,
                }),
                ..SecurityContext::default()
            }),
            volume_mounts: Some(vec![
                VolumeMount {
                    name: "istio-token".into(),
                    mount_path: "/var/run/secrets/tokens".into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: "istiod-ca-cert".into(),
                    mount_path: "/var/run/secrets/istio".into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
                VolumeMount {
                    name: "istio-mesh".into(),
                    mount_path: MESH_CONFIG_DIR.into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                },
            ]),
            ..Container::default()
        };
        let volumes = vec![
            Volume {
                name: "istio-token".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some("istio-ca".into()),
                            expiration_seconds: Some(43_200),
                            path: "istio-token".into(),
                        }),
                        ..VolumeProjection::default()
                    }]),
                    default_mode: None,
                }),
                ..Volume::default()
            },
            Volume {
                name: "istiod-ca-cert".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: "istio-ca-root-cert".into(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "istio-mesh".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: mesh_config_name(&self.deployment_name),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
        ];
        let non_empty = |m: &BTreeMap<String, String>| (!m.is_empty()).then(|| m.clone());
        Deployment {
            metadata: self.meta(&self.deployment_name),
            spec: Some(DeploymentSpec {
                replicas: Some(w.replicas),
                selector: LabelSelector {
                    match_labels: Some(self.selector()),
                    match_expressions: None,
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(pod_labels),
                        annotations: Some(annotations),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        service_account_name: Some(self.sa_name.clone()),
                        termination_grace_period_seconds: Some(w.termination_grace_period_seconds),
                        containers: vec![container],
                        volumes: Some(volumes),
                        security_context: Some(PodSecurityContext {
                            run_as_non_root: Some(true),
                            run_as_user: Some(1337),
                            run_as_group: Some(1337),
                            ..PodSecurityContext::default()
                        }),
                        image_pull_secrets: (!w.image_pull_secrets.is_empty()).then(|| {
                            w.image_pull_secrets
                                .iter()
                                .map(|name| LocalObjectReference { name: name.clone() })
                                .collect()
                        }),
                        node_selector: non_empty(&w.node_selector),
                        tolerations: (!w.tolerations.is_empty()).then(|| w.tolerations.clone()),
                        affinity: w.affinity.clone(),
                        topology_spread_constraints: (!w.topology_spread_constraints.is_empty())
                            .then(|| w.topology_spread_constraints.clone()),
                        ..PodSpec::default()
                    }),
                },
                ..DeploymentSpec::default()
            }),
            status: None,
        }
    }
}
