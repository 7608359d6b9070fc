//! Istio's mesh configuration (`meshConfig`): the `extensionProviders` that CUSTOM
//! AuthorizationPolicies name.
//!
//! # Where this sits in the data path
//!
//! ```text
//! mesh config file (--mesh-config, /etc/istio/config/mesh) ─▶ MeshConfig::parse
//!   ─▶ ExtensionProviders (in L7State) ─▶ inbound VIP authorize phase: a matching CUSTOM
//!      policy's provider.name ─▶ ExtAuthzProvider ─▶ crate::ext_authz (check request)
//! ```
//!
//! The file is the `meshConfig` YAML as Istio mounts it from the `istio` ConfigMap. Only
//! `extensionProviders` is read; every other field is ignored. Of the providers, only the
//! external authorizers are kept: `envoyExtAuthzHttp` and `envoyExtAuthzGrpc`. Providers of
//! other kinds (tracing, access logs, metrics) are skipped. A provider that cannot be read is
//! reported as a [`ProviderError`] and left out, while the others are kept; a CUSTOM policy
//! naming it then fails closed, as one naming an unknown provider does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

use super::authz::Pattern;
use super::common::{header_name, header_value};
use super::duration::IstioDuration;

/// Where Istio mounts the mesh configuration; the default of `--mesh-config`.
pub const DEFAULT_MESH_CONFIG_PATH: &str = "/etc/istio/config/mesh";
/// The default `timeout` of an external authorizer (Istio's: 10 minutes).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// The default `statusOnError`: 403.
pub const DEFAULT_STATUS_ON_ERROR: StatusCode = StatusCode::FORBIDDEN;
/// Largest mesh configuration file read, in bytes.
pub const MAX_MESH_CONFIG_BYTES: u64 = 4 << 20;

/// Why the mesh configuration, or one of its providers, was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MeshConfigError {
    /// The file is not YAML, or `extensionProviders` is not a list.
    #[error("mesh config is not valid: {0}")]
    Syntax(String),
    /// The file cannot be read.
    #[error("mesh config {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// One `extensionProviders` entry that was left out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("extensionProviders[{index}] ({name:?}): {reason}")]
pub struct ProviderError {
    /// Its index in the list.
    pub index: usize,
    /// Its name (empty when absent).
    pub name: String,
    /// Why.
    pub reason: String,
}

/// The external authorizers of the mesh configuration, by name.
#[derive(Debug, Clone, Default)]
pub struct ExtensionProviders {
    by_name: HashMap<String, Arc<ExtAuthzProvider>>,
}

impl ExtensionProviders {
    /// The provider `name`, when defined (and readable).
    pub fn get(&self, name: &str) -> Option<&Arc<ExtAuthzProvider>> {
        self.by_name.get(name)
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Parses a mesh configuration document; `Err` only when the document as a whole is
    /// unreadable. Providers that cannot be read are returned with the others left in.
    pub fn parse(yaml: &str) -> Result<(Self, Vec<ProviderError>), MeshConfigError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            #[serde(default)]
            extension_providers: Option<Vec<serde_yaml_ng::Value>>,
        }
        if yaml.trim().is_empty() {
            return Ok((Self::default(), Vec::new()));
        }
        let raw: Option<Raw> =
            serde_yaml_ng::from_str(yaml).map_err(|e| MeshConfigError::Syntax(e.to_string()))?;
        let mut providers = Self::default();
        let mut errors = Vec::new();
        for (index, value) in raw
            .and_then(|r| r.extension_providers)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let name = value
                .get("name")
                .and_then(serde_yaml_ng::Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let error = |reason: String| ProviderError {
                index,
                name: name.clone(),
                reason,
            };
            match ExtAuthzProvider::from_value(value) {
                Ok(None) => {}
                Ok(Some(provider)) => {
                    if providers.by_name.contains_key(&provider.name) {
                        errors.push(error("duplicate provider name".into()));
                        continue;
                    }
                    providers
                        .by_name
                        .insert(provider.name.clone(), Arc::new(provider));
                }
                Err(reason) => errors.push(error(reason)),
            }
        }
        Ok((providers, errors))
    }

    /// Reads and parses the file at `path`; a missing file is no providers.
    pub fn load(path: &std::path::Path) -> Result<(Self, Vec<ProviderError>), MeshConfigError> {
        use std::io::Read;
        let read_error = |e: std::io::Error| MeshConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Self::default(), Vec::new()));
            }
            Err(e) => return Err(read_error(e)),
        };
        let mut text = String::new();
        file.take(MAX_MESH_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        if text.len() as u64 > MAX_MESH_CONFIG_BYTES {
            return Err(MeshConfigError::Read {
                path: path.display().to_string(),
                reason: format!("larger than {MAX_MESH_CONFIG_BYTES} bytes"),
            });
        }
        Self::parse(&text)
    }
}

/// An external authorizer: `envoyExtAuthzHttp` or `envoyExtAuthzGrpc`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtAuthzProvider {
    /// `name`: what `AuthorizationPolicy.spec.provider.name` refers to.
    pub name: String,
    /// `service`: `[<namespace>/]<hostname>` of a mesh service, or a literal IP address.
    pub service: String,
    /// `port`.
    pub port: u16,
    /// `timeout`: how long to wait for the authorizer (default [`DEFAULT_TIMEOUT`], 600s).
    pub timeout: Duration,
    /// `failOpen`: allow the request when the authorizer cannot be reached or fails
    /// (default false).
    pub fail_open: bool,
    /// `statusOnError`: the status answered when the authorizer cannot be reached or fails
    /// and `failOpen` is false (default [`DEFAULT_STATUS_ON_ERROR`], 403).
    pub status_on_error: StatusCode,
    /// `includeRequestBodyInCheck`: send the request body too (default: not sent).
    pub body: Option<BodySettings>,
    /// The protocol and its own settings.
    pub protocol: ProviderProtocol,
}

/// How an authorizer is asked.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderProtocol {
    /// `envoyExtAuthzHttp`: an HTTP/1.1 request per check.
    Http(HttpSettings),
    /// `envoyExtAuthzGrpc`: `envoy.service.auth.v3.Authorization/Check`.
    Grpc,
}

/// The settings of an `envoyExtAuthzHttp` provider.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpSettings {
    /// `pathPrefix`: prepended to the request's path in the check request (default none).
    pub path_prefix: String,
    /// `includeRequestHeadersInCheck` (older name `includeHeadersInCheck`): the request
    /// headers copied into the check request, besides `Host`, the method, the path and
    /// `Content-Length` (default none).
    pub include_request_headers: Vec<Pattern>,
    /// `includeAdditionalHeadersInCheck`: fixed headers added to the check request,
    /// replacing request headers of the same name (default none).
    pub additional_headers: Vec<(HeaderName, HeaderValue)>,
    /// `headersToUpstreamOnAllow`: authorizer response headers set on the request sent
    /// upstream when it allows (default none).
    pub headers_to_upstream_on_allow: Vec<Pattern>,
    /// `headersToDownstreamOnDeny`: authorizer response headers sent to the client when it
    /// denies (default: all of them).
    pub headers_to_downstream_on_deny: Vec<Pattern>,
    /// `headersToDownstreamOnAllow`: authorizer response headers set on the response sent to
    /// the client when it allows (default none).
    pub headers_to_downstream_on_allow: Vec<Pattern>,
}

/// `includeRequestBodyInCheck`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodySettings {
    /// `maxRequestBytes`: the most body bytes buffered for the check (required, > 0).
    pub max_request_bytes: u32,
    /// `allowPartialMessage`: send the first `maxRequestBytes` of a larger body; when false
    /// (the default) a larger body is answered 413.
    pub allow_partial_message: bool,
    /// `packAsBytes` (gRPC): send the body as `raw_body` bytes instead of text (default false).
    pub pack_as_bytes: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProvider {
    #[serde(default)]
    name: String,
    envoy_ext_authz_http: Option<RawHttp>,
    envoy_ext_authz_grpc: Option<RawCommon>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCommon {
    #[serde(default)]
    service: String,
    #[serde(default)]
    port: u32,
    timeout: Option<IstioDuration>,
    #[serde(default)]
    fail_open: bool,
    /// A string in Istio's API; a YAML number is accepted too.
    status_on_error: Option<serde_yaml_ng::Value>,
    include_request_body_in_check: Option<RawBody>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttp {
    #[serde(flatten)]
    common: RawCommon,
    #[serde(default)]
    path_prefix: String,
    include_request_headers_in_check: Option<Vec<String>>,
    include_headers_in_check: Option<Vec<String>>,
    #[serde(default)]
    include_additional_headers_in_check: BTreeMap<String, String>,
    #[serde(default)]
    headers_to_upstream_on_allow: Vec<String>,
    #[serde(default)]
    headers_to_downstream_on_deny: Vec<String>,
    #[serde(default)]
    headers_to_downstream_on_allow: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBody {
    #[serde(default)]
    max_request_bytes: u32,
    #[serde(default)]
    allow_partial_message: bool,
    #[serde(default)]
    pack_as_bytes: bool,
}

impl ExtAuthzProvider {
    /// Reads one `extensionProviders` entry: `None` for a provider of another kind.
    fn from_value(value: serde_yaml_ng::Value) -> Result<Option<Self>, String> {
        let raw: RawProvider = serde_yaml_ng::from_value(value).map_err(|e| e.to_string())?;
        if raw.name.is_empty() {
            return Err("name must not be empty".into());
        }
        let (common, protocol) = match (raw.envoy_ext_authz_http, raw.envoy_ext_authz_grpc) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => {
                return Err("only one of envoyExtAuthzHttp or envoyExtAuthzGrpc can be set".into());
            }
            (None, Some(grpc)) => (grpc, ProviderProtocol::Grpc),
            (Some(http), None) => {
                let settings = http_settings(&http)?;
                (http.common, ProviderProtocol::Http(settings))
            }
        };
        let service = common.service.trim().to_owned();
        if service.is_empty() {
            return Err("service must not be empty".into());
        }
        let port = u16::try_from(common.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {} is not in 1..=65535", common.port))?;
        let status_text = match common.status_on_error {
            None | Some(serde_yaml_ng::Value::Null) => None,
            Some(serde_yaml_ng::Value::String(s)) => Some(s.trim().to_owned()),
            Some(serde_yaml_ng::Value::Number(n)) => Some(n.to_string()),
            Some(other) => Some(format!("{other:?}")),
        };
        let status_on_error = match status_text.as_deref() {
            None | Some("") => DEFAULT_STATUS_ON_ERROR,
            Some(s) => s
                .parse::<u16>()
                .ok()
                .and_then(|n| StatusCode::from_u16(n).ok())
                .filter(|s| (200..600).contains(&s.as_u16()))
                .ok_or_else(|| format!("statusOnError {s:?} is not an HTTP status code"))?,
        };
        let body = match common.include_request_body_in_check {
            None => None,
            Some(b) if b.max_request_bytes == 0 => {
                return Err(
                    "includeRequestBodyInCheck.maxRequestBytes must be greater than 0".into(),
                );
            }
            Some(b) => Some(BodySettings {
                max_request_bytes: b.max_request_bytes,
                allow_partial_message: b.allow_partial_message,
                pack_as_bytes: b.pack_as_bytes,
            }),
        };
        Ok(Some(Self {
            name: raw.name,
            service,
            port,
            timeout: common.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0),
            fail_open: common.fail_open,
            status_on_error,
            body,
            protocol,
        }))
    }

    /// The `service` hostname, without a `<namespace>/` qualifier.
    pub fn hostname(&self) -> &str {
        self.service
            .split_once('/')
            .map_or(self.service.as_str(), |(_, host)| host)
    }

    /// The settings of an HTTP provider.
    pub fn http(&self) -> Option<&HttpSettings> {
        match &self.protocol {
            ProviderProtocol::Http(settings) => Some(settings),
            ProviderProtocol::Grpc => None,
        }
    }
}

fn http_settings(raw: &RawHttp) -> Result<HttpSettings, String> {
    let included = match (
        &raw.include_request_headers_in_check,
        &raw.include_headers_in_check,
    ) {
        (Some(new), _) => new.as_slice(),
        (None, Some(old)) => old.as_slice(),
        (None, None) => &[],
    };
    let mut additional = Vec::new();
    for (name, value) in &raw.include_additional_headers_in_check {
        let name =
            header_name(name).map_err(|e| format!("includeAdditionalHeadersInCheck: {e}"))?;
        let value = header_value(name.as_str(), value)
            .map_err(|e| format!("includeAdditionalHeadersInCheck: {e}"))?;
        additional.push((name, value));
    }
    if !raw.path_prefix.is_empty() && !raw.path_prefix.starts_with('/') {
        return Err(format!(
            "pathPrefix {:?} must start with '/'",
            raw.path_prefix
        ));
    }
    Ok(HttpSettings {
        path_prefix: raw.path_prefix.clone(),
        include_request_headers: header_patterns("includeRequestHeadersInCheck", included)?,
        additional_headers: additional,
        headers_to_upstream_on_allow: header_patterns(
            "headersToUpstreamOnAllow",
            &raw.headers_to_upstream_on_allow,
        )?,
        headers_to_downstream_on_deny: header_patterns(
            "headersToDownstreamOnDeny",
            &raw.headers_to_downstream_on_deny,
        )?,
        headers_to_downstream_on_allow: header_patterns(
            "headersToDownstreamOnAllow",
            &raw.headers_to_downstream_on_allow,
        )?,
    })
}

/// Header name patterns (`abc`, `abc*`, `*abc`), matched without regard to case. A lone
/// `*` (presence) is not supported, as in Istio.
fn header_patterns(field: &str, values: &[String]) -> Result<Vec<Pattern>, String> {
    values
        .iter()
        .map(|v| {
            let v = v.trim();
            if v.is_empty() || v == "*" {
                return Err(format!(
                    "{field}: {v:?} is not supported (exact, prefix or suffix matches only)"
                ));
            }
            Ok(Pattern::new(v).into_lowercase())
        })
        .collect()
}

/// Whether header `name` (lower case) matches one of `patterns`.
pub fn header_matches(patterns: &[Pattern], name: &HeaderName) -> bool {
    patterns.iter().any(|p| p.matches(name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> (ExtensionProviders, Vec<ProviderError>) {
        ExtensionProviders::parse(yaml).unwrap()
    }

    #[test]
    fn http_provider_with_every_field() {
        let (providers, errors) = parse(
            "defaultConfig: {discoveryAddress: istiod:15012}\nextensionProviders:\n- name: ext-http\n  envoyExtAuthzHttp:\n    service: ext-authz.foo.svc.cluster.local\n    port: 8000\n    timeout: 2s\n    failOpen: true\n    statusOnError: \"503\"\n    pathPrefix: /check\n    includeRequestHeadersInCheck: [X-Ext-Authz, \"x-user-*\"]\n    includeAdditionalHeadersInCheck: {x-from: waypoint}\n    headersToUpstreamOnAllow: [x-authz-user]\n    headersToDownstreamOnDeny: [\"*-reason\"]\n    headersToDownstreamOnAllow: [x-allowed]\n    includeRequestBodyInCheck: {maxRequestBytes: 100, allowPartialMessage: true}\n- name: zipkin\n  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}\n",
        );
        assert_eq!(errors, []);
        assert_eq!(providers.len(), 1);
        let p = providers.get("ext-http").unwrap();
        assert_eq!(p.hostname(), "ext-authz.foo.svc.cluster.local");
        assert_eq!(p.port, 8000);
        assert_eq!(p.timeout, Duration::from_secs(2));
        assert!(p.fail_open);
        assert_eq!(p.status_on_error, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            p.body,
            Some(BodySettings {
                max_request_bytes: 100,
                allow_partial_message: true,
                pack_as_bytes: false
            })
        );
        let http = p.http().unwrap();
        assert_eq!(http.path_prefix, "/check");
        let name = |s: &str| HeaderName::from_bytes(s.as_bytes()).unwrap();
        assert!(header_matches(
            &http.include_request_headers,
            &name("x-ext-authz")
        ));
        assert!(header_matches(
            &http.include_request_headers,
            &name("x-user-id")
        ));
        assert!(!header_matches(
            &http.include_request_headers,
            &name("cookie")
        ));
        assert!(header_matches(
            &http.headers_to_downstream_on_deny,
            &name("x-deny-reason")
        ));
        assert_eq!(http.additional_headers.len(), 1);
        assert!(providers.get("zipkin").is_none());
    }

    #[test]
    fn defaults_and_the_older_header_field() {
        let (providers, errors) = parse(
            "extensionProviders:\n- name: g\n  envoyExtAuthzGrpc: {service: foo/authz.foo.svc.cluster.local, port: 9000}\n- name: h\n  envoyExtAuthzHttp: {service: 127.0.0.1, port: 80, includeHeadersInCheck: [x-a]}\n",
        );
        assert_eq!(errors, []);
        let g = providers.get("g").unwrap();
        assert_eq!(g.protocol, ProviderProtocol::Grpc);
        assert_eq!(g.hostname(), "authz.foo.svc.cluster.local");
        assert_eq!(g.timeout, DEFAULT_TIMEOUT);
        assert_eq!(g.timeout, Duration::from_secs(600));
        assert!(!g.fail_open);
        assert_eq!(g.status_on_error, StatusCode::FORBIDDEN);
        assert_eq!(g.body, None);
        let h = providers.get("h").unwrap().http().unwrap();
        assert_eq!(h.include_request_headers, [Pattern::Exact("x-a".into())]);
        assert!(h.headers_to_downstream_on_deny.is_empty());
    }

    #[test]
    fn bad_providers_are_reported_and_the_rest_kept() {
        let cases: &[(&str, &str)] = &[
            (
                "{name: a, envoyExtAuthzHttp: {port: 80}}",
                "service must not be empty",
            ),
            (
                "{name: a, envoyExtAuthzHttp: {service: s, port: 0}}",
                "port 0 is not in 1..=65535",
            ),
            (
                "{name: a, envoyExtAuthzHttp: {service: s, port: 70000}}",
                "port 70000 is not in 1..=65535",
            ),
            (
                "{name: a, envoyExtAuthzGrpc: {service: s, port: 1, statusOnError: teapot}}",
                "statusOnError \"teapot\" is not an HTTP status code",
            ),
            (
                "{name: a, envoyExtAuthzGrpc: {service: s, port: 1, timeout: 0s}}",
                "at least 1ms",
            ),
            (
                "{name: a, envoyExtAuthzHttp: {service: s, port: 1, headersToUpstreamOnAllow: [\"*\"]}}",
                "headersToUpstreamOnAllow: \"*\" is not supported",
            ),
            (
                "{name: a, envoyExtAuthzHttp: {service: s, port: 1, pathPrefix: check}}",
                "pathPrefix \"check\" must start with '/'",
            ),
            (
                "{name: a, envoyExtAuthzHttp: {service: s, port: 1, includeRequestBodyInCheck: {}}}",
                "maxRequestBytes must be greater than 0",
            ),
            (
                "{name: a, envoyExtAuthzHttp: {service: s, port: 1}, envoyExtAuthzGrpc: {service: s, port: 1}}",
                "only one of",
            ),
            (
                "{envoyExtAuthzHttp: {service: s, port: 1}}",
                "name must not be empty",
            ),
        ];
        for (entry, want) in cases {
            let yaml = format!(
                "extensionProviders:\n- {entry}\n- {{name: ok, envoyExtAuthzGrpc: {{service: s, port: 1}}}}\n"
            );
            let (providers, errors) = parse(&yaml);
            assert_eq!(errors.len(), 1, "{entry}: {errors:?}");
            assert!(errors[0].reason.contains(want), "{entry}: {}", errors[0]);
            assert_eq!(errors[0].index, 0);
            assert!(providers.get("ok").is_some(), "{entry}");
            assert!(providers.get("a").is_none(), "{entry}");
        }
        let (providers, errors) = parse(
            "extensionProviders:\n- {name: a, envoyExtAuthzGrpc: {service: s, port: 1}}\n- {name: a, envoyExtAuthzGrpc: {service: t, port: 2}}\n",
        );
        assert_eq!(
            errors[0].to_string(),
            "extensionProviders[1] (\"a\"): duplicate provider name"
        );
        assert_eq!(providers.get("a").unwrap().service, "s");
    }

    #[test]
    fn documents_without_providers_and_unreadable_ones() {
        assert!(parse("").0.is_empty());
        assert!(parse("accessLogFile: /dev/stdout\n").0.is_empty());
        assert!(matches!(
            ExtensionProviders::parse("extensionProviders: 3\n"),
            Err(MeshConfigError::Syntax(_))
        ));
        assert!(matches!(
            ExtensionProviders::parse("[1, 2"),
            Err(MeshConfigError::Syntax(_))
        ));
        let missing = ExtensionProviders::load(std::path::Path::new("/nonexistent/mesh")).unwrap();
        assert!(missing.0.is_empty());
    }
}
