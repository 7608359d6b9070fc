//! Protobuf and gRPC types of the protocols an Istio ambient data plane speaks, wire-compatible
//! with Istio and Envoy:
//!
//! - [`istio::workload`]: the workload API (`Address`, `Workload`, `Service`) pushed by istiod.
//! - [`istio::security`]: L4 authorization policies (`Authorization`) pushed by istiod.
//! - [`envoy::service::discovery::v3`]: Envoy's aggregated discovery service (delta ADS), the
//!   transport for both of the above, with client and server.
//! - [`envoy::service::auth::v3`]: Envoy's external authorization service (`Authorization.Check`),
//!   which a waypoint asks about requests a CUSTOM AuthorizationPolicy matches, with client and
//!   server.
//! - [`istio::v1::auth`]: the Istio CA (`IstioCertificateService`), with client and server.
//! - [`istio::workload::zds`]: ZDS, the in-pod redirection channel between the Istio CNI node
//!   agent and the node proxy.
//! - [`opentelemetry::proto::collector::trace::v1`]: OTLP/gRPC trace export
//!   (`TraceService.Export`), with client and server, and the OTLP trace, resource and common
//!   types it carries (the parts of OTLP the waypoint's spans use).
//!
//! Every module mirrors its protobuf package and holds only code generated at build time from the
//! `.proto` files in this crate's `proto/` directory; `google.protobuf` types come from
//! [`prost_types`]. Each message implements [`prost::Name`], so [`prost::Name::type_url`] gives
//! its `type.googleapis.com/...` URL, as used by `google.protobuf.Any` and xDS.
//!
//! The generated gRPC clients and servers do not include a transport: clients run over any
//! [`tonic::client::GrpcService`], servers are plain `tower` services.

pub use prost;
pub use prost_types;

/// xDS type URL of workload-API resources, [`istio::workload::Address`].
pub const ADDRESS_TYPE_URL: &str = "type.googleapis.com/istio.workload.Address";

/// xDS type URL of authorization policies, [`istio::security::Authorization`].
pub const AUTHORIZATION_TYPE_URL: &str = "type.googleapis.com/istio.security.Authorization";

/// HTTP/2 `:path` of the delta ADS stream, `AggregatedDiscoveryService.DeltaAggregatedResources`.
pub const DELTA_AGGREGATED_RESOURCES_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// HTTP/2 `:path` of the external authorization call, `Authorization.Check`.
pub const AUTHORIZATION_CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// HTTP/2 `:path` of the Istio CA call, `IstioCertificateService.CreateCertificate`.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// Generated code for packages under `istio`.
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod istio {
    /// Package `istio.workload`: the workload API.
    pub mod workload {
        include!(concat!(env!("OUT_DIR"), "/istio.workload.rs"));

        /// Package `istio.workload.zds`: the CNI agent to node proxy channel.
        pub mod zds {
            include!(concat!(env!("OUT_DIR"), "/istio.workload.zds.rs"));
        }
    }

    /// Package `istio.security`: L4 authorization policies.
    pub mod security {
        include!(concat!(env!("OUT_DIR"), "/istio.security.rs"));
    }

    /// Packages under `istio.v1`.
    pub mod v1 {
        /// Package `istio.v1.auth`: the Istio certificate authority.
        pub mod auth {
            include!(concat!(env!("OUT_DIR"), "/istio.v1.auth.rs"));
        }
    }
}

/// Generated code for packages under `envoy`.
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod envoy {
    /// Packages under `envoy.service`.
    pub mod service {
        /// Packages under `envoy.service.discovery`.
        pub mod discovery {
            /// Package `envoy.service.discovery.v3`: aggregated discovery (ADS).
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.discovery.v3.rs"));
            }
        }

        /// Packages under `envoy.service.auth`.
        pub mod auth {
            /// Package `envoy.service.auth.v3`: external authorization (`Authorization.Check`).
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.service.auth.v3.rs"));
            }
        }
    }

    /// Packages under `envoy.config`.
    pub mod config {
        /// Packages under `envoy.config.core`.
        pub mod core {
            /// Package `envoy.config.core.v3`: the node description, addresses, headers and
            /// related types.
            pub mod v3 {
                include!(concat!(env!("OUT_DIR"), "/envoy.config.core.v3.rs"));
            }
        }
    }

    /// Packages under `envoy.type`.
    pub mod r#type {
        /// Package `envoy.type.v3`: common value types (versions, HTTP status).
        pub mod v3 {
            include!(concat!(env!("OUT_DIR"), "/envoy.r#type.v3.rs"));
        }
    }
}

/// HTTP/2 `:path` of the OTLP trace export call, `TraceService.Export`.
pub const OTLP_TRACE_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Generated code for packages under `opentelemetry.proto` (OTLP).
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod opentelemetry {
    /// Packages under `opentelemetry.proto`.
    pub mod proto {
        /// Packages under `opentelemetry.proto.common`.
        pub mod common {
            /// Package `opentelemetry.proto.common.v1`: attributes and scopes.
            pub mod v1 {
                include!(concat!(
                    env!("OUT_DIR"),
                    "/opentelemetry.proto.common.v1.rs"
                ));
            }
        }

        /// Packages under `opentelemetry.proto.resource`.
        pub mod resource {
            /// Package `opentelemetry.proto.resource.v1`: the producing entity.
            pub mod v1 {
                include!(concat!(
                    env!("OUT_DIR"),
                    "/opentelemetry.proto.resource.v1.rs"
                ));
            }
        }

        /// Packages under `opentelemetry.proto.trace`.
        pub mod trace {
            /// Package `opentelemetry.proto.trace.v1`: spans.
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.trace.v1.rs"));
            }
        }

        /// Packages under `opentelemetry.proto.collector`.
        pub mod collector {
            /// Packages under `opentelemetry.proto.collector.trace`.
            pub mod trace {
                /// Package `opentelemetry.proto.collector.trace.v1`: `TraceService.Export`.
                pub mod v1 {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/opentelemetry.proto.collector.trace.v1.rs"
                    ));
                }
            }
        }
    }
}

/// Generated code for packages under `google` that `prost_types` does not provide.
#[allow(missing_docs, clippy::all, clippy::unwrap_used)]
pub mod google {
    /// Package `google.rpc`: the gRPC error model.
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}
