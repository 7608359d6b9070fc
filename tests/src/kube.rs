//! A Kubernetes API server double for the suites of the waypoint controller, the `waypoint`
//! CLI and the Kubernetes configuration source.
//!
//! [`ApiServer::start`] serves plain HTTP on `127.0.0.1:0`; kube-rs clients talk to it through
//! real sockets, either in-process ([`ApiServer::client`]) or from a spawned `waypoint` binary
//! (a kubeconfig file from [`ApiServer::write_kubeconfig`], passed through `KUBECONFIG`). It
//! sits where the cluster's API server sits: every read and write of the code under test
//! crosses it, and it records them so that tests assert the exact requests.
//!
//! # What it serves
//!
//! Objects are JSON values in an in-memory store keyed by group, resource, namespace and name,
//! for the types of [`resources`] (more with [`ApiServer::register`]). The server assigns
//! `metadata.uid`, `resourceVersion` (one counter for the whole store, as etcd's revision),
//! `generation` (1 at creation, +1 when anything outside `metadata` and `status` changes) and
//! `creationTimestamp`. A type of several versions (`networking.istio.io` v1, v1beta1,
//! v1alpha3) is stored once and served at every version, with `apiVersion` set to the one
//! asked for.
//!
//! | Request | Behaviour |
//! |---|---|
//! | `GET …/<name>` (also `…/<name>/status`) | the object, or 404 `NotFound` |
//! | `GET …/<resource>` | a `<Kind>List` with `metadata.resourceVersion`; `labelSelector` (`=`, `==`, `!=`, `in`, `notin`, `key`, `!key`) and `fieldSelector` (`metadata.name`, `metadata.namespace`, with `=`, `==`, `!=`); `limit`/`continue` are ignored (one page) |
//! | `GET …/<resource>?watch=true` | newline-delimited watch events (`ADDED`, `MODIFIED`, `DELETED`) with the same selectors: from `resourceVersion` on (replayed from a bounded event log; older than the log → an `ERROR` event with a 410 `Expired` status), or the current objects as `ADDED` first when `resourceVersion` is empty or `0`. The stream ends after `timeoutSeconds`, at most [`ApiServer::set_max_watch`] (default 60 s), and when the server stops |
//! | `POST …/<resource>` | create: 201, or 409 `AlreadyExists` |
//! | `PUT …/<name>` (also `/status`) | replace: the object without `status` (or only `status`) |
//! | `PATCH …/<name>` `application/apply-patch+yaml` | server-side apply: `fieldManager` required (else 400); creates the object when missing; merges the patch into the object (maps merge key by key, lists and scalars are replaced); `force` is accepted; no conflict detection (inject a 409 for that) |
//! | `PATCH …/<name>` `application/merge-patch+json` or `strategic-merge-patch+json` | RFC 7386 merge patch (`null` removes a key) |
//! | `PATCH …/<name>/status` | the same two patch kinds, applied to `status` only |
//! | `DELETE …/<name>` | removes the object and, as the garbage collector would, every object whose `ownerReferences` name its uid (recursively); answers a `Success` status. An object written with `ownerReferences` none of whose owners exist is deleted right after the write, as the garbage collector would |
//! | `GET /api`, `/api/v1`, `/apis`, `/apis/<group>`, `/apis/<group>/<version>`, `/version` | discovery of the registered types; [`ApiServer::set_group_enabled`] switches a group off (its CRDs "not installed": discovery omits it and its paths answer 404) |
//!
//! Writes to the main resource ignore `status`; writes to `/status` change only `status`. A
//! change never alters `metadata.uid`, `creationTimestamp` or `generation` from the request.
//! A write that changes nothing is a no-op (same `resourceVersion`, no watch event), as on a
//! real API server. The bodies of `POST`/`PUT`/`PATCH` are JSON (what kube-rs sends) or YAML.
//!
//! # What tests use
//!
//! - Seeding and inspecting the store: [`ApiServer::seed`], [`ApiServer::get`],
//!   [`ApiServer::list`], [`ApiServer::update`], [`ApiServer::remove`] (these emit the watch
//!   events an API server would, and are not recorded as requests).
//! - Every request: [`ApiServer::requests`] (method, path, query, content type, body, and the
//!   status answered), [`ApiServer::clear_requests`].
//! - Failures: [`ApiServer::fail_next`] answers the next `n` requests of a method and path with
//!   an error status (e.g. 409 `Conflict`, 500 `InternalError`) before they reach the store.
//! - Waiting without sleeping: [`ApiServer::wait_for`] re-evaluates a closure after every
//!   request and store change until it returns `Some`, with an upper bound.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// A resource type the server serves: one version of a group's resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group (`/api/v1`).
    pub group: &'static str,
    /// Version (`v1`).
    pub version: &'static str,
    /// Plural resource name, the path segment (`gateways`).
    pub plural: &'static str,
    /// Kind (`Gateway`).
    pub kind: &'static str,
    /// Namespaced (`true`) or cluster-scoped.
    pub namespaced: bool,
}

impl ResourceType {
    /// `group/version`, or `version` for the core group: the objects' `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The collection path in `namespace` (all namespaces, or cluster-scoped, when `None`).
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        let root = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace {
            Some(ns) if self.namespaced => format!("{root}/namespaces/{ns}/{}", self.plural),
            _ => format!("{root}/{}", self.plural),
        }
    }

    /// The path of object `name` in `namespace` (ignored for cluster-scoped types).
    pub fn object_path(&self, namespace: &str, name: &str) -> String {
        format!("{}/{name}", self.collection_path(Some(namespace)))
    }

    /// The path of the `status` subresource of object `name`.
    pub fn status_path(&self, namespace: &str, name: &str) -> String {
        format!("{}/status", self.object_path(namespace, name))
    }
}

/// The types served by default.
pub mod resources {
    use super::ResourceType;

    const fn rt(
        group: &'static str,
        version: &'static str,
        plural: &'static str,
        kind: &'static str,
        namespaced: bool,
    ) -> ResourceType {
        ResourceType {
            group,
            version,
            plural,
            kind,
            namespaced,
        }
    }

    /// `v1` Namespace.
    pub const NAMESPACE: ResourceType = rt("", "v1", "namespaces", "Namespace", false);
    /// `v1` Service.
    pub const SERVICE: ResourceType = rt("", "v1", "services", "Service", true);
    /// `v1` ServiceAccount.
    pub const SERVICE_ACCOUNT: ResourceType =
        rt("", "v1", "serviceaccounts", "ServiceAccount", true);
    /// `v1` Pod.
    pub const POD: ResourceType = rt("", "v1", "pods", "Pod", true);
    /// `v1` ConfigMap.
    pub const CONFIG_MAP: ResourceType = rt("", "v1", "configmaps", "ConfigMap", true);
    /// `v1` Secret.
    pub const SECRET: ResourceType = rt("", "v1", "secrets", "Secret", true);
    /// `v1` Event.
    pub const EVENT: ResourceType = rt("", "v1", "events", "Event", true);
    /// `events.k8s.io/v1` Event.
    pub const EVENTS_EVENT: ResourceType = rt("events.k8s.io", "v1", "events", "Event", true);
    /// `apps/v1` Deployment.
    pub const DEPLOYMENT: ResourceType = rt("apps", "v1", "deployments", "Deployment", true);
    /// `apiextensions.k8s.io/v1` CustomResourceDefinition.
    pub const CRD: ResourceType = rt(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
    );
    /// RBAC API group.
    pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
    /// `rbac.authorization.k8s.io/v1` RoleBinding.
    pub const ROLE_BINDING: ResourceType =
        rt(RBAC_GROUP, "v1", "rolebindings", "RoleBinding", true);
    /// `rbac.authorization.k8s.io/v1` ClusterRoleBinding.
    pub const CLUSTER_ROLE_BINDING: ResourceType = rt(
        RBAC_GROUP,
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
    );
    /// `rbac.authorization.k8s.io/v1` ClusterRole.
    pub const CLUSTER_ROLE: ResourceType =
        rt(RBAC_GROUP, "v1", "clusterroles", "ClusterRole", false);
    /// Gateway API group.
    pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
    /// `gateway.networking.k8s.io/v1` Gateway.
    pub const GATEWAY: ResourceType = rt(GATEWAY_GROUP, "v1", "gateways", "Gateway", true);
    /// `gateway.networking.k8s.io/v1` GatewayClass.
    pub const GATEWAY_CLASS: ResourceType =
        rt(GATEWAY_GROUP, "v1", "gatewayclasses", "GatewayClass", false);
    /// `gateway.networking.k8s.io/v1` HTTPRoute.
    pub const HTTP_ROUTE: ResourceType = rt(GATEWAY_GROUP, "v1", "httproutes", "HTTPRoute", true);
    /// `gateway.networking.k8s.io/v1` GRPCRoute.
    pub const GRPC_ROUTE: ResourceType = rt(GATEWAY_GROUP, "v1", "grpcroutes", "GRPCRoute", true);
    /// `gateway.networking.k8s.io/v1beta1` ReferenceGrant.
    pub const REFERENCE_GRANT: ResourceType = rt(
        GATEWAY_GROUP,
        "v1beta1",
        "referencegrants",
        "ReferenceGrant",
        true,
    );
    /// `networking.istio.io/v1` VirtualService.
    pub const VIRTUAL_SERVICE: ResourceType = rt(
        "networking.istio.io",
        "v1",
        "virtualservices",
        "VirtualService",
        true,
    );
    /// `networking.istio.io/v1` DestinationRule.
    pub const DESTINATION_RULE: ResourceType = rt(
        "networking.istio.io",
        "v1",
        "destinationrules",
        "DestinationRule",
        true,
    );
    /// `networking.istio.io/v1` ServiceEntry.
    pub const SERVICE_ENTRY: ResourceType = rt(
        "networking.istio.io",
        "v1",
        "serviceentries",
        "ServiceEntry",
        true,
    );
    /// `security.istio.io/v1` AuthorizationPolicy.
    pub const AUTHORIZATION_POLICY: ResourceType = rt(
        "security.istio.io",
        "v1",
        "authorizationpolicies",
        "AuthorizationPolicy",
        true,
    );
    /// `security.istio.io/v1` RequestAuthentication.
    pub const REQUEST_AUTHENTICATION: ResourceType = rt(
        "security.istio.io",
        "v1",
        "requestauthentications",
        "RequestAuthentication",
        true,
    );
    /// `security.istio.io/v1` PeerAuthentication.
    pub const PEER_AUTHENTICATION: ResourceType = rt(
        "security.istio.io",
        "v1",
        "peerauthentications",
        "PeerAuthentication",
        true,
    );

    /// Every type served by default, with the extra versions of the Istio and Gateway API
    /// groups.
    pub fn defaults() -> Vec<ResourceType> {
        let mut all = vec![
            NAMESPACE,
            SERVICE,
            SERVICE_ACCOUNT,
            POD,
            CONFIG_MAP,
            SECRET,
            EVENT,
            EVENTS_EVENT,
            DEPLOYMENT,
            ROLE_BINDING,
            CLUSTER_ROLE_BINDING,
            CLUSTER_ROLE,
            CRD,
            GATEWAY,
            GATEWAY_CLASS,
            HTTP_ROUTE,
            GRPC_ROUTE,
            REFERENCE_GRANT,
            VIRTUAL_SERVICE,
            DESTINATION_RULE,
            SERVICE_ENTRY,
            AUTHORIZATION_POLICY,
            REQUEST_AUTHENTICATION,
            PEER_AUTHENTICATION,
        ];
        for t in [GATEWAY, GATEWAY_CLASS, HTTP_ROUTE] {
            all.push(ResourceType {
                version: "v1beta1",
                ..t
            });
        }
        for t in [VIRTUAL_SERVICE, DESTINATION_RULE, SERVICE_ENTRY] {
            for version in ["v1beta1", "v1alpha3"] {
                all.push(ResourceType { version, ..t });
            }
        }
        for t in [
            AUTHORIZATION_POLICY,
            REQUEST_AUTHENTICATION,
            PEER_AUTHENTICATION,
        ] {
            all.push(ResourceType {
                version: "v1beta1",
                ..t
            });
        }
        all
    }
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// Method (`PATCH`).
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (without `?`; empty when none).
    pub query: String,
    /// `Content-Type` header, when present.
    pub content_type: Option<String>,
    /// Body as text (lossy UTF-8).
    pub body: String,
    /// Status answered (0 while the request is being handled; 200 for a watch).
    pub status: u16,
}

impl RecordedRequest {
    /// The decoded value of query parameter `name`, when present.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_pairs(&self.query)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The body parsed as JSON (or YAML); `Value::Null` when empty or unparsable.
    pub fn json(&self) -> Value {
        parse_body(self.body.as_bytes()).unwrap_or(Value::Null)
    }

    /// Whether this is a watch request.
    pub fn is_watch(&self) -> bool {
        matches!(self.query_param("watch").as_deref(), Some("true" | "1"))
    }
}

/// Key of a stored object: group, plural, namespace (empty when cluster-scoped), name.
type Key = (String, String, String, String);

/// A store change, as sent to watches.
#[derive(Debug)]
struct Change {
    rv: u64,
    group: String,
    plural: String,
    namespace: String,
    event: &'static str,
    object: Value,
}

/// An injected failure.
#[derive(Debug)]
struct Failure {
    method: Method,
    path: String,
    code: u16,
    remaining: usize,
}

/// Events kept for watches that resume from a resourceVersion.
const EVENT_LOG: usize = 4096;
/// Largest request body accepted.
const MAX_BODY: usize = 4 << 20;

#[derive(Debug)]
struct Store {
    events: broadcast::Sender<Arc<Change>>,
    types: Vec<ResourceType>,
    disabled_groups: BTreeSet<String>,
    objects: BTreeMap<Key, Value>,
    rv: u64,
    next_uid: u64,
    log: VecDeque<Arc<Change>>,
    /// Highest resourceVersion dropped from `log`.
    compacted: u64,
    requests: Vec<RecordedRequest>,
    failures: Vec<Failure>,
    max_watch: Duration,
}

#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    changed: watch::Sender<u64>,
    addr: SocketAddr,
    stop: CancellationToken,
}

/// The API server double. Stops (closing every connection and watch) when dropped.
#[derive(Debug)]
pub struct ApiServer {
    shared: Arc<Shared>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

/// A watch stream's body: frames sent by the task that follows the store.
type WatchBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;
type ResBody = Either<Full<Bytes>, WatchBody>;

/// An API error answered as a `Status`.
#[derive(Debug)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn not_found(rt: &ResourceType, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(rt)),
        )
    }

    fn status(&self) -> Value {
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        })
    }
}

/// `gateways.gateway.networking.k8s.io`, or `services` in the core group.
fn qualified(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        rt.plural.to_string()
    } else {
        format!("{}.{}", rt.plural, rt.group)
    }
}

/// The reason Kubernetes gives with an HTTP status.
fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "InternalError",
    }
}

impl ApiServer {
    /// Starts the server on `127.0.0.1:0` with the [`resources::defaults`] types.
    ///
    /// # Panics
    /// When the loopback listener cannot be bound: this is test code.
    pub async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the API server double");
        let addr = listener.local_addr().expect("local address");
        let (events, _) = broadcast::channel(1024);
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                events,
                types: resources::defaults(),
                disabled_groups: BTreeSet::new(),
                objects: BTreeMap::new(),
                rv: 1,
                next_uid: 1,
                log: VecDeque::new(),
                compacted: 0,
                requests: Vec::new(),
                failures: Vec::new(),
                max_watch: Duration::from_secs(60),
            }),
            changed,
            addr,
            stop: CancellationToken::new(),
        });
        tokio::spawn(serve(listener, shared.clone()));
        ApiServer { shared }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The server's URL (`http://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kube-rs client for this server, default namespace `default`.
    ///
    /// # Panics
    /// When the client cannot be built: this is test code.
    pub fn client(&self) -> ::kube::Client {
        let uri: http::Uri = self.url().parse().expect("server URL");
        ::kube::Client::try_from(::kube::Config::new(uri)).expect("kube client")
    }

    /// A kubeconfig pointing at this server (context `double`, no credentials), with
    /// `namespace` as the context's namespace.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: double\n  cluster:\n    server: {url}\n\
             contexts:\n\
             - name: double\n  context:\n    cluster: double\n    user: double\n    namespace: {namespace}\n\
             current-context: double\n\
             users:\n\
             - name: double\n  user: {{}}\n",
            url = self.url(),
        )
    }

    /// Writes [`ApiServer::kubeconfig`] (namespace `default`) to `path`, for `KUBECONFIG`.
    ///
    /// # Panics
    /// When the file cannot be written: this is test code.
    pub fn write_kubeconfig(&self, path: &Path) {
        std::fs::write(path, self.kubeconfig("default")).expect("write kubeconfig");
    }

    fn lock(&self) -> MutexGuard<'_, Store> {
        lock(&self.shared)
    }

    /// Serves one more type (e.g. another CRD or version).
    pub fn register(&self, rt: ResourceType) {
        let mut store = self.lock();
        if !store.types.contains(&rt) {
            store.types.push(rt);
        }
    }

    /// Switches API group `group` on or off. Off, discovery omits it and its paths answer
    /// 404, as when its CRDs are not installed; its objects are kept.
    pub fn set_group_enabled(&self, group: &str, enabled: bool) {
        let mut store = self.lock();
        if enabled {
            store.disabled_groups.remove(group);
        } else {
            store.disabled_groups.insert(group.to_string());
        }
    }

    /// Longest a watch stream stays open (default 60 s); the client's `timeoutSeconds` can
    /// only shorten it.
    pub fn set_max_watch(&self, max: Duration) {
        self.lock().max_watch = max;
    }

    /// Answers the next `times` requests of `method` on `path` (exact, without query) with
    /// status `code` (a Kubernetes `Status` with the usual reason) before they reach the
    /// store.
    pub fn fail_next(&self, method: Method, path: &str, code: u16, times: usize) {
        self.lock().failures.push(Failure {
            method,
            path: path.to_string(),
            code,
            remaining: times,
        });
    }

    /// Creates or replaces an object (its `apiVersion` and `kind` say which type), as a
    /// client's create or replace would, with the same watch events. Returns the stored
    /// object.
    ///
    /// # Panics
    /// When the object's type is not served or it has no name: this is test code.
    pub fn seed(&self, object: Value) -> Value {
        let mut store = self.lock();
        let api_version = object["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let rt = store
            .types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
            .copied()
            .unwrap_or_else(|| panic!("the double does not serve {api_version} {kind}"));
        let namespace = if rt.namespaced {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let name = object["metadata"]["name"]
            .as_str()
            .expect("seeded objects need metadata.name")
            .to_string();
        let stored = store.put(&rt, &namespace, &name, object);
        drop(store);
        self.shared.notify();
        stored
    }

    /// The stored object, when present.
    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> Option<Value> {
        let store = self.lock();
        store
            .objects
            .get(&key(rt, namespace, name))
            .map(|o| served(o, rt))
    }

    /// The stored objects of a type, in `namespace` or everywhere (`None`), sorted by
    /// namespace and name.
    pub fn list(&self, rt: &ResourceType, namespace: Option<&str>) -> Vec<Value> {
        let store = self.lock();
        store
            .objects
            .iter()
            .filter(|((g, p, ns, _), _)| {
                g == rt.group && p == rt.plural && namespace.is_none_or(|want| want == ns)
            })
            .map(|(_, o)| served(o, rt))
            .collect()
    }

    /// Changes a stored object in place (a `MODIFIED` event; `generation` follows as for a
    /// client's write, `status` included). Returns the stored object, `None` when missing.
    pub fn update(
        &self,
        rt: &ResourceType,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let mut store = self.lock();
        let mut object = store.objects.get(&key(rt, namespace, name))?.clone();
        change(&mut object);
        let stored = store.put(rt, namespace, name, object);
        drop(store);
        self.shared.notify();
        Some(stored)
    }

    /// Deletes a stored object and its dependents (a `DELETED` event each). Returns it.
    pub fn remove(&self, rt: &ResourceType, namespace: &str, name: &str) -> Option<Value> {
        let mut store = self.lock();
        let removed = store.delete(rt, namespace, name);
        drop(store);
        self.shared.notify();
        removed
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// The requests other than `GET` (the writes), in arrival order.
    pub fn writes(&self) -> Vec<RecordedRequest> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.method != "GET")
            .cloned()
            .collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }

    /// Calls `check` now and after every request or store change until it returns `Some`;
    /// `None` after `limit` (an upper bound against hangs, not a timing assertion).
    pub async fn wait_for<T>(
        &self,
        limit: Duration,
        mut check: impl FnMut(&ApiServer) -> Option<T>,
    ) -> Option<T> {
        let mut changed = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            changed.borrow_and_update();
            if let Some(found) = check(self) {
                return Some(found);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return check(self),
            }
        }
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Store> {
    // A panic while holding the lock is a test failure already; keep serving the rest.
    shared
        .store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

fn key(rt: &ResourceType, namespace: &str, name: &str) -> Key {
    (
        rt.group.to_string(),
        rt.plural.to_string(),
        if rt.namespaced {
            namespace.to_string()
        } else {
            String::new()
        },
        name.to_string(),
    )
}

/// A stored object as served at `rt`'s version.
fn served(object: &Value, rt: &ResourceType) -> Value {
    let mut object = object.clone();
    object["apiVersion"] = Value::String(rt.api_version());
    object["kind"] = Value::String(rt.kind.to_string());
    object
}

/// An object without the fields the server sets, to detect no-op writes.
fn without_server_fields(object: &Value) -> Value {
    let mut object = object.clone();
    strip_server_fields(&mut object);
    object
}

/// Removes the metadata only the server sets (a client cannot write them).
fn strip_server_fields(object: &mut Value) {
    if let Some(meta) = object["metadata"].as_object_mut() {
        for field in [
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
        ] {
            meta.remove(field);
        }
    }
}

/// Everything of an object but `metadata` and `status`: what `generation` tracks.
fn spec_part(object: &Value) -> Value {
    match object {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status" | "apiVersion"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

impl Store {
    fn served_type(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        if self.disabled_groups.contains(group) {
            return None;
        }
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
            .copied()
    }

    /// Stores `object` at (rt, namespace, name), keeping the server-owned metadata of the
    /// previous version (`generation` + 1 when anything outside metadata and status changed),
    /// and emits the watch event.
    fn put(&mut self, rt: &ResourceType, namespace: &str, name: &str, mut object: Value) -> Value {
        let k = key(rt, namespace, name);
        let previous = self.objects.get(&k).cloned();
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        object["apiVersion"] = Value::String(rt.api_version());
        object["kind"] = Value::String(rt.kind.to_string());
        let meta = &mut object["metadata"];
        meta["name"] = Value::String(name.to_string());
        if rt.namespaced {
            meta["namespace"] = Value::String(namespace.to_string());
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        // A write that changes nothing is a no-op, as on a real API server: same
        // resourceVersion, no watch event.
        if let Some(prev) = &previous
            && without_server_fields(prev) == without_server_fields(&object)
        {
            return prev.clone();
        }
        self.rv += 1;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = Value::String(self.rv.to_string());
        let event = match &previous {
            Some(prev) => {
                for field in ["uid", "creationTimestamp"] {
                    meta[field] = prev["metadata"][field].clone();
                }
                let generation = prev["metadata"]["generation"].as_i64().unwrap_or(1);
                let changed = spec_part(prev) != spec_part(&object);
                object["metadata"]["generation"] = json!(generation + i64::from(changed));
                "MODIFIED"
            }
            None => {
                meta["uid"] = Value::String(format!("00000000-0000-4000-8000-{:012x}", {
                    let uid = self.next_uid;
                    self.next_uid += 1;
                    uid
                }));
                meta["creationTimestamp"] = Value::String(rfc3339(SystemTime::now()));
                meta["generation"] = json!(1);
                "ADDED"
            }
        };
        self.objects.insert(k, object.clone());
        self.record_change(rt, namespace, event, object.clone());
        // As the garbage collector does: an object whose owners are all gone is deleted.
        let owner_uids: Vec<&str> = object["metadata"]["ownerReferences"]
            .as_array()
            .map(|refs| refs.iter().filter_map(|r| r["uid"].as_str()).collect())
            .unwrap_or_default();
        if !owner_uids.is_empty()
            && !self.objects.values().any(|o| {
                o["metadata"]["uid"]
                    .as_str()
                    .is_some_and(|u| owner_uids.contains(&u))
            })
        {
            self.delete(rt, namespace, name);
        }
        object
    }

    fn record_change(
        &mut self,
        rt: &ResourceType,
        namespace: &str,
        event: &'static str,
        object: Value,
    ) {
        let change = Arc::new(Change {
            rv: self.rv,
            group: rt.group.to_string(),
            plural: rt.plural.to_string(),
            namespace: if rt.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            event,
            object,
        });
        self.log.push_back(change.clone());
        while self.log.len() > EVENT_LOG {
            if let Some(old) = self.log.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receiver is fine: no watch is open.
        let _ = self.events.send(change);
    }

    /// Deletes an object and, recursively, the objects it owns.
    fn delete(&mut self, rt: &ResourceType, namespace: &str, name: &str) -> Option<Value> {
        let removed = self.objects.remove(&key(rt, namespace, name))?;
        self.rv += 1;
        let mut gone = removed.clone();
        gone["metadata"]["resourceVersion"] = Value::String(self.rv.to_string());
        self.record_change(rt, namespace, "DELETED", gone);
        if let Some(uid) = removed["metadata"]["uid"].as_str() {
            let dependents: Vec<Key> = self
                .objects
                .iter()
                .filter(|(_, o)| {
                    o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
                })
                .map(|(k, _)| k.clone())
                .collect();
            for (group, plural, ns, dep) in dependents {
                if let Some(t) = self
                    .types
                    .iter()
                    .find(|t| t.group == group && t.plural == plural)
                    .copied()
                {
                    self.delete(&t, &ns, &dep);
                }
            }
        }
        Some(removed)
    }
}

/// `2026-12-03T16:50:47Z` for `t`.
fn rfc3339(t: SystemTime) -> String {
    use ztunnel::admin::config_dump::{rfc3339, unix_seconds};
    rfc3339(unix_seconds(t))
}

/// Decoded `key=value` pairs of a query string (`+` is a space, `%XX` escapes).
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request body: JSON, else YAML.
fn parse_body(body: &[u8]) -> Option<Value> {
    if body.is_empty() {
        return None;
    }
    serde_json::from_slice(body)
        .ok()
        .or_else(|| serde_yaml_ng::from_slice(body).ok())
}

/// One requirement of a label selector.
#[derive(Debug, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        match self {
            Requirement::Equals(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::NotIn(k, vs) => !get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        }
    }
}

/// Parses a label selector (`a=b,c!=d,e in (x,y),f notin (z),g,!h`).
fn parse_label_selector(selector: &str) -> Result<Vec<Requirement>, ApiError> {
    // Split at commas outside parentheses.
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    let bad = || ApiError::bad_request(format!("unable to parse requirement: {selector:?}"));
    let set = |rest: &str| -> Result<Vec<String>, ApiError> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(bad)?;
        Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
    };
    let mut out = Vec::new();
    for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
        let req = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==") {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once('=') {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if let Some((k, rest)) = part.split_once(" notin ") {
            Requirement::NotIn(k.trim().into(), set(rest)?)
        } else if let Some((k, rest)) = part.split_once(" in ") {
            Requirement::In(k.trim().into(), set(rest)?)
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::NotExists(k.trim().into())
        } else if part.contains([' ', '(', ')']) {
            return Err(bad());
        } else {
            Requirement::Exists(part.into())
        };
        out.push(req);
    }
    Ok(out)
}

/// A field selector on `metadata.name` / `metadata.namespace`: (field, wanted, equal?).
fn parse_field_selector(selector: &str) -> Result<Vec<(String, String, bool)>, ApiError> {
    let mut out = Vec::new();
    for part in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = part.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = part.split_once('=') {
            (f, v, true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid field selector: {part:?}"
            )));
        };
        if !matches!(field, "metadata.name" | "metadata.namespace") {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {field}"
            )));
        }
        out.push((field.to_string(), value.to_string(), equal));
    }
    Ok(out)
}

/// What a list or watch selects.
#[derive(Debug)]
struct Selection {
    rt: ResourceType,
    namespace: Option<String>,
    labels: Vec<Requirement>,
    fields: Vec<(String, String, bool)>,
}

impl Selection {
    fn matches(&self, namespace: &str, object: &Value) -> bool {
        if self.rt.namespaced && self.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return false;
        }
        let labels = &object["metadata"]["labels"];
        self.labels.iter().all(|r| r.matches(labels))
            && self.fields.iter().all(|(field, want, equal)| {
                let have = match field.as_str() {
                    "metadata.name" => object["metadata"]["name"].as_str(),
                    _ => object["metadata"]["namespace"].as_str(),
                }
                .unwrap_or_default();
                (have == want) == *equal
            })
    }
}

/// Where a resource request points.
#[derive(Debug)]
struct Target {
    rt: ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// The accept loop.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = shared.stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
    // Dropping the set aborts the open connections.
}

fn full(status: u16, body: &Value) -> Response<ResBody> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Either::Left(Full::new(Bytes::from(body.to_string()))))
        .unwrap_or_else(|_| Response::new(Either::Left(Full::new(Bytes::new()))))
}

/// Handles one request: records it, applies injected failures, then serves it.
async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<ResBody> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return full(
                413,
                &ApiError::new(413, "RequestEntityTooLarge", "").status(),
            );
        }
    };
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let index = {
        let mut store = lock(&shared);
        store.requests.push(RecordedRequest {
            method: parts.method.to_string(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
            status: 0,
        });
        store.requests.len() - 1
    };
    let injected = {
        let mut store = lock(&shared);
        let hit = store
            .failures
            .iter_mut()
            .find(|f| f.remaining > 0 && f.method == parts.method && f.path == path);
        hit.map(|f| {
            f.remaining -= 1;
            f.code
        })
    };
    let response = match injected {
        Some(code) => {
            let err = ApiError::new(
                code,
                reason_for(code),
                format!("injected failure of {} {path}", parts.method),
            );
            full(code, &err.status())
        }
        None => {
            let query = query_pairs(&query);
            match route(
                &shared,
                &parts.method,
                &path,
                &query,
                content_type.as_deref(),
                &body,
            ) {
                Ok(response) => response,
                Err(err) => full(err.code, &err.status()),
            }
        }
    };
    {
        let mut store = lock(&shared);
        if let Some(r) = store.requests.get_mut(index) {
            r.status = response.status().as_u16();
        }
    }
    shared.notify();
    response
}

fn param<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Response<ResBody>, ApiError> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    if *method == Method::GET
        && let Some(doc) = discovery(shared, &segments)
    {
        return Ok(full(200, &doc));
    }
    let (group, version, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => return Err(not_found()),
    };
    let (namespace, rest) = match rest {
        // `/api/v1/namespaces/<ns>` and `/api/v1/namespaces/<ns>/status` address the
        // Namespace object itself.
        ["namespaces", ns, rest @ ..]
            if !(rest.is_empty()
                || group.is_empty() && matches!(rest, ["status" | "finalize"])) =>
        {
            (Some(*ns), rest)
        }
        rest => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(not_found()),
    };
    let rt = lock(shared)
        .served_type(group, version, plural)
        .ok_or_else(not_found)?;
    if subresource.as_deref().is_some_and(|s| s != "status") {
        return Err(not_found());
    }
    let target = Target {
        rt,
        namespace: namespace.map(str::to_string),
        name,
        subresource,
    };
    if target.rt.namespaced && target.name.is_some() && target.namespace.is_none() {
        return Err(not_found());
    }
    match (method.clone(), target.name.is_some()) {
        (Method::GET, true) => get(shared, &target),
        (Method::GET, false) => {
            if matches!(param(query, "watch"), Some("true" | "1")) {
                watch_stream(shared, &target, query)
            } else {
                list(shared, &target, query)
            }
        }
        (Method::POST, false) => create(shared, &target, body),
        (Method::PUT, true) => replace(shared, &target, body),
        (Method::PATCH, true) => patch(shared, &target, query, content_type, body),
        (Method::DELETE, true) => delete(shared, &target),
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported on {path}"),
        )),
    }
}

/// Discovery documents, `None` when the path is not one.
fn discovery(shared: &Arc<Shared>, segments: &[&str]) -> Option<Value> {
    let store = lock(shared);
    let enabled: Vec<ResourceType> = store
        .types
        .iter()
        .filter(|t| !store.disabled_groups.contains(t.group))
        .copied()
        .collect();
    let resource_list = |group: &str, version: &str| -> Option<Value> {
        let types: Vec<&ResourceType> = enabled
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .collect();
        if types.is_empty() {
            return None;
        }
        let mut resources = Vec::new();
        for t in types {
            resources.push(json!({
                "name": t.plural,
                "singularName": t.kind.to_lowercase(),
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            }));
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        Some(json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": if group.is_empty() { version.to_string() } else { format!("{group}/{version}") },
            "resources": resources,
        }))
    };
    let group_doc = |group: &str| -> Option<Value> {
        let mut versions: Vec<&str> = Vec::new();
        for t in enabled.iter().filter(|t| t.group == group) {
            if !versions.contains(&t.version) {
                versions.push(t.version);
            }
        }
        let preferred = versions.first()?;
        let entry = |v: &str| json!({"groupVersion": format!("{group}/{v}"), "version": v});
        Some(json!({
            "name": group,
            "versions": versions.iter().map(|v| entry(v)).collect::<Vec<_>>(),
            "preferredVersion": entry(preferred),
        }))
    };
    match segments {
        ["version"] => Some(json!({
            "major": "1",
            "minor": "34",
            "gitVersion": "v1.34.0",
            "platform": "linux/amd64",
        })),
        ["api"] => Some(json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": shared.addr.to_string()}
            ],
        })),
        ["api", version] => resource_list("", version),
        ["apis"] => {
            let mut groups: Vec<&str> = Vec::new();
            for t in enabled.iter().filter(|t| !t.group.is_empty()) {
                if !groups.contains(&t.group) {
                    groups.push(t.group);
                }
            }
            Some(json!({
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": groups.iter().filter_map(|g| group_doc(g)).collect::<Vec<_>>(),
            }))
        }
        ["apis", group] => group_doc(group).map(|mut doc| {
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            doc
        }),
        ["apis", group, version] => resource_list(group, version),
        _ => None,
    }
}

fn target_key(target: &Target) -> Key {
    key(
        &target.rt,
        target.namespace.as_deref().unwrap_or_default(),
        target.name.as_deref().unwrap_or_default(),
    )
}

fn get(shared: &Arc<Shared>, target: &Target) -> Result<Response<ResBody>, ApiError> {
    let store = lock(shared);
    let object = store.objects.get(&target_key(target)).ok_or_else(|| {
        ApiError::not_found(&target.rt, target.name.as_deref().unwrap_or_default())
    })?;
    Ok(full(200, &served(object, &target.rt)))
}

fn selection(target: &Target, query: &[(String, String)]) -> Result<Selection, ApiError> {
    Ok(Selection {
        rt: target.rt,
        namespace: target.namespace.clone(),
        labels: parse_label_selector(param(query, "labelSelector").unwrap_or_default())?,
        fields: parse_field_selector(param(query, "fieldSelector").unwrap_or_default())?,
    })
}

fn list(
    shared: &Arc<Shared>,
    target: &Target,
    query: &[(String, String)],
) -> Result<Response<ResBody>, ApiError> {
    let selection = selection(target, query)?;
    let store = lock(shared);
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((g, p, ns, _), o)| {
            g == target.rt.group && p == target.rt.plural && selection.matches(ns, o)
        })
        .map(|(_, o)| served(o, &target.rt))
        .collect();
    Ok(full(
        200,
        &json!({
            "apiVersion": target.rt.api_version(),
            "kind": format!("{}List", target.rt.kind),
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items,
        }),
    ))
}

fn watch_line(event: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": event, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch_stream(
    shared: &Arc<Shared>,
    target: &Target,
    query: &[(String, String)],
) -> Result<Response<ResBody>, ApiError> {
    let selection = selection(target, query)?;
    let requested = param(query, "resourceVersion").unwrap_or_default();
    let timeout = param(query, "timeoutSeconds").and_then(|t| t.parse::<u64>().ok());
    let store = lock(shared);
    let mut events = store.events.subscribe();
    let max = store.max_watch;
    let limit = timeout.map_or(max, |t| max.min(Duration::from_secs(t)));
    let mut initial = Vec::new();
    let mut expired = false;
    let of_type = |c: &Change| c.group == target.rt.group && c.plural == target.rt.plural;
    if requested.is_empty() || requested == "0" {
        for ((g, p, ns, _), o) in &store.objects {
            if g == target.rt.group && p == target.rt.plural && selection.matches(ns, o) {
                initial.push(watch_line("ADDED", &served(o, &target.rt)));
            }
        }
    } else {
        let from: u64 = requested
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {requested:?}")))?;
        if from < store.compacted {
            expired = true;
            let status = ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {from} ({})", store.compacted + 1),
            )
            .status();
            initial.push(watch_line("ERROR", &status));
        } else {
            for c in store.log.iter().filter(|c| c.rv > from) {
                if of_type(c) && selection.matches(&c.namespace, &c.object) {
                    initial.push(watch_line(c.event, &served(&c.object, &target.rt)));
                }
            }
        }
    }
    let start_after = store.rv;
    drop(store);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let body = StreamBody::new(ReceiverStream::new(rx));
    let stop = shared.stop.clone();
    tokio::spawn(async move {
        for line in initial {
            if tx.send(Ok(Frame::data(line))).await.is_err() {
                return;
            }
        }
        if expired {
            return;
        }
        let deadline = tokio::time::sleep(limit);
        tokio::pin!(deadline);
        loop {
            let change = tokio::select! {
                _ = stop.cancelled() => return,
                _ = &mut deadline => return,
                change = events.recv() => match change {
                    Ok(c) => c,
                    // Lagged or closed: end the stream; the client watches again.
                    Err(_) => return,
                },
            };
            if change.rv <= start_after
                || !(change.group == selection.rt.group && change.plural == selection.rt.plural)
                || !selection.matches(&change.namespace, &change.object)
            {
                continue;
            }
            let line = watch_line(change.event, &served(&change.object, &selection.rt));
            if tx.send(Ok(Frame::data(line))).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Either::Right(body))
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))
}

/// The request body as an object, checking its name against the path's.
fn body_object(target: &Target, body: &[u8]) -> Result<Value, ApiError> {
    let object =
        parse_body(body).ok_or_else(|| ApiError::bad_request("the body is not JSON or YAML"))?;
    if !object.is_object() {
        return Err(ApiError::bad_request("the body is not an object"));
    }
    if let (Some(path_name), Some(body_name)) =
        (target.name.as_deref(), object["metadata"]["name"].as_str())
        && path_name != body_name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({path_name})"
        )));
    }
    Ok(object)
}

/// Keeps what a write to the main resource or to `/status` may change.
fn scope_write(subresource: Option<&str>, current: Option<&Value>, mut incoming: Value) -> Value {
    match subresource {
        Some(_) => {
            let mut object = current.cloned().unwrap_or_else(|| json!({}));
            object["status"] = incoming.get("status").cloned().unwrap_or(Value::Null);
            if object["status"].is_null()
                && let Some(m) = object.as_object_mut()
            {
                m.remove("status");
            }
            object
        }
        None => {
            if let Some(m) = incoming.as_object_mut() {
                m.remove("status");
                if let Some(status) = current.and_then(|c| c.get("status")) {
                    m.insert("status".into(), status.clone());
                }
            }
            incoming
        }
    }
}

fn create(
    shared: &Arc<Shared>,
    target: &Target,
    body: &[u8],
) -> Result<Response<ResBody>, ApiError> {
    let object = body_object(target, body)?;
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or_else(|| ApiError::new(422, "Invalid", "metadata.name: Required value"))?
        .to_string();
    let namespace = target
        .namespace
        .clone()
        .or_else(|| object["metadata"]["namespace"].as_str().map(str::to_string))
        .unwrap_or_default();
    if target.rt.namespaced && namespace.is_empty() {
        return Err(ApiError::bad_request(
            "the namespace of the object is missing",
        ));
    }
    let mut store = lock(shared);
    if store
        .objects
        .contains_key(&key(&target.rt, &namespace, &name))
    {
        return Err(ApiError::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(&target.rt)),
        ));
    }
    let object = scope_write(None, None, object);
    let stored = store.put(&target.rt, &namespace, &name, object);
    Ok(full(201, &served(&stored, &target.rt)))
}

fn replace(
    shared: &Arc<Shared>,
    target: &Target,
    body: &[u8],
) -> Result<Response<ResBody>, ApiError> {
    let incoming = body_object(target, body)?;
    let name = target.name.clone().unwrap_or_default();
    let namespace = target.namespace.clone().unwrap_or_default();
    let mut store = lock(shared);
    let current = store
        .objects
        .get(&target_key(target))
        .cloned()
        .ok_or_else(|| ApiError::not_found(&target.rt, &name))?;
    if let Some(rv) = incoming["metadata"]["resourceVersion"].as_str()
        && current["metadata"]["resourceVersion"].as_str() != Some(rv)
    {
        return Err(ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(&target.rt)
            ),
        ));
    }
    let object = scope_write(target.subresource.as_deref(), Some(&current), incoming);
    let stored = store.put(&target.rt, &namespace, &name, object);
    Ok(full(200, &served(&stored, &target.rt)))
}

/// Server-side apply's merge: maps merge key by key, anything else is replaced.
fn apply_merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                match t.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        apply_merge(existing, v);
                    }
                    _ => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Records `manager` in `metadata.managedFields` (no field sets).
fn record_manager(object: &mut Value, manager: &str, operation: &str, subresource: Option<&str>) {
    let api_version = object["apiVersion"].clone();
    let fields = &mut object["metadata"]["managedFields"];
    if !fields.is_array() {
        *fields = json!([]);
    }
    if let Some(entries) = fields.as_array_mut() {
        entries.retain(|e| {
            !(e["manager"] == manager
                && e["operation"] == operation
                && e["subresource"].as_str() == subresource)
        });
        let mut entry = json!({
            "manager": manager,
            "operation": operation,
            "apiVersion": api_version,
            "time": rfc3339(SystemTime::now()),
            "fieldsType": "FieldsV1",
        });
        if let Some(sub) = subresource {
            entry["subresource"] = json!(sub);
        }
        entries.push(entry);
    }
}

fn patch(
    shared: &Arc<Shared>,
    target: &Target,
    query: &[(String, String)],
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Response<ResBody>, ApiError> {
    let name = target.name.clone().unwrap_or_default();
    let namespace = target.namespace.clone().unwrap_or_default();
    let media = content_type
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    let apply = match media {
        "application/apply-patch+yaml" => true,
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => false,
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json, application/apply-patch+yaml (got {other:?})"
                ),
            ));
        }
    };
    let incoming = body_object(target, body)?;
    let manager = param(query, "fieldManager").unwrap_or_default().to_string();
    if apply {
        if manager.is_empty() {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        if incoming["apiVersion"].as_str().is_none() || incoming["kind"].as_str().is_none() {
            return Err(ApiError::bad_request(
                "apiVersion and kind must be set in an apply patch",
            ));
        }
    }
    let mut store = lock(shared);
    let current = store.objects.get(&target_key(target)).cloned();
    let sub = target.subresource.as_deref();
    let base = match (&current, apply && sub.is_none()) {
        (Some(c), _) => c.clone(),
        (None, true) => json!({"metadata": {"name": name}}),
        (None, false) => return Err(ApiError::not_found(&target.rt, &name)),
    };
    let mut merged = base.clone();
    // Server-owned metadata cannot be patched.
    let mut incoming = incoming;
    strip_server_fields(&mut incoming);
    if apply {
        apply_merge(&mut merged, &incoming);
    } else {
        merge_patch(&mut merged, &incoming);
    }
    let mut object = scope_write(sub, Some(&base), merged);
    let manager = if manager.is_empty() {
        "unknown"
    } else {
        &manager
    };
    object["apiVersion"] = Value::String(target.rt.api_version());
    record_manager(
        &mut object,
        manager,
        if apply { "Apply" } else { "Update" },
        sub,
    );
    let created = current.is_none();
    let stored = store.put(&target.rt, &namespace, &name, object);
    Ok(full(
        if created { 201 } else { 200 },
        &served(&stored, &target.rt),
    ))
}

fn delete(shared: &Arc<Shared>, target: &Target) -> Result<Response<ResBody>, ApiError> {
    let name = target.name.clone().unwrap_or_default();
    let namespace = target.namespace.clone().unwrap_or_default();
    let mut store = lock(shared);
    let removed = store
        .delete(&target.rt, &namespace, &name)
        .ok_or_else(|| ApiError::not_found(&target.rt, &name))?;
    Ok(full(
        200,
        &json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": name,
                "group": target.rt.group,
                "kind": target.rt.plural,
                "uid": removed["metadata"]["uid"],
            },
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::kube::api::{
        Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, WatchEvent, WatchParams,
    };
    use futures_util::{StreamExt, TryStreamExt};
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Service;
    use std::time::UNIX_EPOCH;

    const LIMIT: Duration = Duration::from_secs(10);

    fn service(name: &str, app: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
            "spec": {"ports": [{"port": 80}]},
        })
    }

    #[test]
    fn label_selectors_parse_and_match() {
        let labels = json!({"app": "web", "tier": "front"});
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=web,tier=back", false),
            ("app in (api, web)", true),
            ("app notin (api,web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing,app", true),
            ("", true),
        ];
        for (selector, want) in cases {
            let reqs = parse_label_selector(selector).unwrap();
            assert_eq!(reqs.iter().all(|r| r.matches(&labels)), want, "{selector}");
        }
        assert!(parse_label_selector("app in web").is_err());
        assert!(parse_field_selector("spec.x=1").is_err());
        assert_eq!(percent_decode("app%3Dweb+x%2"), "app=web x%2");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[tokio::test]
    async fn get_list_with_selector_and_not_found() {
        let server = ApiServer::start().await;
        server.seed(service("a", "web"));
        server.seed(service("b", "db"));
        let api: Api<Service> = Api::namespaced(server.client(), "default");
        let a = api.get("a").await.unwrap();
        assert_eq!(a.metadata.generation, Some(1));
        assert!(a.metadata.uid.is_some() && a.metadata.creation_timestamp.is_some());
        let web = api
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap();
        assert_eq!(web.items.len(), 1);
        assert_eq!(web.items[0].metadata.name.as_deref(), Some("a"));
        assert!(web.metadata.resource_version.is_some());
        let err = api.get("missing").await.unwrap_err();
        assert!(matches!(err, ::kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"));
        let all: Api<Service> = Api::all(server.client());
        assert_eq!(
            all.list(&ListParams::default()).await.unwrap().items.len(),
            2
        );
        let reqs = server.requests();
        assert_eq!(reqs[0].method, "GET");
        assert_eq!(reqs[0].path, "/api/v1/namespaces/default/services/a");
        assert_eq!(
            reqs[1].query_param("labelSelector").as_deref(),
            Some("app=web")
        );
        assert_eq!(reqs[2].status, 404);
    }

    #[tokio::test]
    async fn apply_creates_merges_and_counts_generations() {
        let server = ApiServer::start().await;
        let api: Api<Deployment> = Api::namespaced(server.client(), "ns1");
        let pp = PatchParams::apply("test-manager").force();
        let first = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"a": "1"}},
            "spec": {"replicas": 1},
            "status": {"replicas": 7},
        });
        let d = api.patch("d", &pp, &Patch::Apply(&first)).await.unwrap();
        assert_eq!(d.metadata.generation, Some(1));
        assert_eq!(d.status, None, "apply to the main resource ignores status");
        let second = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"b": "2"}},
            "spec": {"replicas": 3},
        });
        let d = api.patch("d", &pp, &Patch::Apply(&second)).await.unwrap();
        assert_eq!(d.metadata.generation, Some(2));
        let labels = d.metadata.labels.unwrap();
        assert_eq!((labels["a"].as_str(), labels["b"].as_str()), ("1", "2"));
        let status = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "status": {"replicas": 3},
        });
        let d = api
            .patch_status("d", &pp, &Patch::Apply(&status))
            .await
            .unwrap();
        assert_eq!(
            d.metadata.generation,
            Some(2),
            "status writes keep the generation"
        );
        assert_eq!(d.status.unwrap().replicas, Some(3));
        assert_eq!(d.spec.unwrap().replicas, Some(3));
        let writes = server.writes();
        assert_eq!(writes.len(), 3);
        assert_eq!(writes[0].method, "PATCH");
        assert_eq!(writes[0].path, "/apis/apps/v1/namespaces/ns1/deployments/d");
        assert_eq!(
            writes[0].content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        assert_eq!(
            writes[0].query_param("fieldManager").as_deref(),
            Some("test-manager")
        );
        assert_eq!(writes[0].query_param("force").as_deref(), Some("true"));
        assert_eq!(writes[0].status, 201);
        assert_eq!(
            writes[2].path,
            "/apis/apps/v1/namespaces/ns1/deployments/d/status"
        );
        assert_eq!(writes[2].json()["status"]["replicas"], 3);
        // A status patch of a missing object is a 404, not a create.
        let err = api
            .patch_status("nope", &pp, &Patch::Apply(&status))
            .await
            .unwrap_err();
        assert!(matches!(err, ::kube::Error::Api(s) if s.code == 404));
    }

    #[tokio::test]
    async fn merge_patch_delete_and_owner_garbage_collection() {
        let server = ApiServer::start().await;
        let owner = server.seed(service("owner", "web"));
        let mut dependent = service("dependent", "web");
        dependent["metadata"]["ownerReferences"] = json!([{
            "apiVersion": "v1", "kind": "Service", "name": "owner",
            "uid": owner["metadata"]["uid"], "controller": true,
        }]);
        server.seed(dependent);
        let api: Api<Service> = Api::namespaced(server.client(), "default");
        let patch = json!({"metadata": {"labels": {"app": null, "x": "y"}}});
        let s = api
            .patch("owner", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        let labels = s.metadata.labels.unwrap();
        assert_eq!(labels.get("x").map(String::as_str), Some("y"));
        assert!(!labels.contains_key("app"));
        assert_eq!(
            s.metadata.generation,
            Some(1),
            "label changes keep the generation"
        );
        let gone = api.delete("owner", &DeleteParams::default()).await.unwrap();
        assert!(gone.is_right());
        assert!(
            server
                .get(&resources::SERVICE, "default", "dependent")
                .is_none()
        );
        let err = api
            .delete("owner", &DeleteParams::default())
            .await
            .unwrap_err();
        assert!(matches!(err, ::kube::Error::Api(s) if s.code == 404));
    }

    #[tokio::test]
    async fn watch_streams_changes_and_resumes_from_a_version() {
        let server = ApiServer::start().await;
        server.seed(service("a", "web"));
        let api: Api<Service> = Api::namespaced(server.client(), "default");
        let listed = api.list(&ListParams::default()).await.unwrap();
        let rv = listed.metadata.resource_version.unwrap();
        server.seed(service("b", "web"));
        server.seed(service("c", "db"));
        let wp = WatchParams::default().labels("app=web").timeout(5);
        let mut events = api.watch(&wp, &rv).await.unwrap().boxed();
        let name = |e: &WatchEvent<Service>| match e {
            WatchEvent::Added(s) | WatchEvent::Modified(s) | WatchEvent::Deleted(s) => {
                s.metadata.name.clone().unwrap()
            }
            other => panic!("unexpected {other:?}"),
        };
        let first = events.try_next().await.unwrap().unwrap();
        assert!(matches!(first, WatchEvent::Added(_)));
        assert_eq!(
            name(&first),
            "b",
            "replayed from the log, filtered by label"
        );
        server.update(&resources::SERVICE, "default", "a", |o| {
            o["spec"]["ports"][0]["port"] = json!(81);
        });
        let second = events.try_next().await.unwrap().unwrap();
        assert!(matches!(&second, WatchEvent::Modified(s) if s.metadata.generation == Some(2)));
        server.remove(&resources::SERVICE, "default", "b");
        let third = events.try_next().await.unwrap().unwrap();
        assert!(matches!(&third, WatchEvent::Deleted(_)));
        assert_eq!(name(&third), "b");
        // From "0": the current objects first.
        let mut fresh = api
            .watch(&WatchParams::default().timeout(1), "0")
            .await
            .unwrap()
            .boxed();
        let added = fresh.try_next().await.unwrap().unwrap();
        assert_eq!(name(&added), "a");
    }

    #[tokio::test]
    async fn watch_from_a_compacted_version_is_expired() {
        let server = ApiServer::start().await;
        for i in 0..=EVENT_LOG {
            server.seed(service(&format!("s{i}"), "web"));
        }
        let api: Api<Service> = Api::namespaced(server.client(), "default");
        let mut events = api
            .watch(&WatchParams::default(), "1")
            .await
            .unwrap()
            .boxed();
        let event = events.try_next().await.unwrap().unwrap();
        assert!(matches!(event, WatchEvent::Error(s) if s.code == 410 && s.reason == "Expired"));
    }

    #[tokio::test]
    async fn discovery_and_switched_off_groups() {
        let server = ApiServer::start().await;
        let client = server.client();
        let discovery = ::kube::Discovery::new(client.clone()).run().await.unwrap();
        assert!(discovery.has_group(resources::GATEWAY_GROUP));
        server.set_group_enabled(resources::GATEWAY_GROUP, false);
        let discovery = ::kube::Discovery::new(client.clone()).run().await.unwrap();
        assert!(!discovery.has_group(resources::GATEWAY_GROUP));
        assert!(discovery.has_group("apps"));
        let ar = ::kube::api::ApiResource::from_gvk(&::kube::api::GroupVersionKind::gvk(
            resources::GATEWAY_GROUP,
            "v1",
            "Gateway",
        ));
        let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
        let err = api.list(&ListParams::default()).await.unwrap_err();
        assert!(matches!(err, ::kube::Error::Api(s) if s.code == 404));
    }

    #[tokio::test]
    async fn injected_failures_come_first_then_requests_reach_the_store() {
        let server = ApiServer::start().await;
        let path = resources::SERVICE.object_path("default", "a");
        server.fail_next(Method::PATCH, &path, 500, 1);
        let api: Api<Service> = Api::namespaced(server.client(), "default");
        let pp = PatchParams::apply("m");
        let body = service("a", "web");
        let err = api.patch("a", &pp, &Patch::Apply(&body)).await.unwrap_err();
        assert!(matches!(err, ::kube::Error::Api(s) if s.code == 500));
        assert!(server.get(&resources::SERVICE, "default", "a").is_none());
        api.patch("a", &pp, &Patch::Apply(&body)).await.unwrap();
        let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, [500, 201]);
        let seen = server
            .wait_for(LIMIT, |s| s.get(&resources::SERVICE, "default", "a"))
            .await;
        assert!(seen.is_some());
    }

    #[tokio::test]
    async fn kubeconfig_points_at_the_server() {
        let server = ApiServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        server.write_kubeconfig(&path);
        let kubeconfig = ::kube::config::Kubeconfig::read_from(&path).unwrap();
        let config = ::kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let client = ::kube::Client::try_from(config).unwrap();
        server.seed(service("a", "web"));
        let api: Api<Service> = Api::default_namespaced(client);
        assert!(api.get_opt("a").await.unwrap().is_some());
    }
}
