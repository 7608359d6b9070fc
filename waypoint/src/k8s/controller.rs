//! The controller loop: watches Gateways (every namespace, or the configured ones), the
//! waypoint objects it owns and the GatewayClasses, and for each Gateway of a class it serves
//! applies [`reconcile`](super::reconcile::reconcile)'s decision.
//!
//! Each reconcile reads the Gateway and its class afresh (a deleted Gateway is never
//! provisioned again from a stale cache). Writes are server-side apply with the controller
//! name as field manager (`force`): the ServiceAccount, in `namespace` configuration scope the
//! RoleBinding that lets the waypoint read its L7 configuration, the waypoint's copy of
//! istiod's mesh configuration, the Deployment and the Service, then the Gateway's status on
//! its `/status` subresource (only when it differs from the observed one, so a status write
//! does not cause another). istiod's mesh ConfigMap is read afresh at each reconcile, and
//! watched by name (a `metadata.name` field selector): any change of it reconciles every
//! Gateway. Gateways of other classes are never written to. A failed reconcile is retried
//! with exponential backoff (200 ms doubling up to 60 s, per Gateway); a successful one is
//! repeated every 5 minutes to correct drift. Deleting a Gateway deletes its objects through
//! their owner references (the API server's garbage collector), not here.
//!
//! In `cluster` configuration scope, one task keeps the subjects of the configuration
//! ClusterRoleBinding equal to the ServiceAccounts of the waypoints provisioned
//! ([`reconcile::cluster_subjects`] of the Gateways and classes listed afresh): it applies
//! them after every reconcile and every change of a Gateway (a deletion included), at most
//! once per [`SUBJECTS_DEBOUNCE`], and again after [`BACKOFF_MAX`] when the write failed.
//!
//! The readiness server answers `/healthz/ready` (15021) once the first list of Gateways has
//! been received; the metrics server (15020, `/stats/prometheus` and `/metrics`) exposes
//! `waypoint_controller_reconciles_total{result="applied|ignored|error"}`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt as _;
use gateway_api::gatewayclasses::GatewayClass;
use gateway_api::gateways::Gateway;
use http::{Request, StatusCode};
use hyper::body::Bytes;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller as KubeController};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource as _, ResourceExt as _};
use metrics::{Counter, Key, KeyName, Label, Level, Metadata, Recorder as _, SharedString};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use ztunnel::admin::ReadinessServer;
use ztunnel::admin::Ready;
use ztunnel::admin::serve::{
    Handler, HttpListener, HttpResponse, is_get, method_not_allowed, not_found, response,
};

use super::labels;
use super::reconcile::{self, is_ours};
use super::settings::{ConfigScope, ControllerConfig};

/// The reconcile counter.
pub const RECONCILES_TOTAL: &str = "waypoint_controller_reconciles_total";
/// First retry delay after a failed reconcile.
const BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How often the readiness task looks at the Gateway store until it is synced.
const SYNC_POLL: Duration = Duration::from_millis(100);
/// Resync period of a reconciled Gateway.
const RESYNC: Duration = Duration::from_secs(300);
/// How long the subjects of the cluster-wide configuration binding wait for more changes
/// before they are written.
pub const SUBJECTS_DEBOUNCE: Duration = Duration::from_millis(100);
/// `Content-Type` of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Where the controller's servers listen.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// Readiness server (`/healthz/ready`); `0.0.0.0:15021` in the chart.
    pub readiness_addr: SocketAddr,
    /// Metrics server; `0.0.0.0:15020` by default.
    pub metrics_addr: SocketAddr,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A server could not bind its address.
    #[error("binding the {what} server on {addr}: {source}")]
    Bind {
        /// Which server.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Why one reconcile failed (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A read from the API server failed.
    #[error("reading {what}: {source}")]
    Read {
        /// What was read.
        what: String,
        /// The API error.
        source: kube::Error,
    },
    /// An apply failed.
    #[error("applying {what}: {source}")]
    Apply {
        /// What was applied (`Deployment ns/name`).
        what: String,
        /// The API error.
        source: kube::Error,
    },
}

/// The controller's metrics, on their own recorder.
struct Metrics {
    handle: PrometheusHandle,
    applied: Counter,
    ignored: Counter,
    error: Counter,
}

impl Metrics {
    fn new() -> Self {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        recorder.describe_counter(
            KeyName::from(RECONCILES_TOTAL),
            None,
            SharedString::from(
                "Gateway reconciles by result: applied (a waypoint Gateway of ours), ignored \
                 (another class), error (retried)",
            ),
        );
        let metadata = Metadata::new(module_path!(), Level::INFO, Some(module_path!()));
        let counter = |result: &'static str| {
            let key = Key::from_parts(RECONCILES_TOTAL, vec![Label::new("result", result)]);
            let counter = recorder.register_counter(&key, &metadata);
            // Registered at zero so the series exist before the first reconcile.
            counter.increment(0);
            counter
        };
        Self {
            applied: counter("applied"),
            ignored: counter("ignored"),
            error: counter("error"),
            handle,
        }
    }
}

struct MetricsHandler(Arc<Context>);

impl Handler for MetricsHandler {
    fn handle(&self, request: Request<Bytes>, _peer: SocketAddr) -> HttpResponse {
        match request.uri().path() {
            "/stats/prometheus" | "/metrics" if is_get(request.method()) => response(
                StatusCode::OK,
                PROMETHEUS_TEXT,
                self.0.metrics.handle.render(),
            ),
            "/stats/prometheus" | "/metrics" => method_not_allowed("GET"),
            path => not_found(path),
        }
    }
}

/// What every reconcile shares.
struct Context {
    client: Client,
    config: ControllerConfig,
    metrics: Metrics,
    /// Consecutive failures per Gateway (namespace, name), for the backoff.
    failures: Mutex<HashMap<(String, String), u32>>,
    /// Wakes the task that keeps the cluster-wide configuration binding (`cluster` scope).
    subjects: Arc<Notify>,
}

impl Context {
    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u32>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running controller.
#[derive(Debug)]
pub struct Controller {
    readiness: SocketAddr,
    metrics: SocketAddr,
    ready: Ready,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Controller {
    /// Binds the readiness and metrics servers and starts watching through `client`.
    pub async fn start(
        client: Client,
        config: ControllerConfig,
        options: ControllerOptions,
    ) -> Result<Controller, ControllerError> {
        let ready = Ready::new();
        let synced = ready.register("gateways synced");
        let readiness = ReadinessServer::new(options.readiness_addr, ready.clone())
            .await
            .map_err(|source| ControllerError::Bind {
                what: "readiness",
                addr: options.readiness_addr,
                source,
            })?;
        let metrics_listener =
            HttpListener::bind(options.metrics_addr)
                .await
                .map_err(|source| ControllerError::Bind {
                    what: "metrics",
                    addr: options.metrics_addr,
                    source,
                })?;
        let (readiness_addr, metrics_addr) = (readiness.address(), metrics_listener.address());
        let shutdown = CancellationToken::new();
        let ctx = Arc::new(Context {
            client: client.clone(),
            config,
            metrics: Metrics::new(),
            failures: Mutex::new(HashMap::new()),
            subjects: Arc::new(Notify::new()),
        });
        let mut tasks = vec![
            tokio::spawn(readiness.run(shutdown.clone())),
            tokio::spawn(metrics_listener.serve(
                "metrics",
                Arc::new(MetricsHandler(ctx.clone())),
                shutdown.clone(),
            )),
        ];
        let namespaces: Vec<Option<String>> = if ctx.config.watch_namespaces.is_empty() {
            vec![None]
        } else {
            ctx.config
                .watch_namespaces
                .iter()
                .cloned()
                .map(Some)
                .collect()
        };
        if ctx.config.waypoint.config_scope == ConfigScope::Cluster {
            tasks.push(tokio::spawn(keep_cluster_subjects(
                ctx.clone(),
                namespaces.clone(),
                shutdown.clone(),
            )));
        }
        let mut stores = Vec::new();
        let mut runs = Vec::new();
        for namespace in namespaces {
            let (controller, store) = build(&client, &ctx.config, namespace.as_deref());
            stores.push(store);
            let controller = controller.graceful_shutdown_on(shutdown.clone().cancelled_owned());
            runs.push(
                controller
                    .run(reconcile_gateway, error_policy, ctx.clone())
                    .boxed(),
            );
        }
        tasks.push(tokio::spawn(async move {
            for store in stores {
                // A store's readiness wakes a single waiter, and the controller's runner waits
                // on it too: look again until it is ready.
                loop {
                    match tokio::time::timeout(SYNC_POLL, store.wait_until_ready()).await {
                        Ok(Ok(())) => break,
                        Ok(Err(_)) => return,
                        Err(_) => {}
                    }
                }
            }
            tracing::info!("gateways synced: ready");
            synced.done();
        }));
        tasks.push(tokio::spawn(async move {
            let mut all = futures_util::stream::select_all(runs);
            while let Some(result) = all.next().await {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "controller event");
                }
            }
        }));
        tracing::info!(
            readiness = %readiness_addr,
            metrics = %metrics_addr,
            controller = %ctx.config.controller_name,
            "waypoint controller started"
        );
        Ok(Controller {
            readiness: readiness_addr,
            metrics: metrics_addr,
            ready,
            shutdown,
            tasks,
        })
    }

    /// The readiness server's address.
    pub fn readiness_address(&self) -> SocketAddr {
        self.readiness
    }

    /// The metrics server's address.
    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics
    }

    /// The readiness gate (open once the Gateways are listed).
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Stops watching (reconciles in progress finish) and closes the servers.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            // A panicked task has nothing left to stop.
            let _ = task.await;
        }
    }
}

/// The kube-rs controller of the Gateways in `namespace` (all when `None`).
fn build(
    client: &Client,
    config: &ControllerConfig,
    namespace: Option<&str>,
) -> (
    KubeController<Gateway>,
    kube::runtime::reflector::Store<Gateway>,
) {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED,
        config.managed_label()
    ));
    let controller = KubeController::new(
        api::<Gateway>(client, namespace),
        watcher::Config::default(),
    );
    let store = controller.store();
    let by_class = store.clone();
    // A change of istiod's mesh configuration updates every waypoint's copy.
    let mesh = &config.mesh_config;
    let mesh_changes = watcher(
        Api::<ConfigMap>::namespaced(client.clone(), &mesh.namespace),
        watcher::Config::default().fields(&format!("metadata.name={}", mesh.name)),
    )
    .default_backoff()
    .touched_objects()
    .filter_map(|object| std::future::ready(object.ok().map(|_| ())));
    let controller = controller.reconcile_all_on(mesh_changes);
    let controller = match config.waypoint.config_scope {
        ConfigScope::Namespace => {
            controller.owns(api::<RoleBinding>(client, namespace), owned.clone())
        }
        ConfigScope::Cluster => controller,
    };
    let controller = controller
        .owns(api::<ServiceAccount>(client, namespace), owned.clone())
        .owns(api::<ConfigMap>(client, namespace), owned.clone())
        .owns(api::<Deployment>(client, namespace), owned.clone())
        .owns(api::<Service>(client, namespace), owned)
        .watches(
            Api::<GatewayClass>::all(client.clone()),
            watcher::Config::default(),
            move |class: GatewayClass| {
                let name = class.name_any();
                by_class
                    .state()
                    .into_iter()
                    .filter(|g| g.spec.gateway_class_name == name)
                    .map(|g| ObjectRef::from_obj(&*g))
                    .collect::<Vec<_>>()
            },
        );
    (controller, store)
}

/// The current time, to the second (Kubernetes' precision).
fn now() -> Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

async fn reconcile_gateway(
    gateway: Arc<Gateway>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let result = reconcile_once(&gateway, &ctx).await;
    ctx.subjects.notify_one();
    let key = (gateway.namespace().unwrap_or_default(), gateway.name_any());
    match &result {
        Ok(true) => {
            ctx.metrics.applied.increment(1);
            ctx.failures().remove(&key);
        }
        Ok(false) => ctx.metrics.ignored.increment(1),
        Err(_) => ctx.metrics.error.increment(1),
    }
    result.map(|ours| {
        if ours {
            Action::requeue(RESYNC)
        } else {
            Action::await_change()
        }
    })
}

fn error_policy(gateway: Arc<Gateway>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let key = (gateway.namespace().unwrap_or_default(), gateway.name_any());
    let mut failures = ctx.failures();
    let n = failures.entry(key.clone()).or_insert(0);
    *n = n.saturating_add(1);
    let delay = BACKOFF_START
        .saturating_mul(2u32.saturating_pow(n.saturating_sub(1).min(16)))
        .min(BACKOFF_MAX);
    tracing::warn!(gateway = %format!("{}/{}", key.0, key.1), %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Applies `object` with server-side apply; returns what the server stored.
async fn apply<K>(
    api: &Api<K>,
    params: &PatchParams,
    name: &str,
    object: &K,
) -> Result<K, ReconcileError>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
    <K as kube::Resource>::DynamicType: Default,
{
    api.patch(name, params, &Patch::Apply(object))
        .await
        .map_err(|source| ReconcileError::Apply {
            what: format!("{} {name}", K::kind(&Default::default())),
            source,
        })
}

/// One reconcile: `Ok(false)` when the Gateway is not ours (nothing written).
async fn reconcile_once(cached: &Gateway, ctx: &Context) -> Result<bool, ReconcileError> {
    let namespace = cached.namespace().unwrap_or_default();
    let gateways: Api<Gateway> = Api::namespaced(ctx.client.clone(), &namespace);
    // The watch cache can lag behind a deletion (the owned objects' deletions may arrive
    // first): read the Gateway itself, so a deleted one is never provisioned again.
    let name = cached.name_any();
    let fresh = gateways
        .get_opt(&name)
        .await
        .map_err(|source| ReconcileError::Read {
            what: format!("Gateway {namespace}/{name}"),
            source,
        })?;
    let Some(gateway) = fresh.filter(|g| g.uid() == cached.uid()) else {
        return Ok(false);
    };
    let gateway = &gateway;
    if gateway.meta().deletion_timestamp.is_some() {
        return Ok(false);
    }
    let classes: Api<GatewayClass> = Api::all(ctx.client.clone());
    let class_name = &gateway.spec.gateway_class_name;
    let class = classes
        .get_opt(class_name)
        .await
        .map_err(|source| ReconcileError::Read {
            what: format!("GatewayClass {class_name}"),
            source,
        })?;
    let Some(class) = class.filter(|c| is_ours(c, &ctx.config)) else {
        return Ok(false);
    };
    let mesh_source = &ctx.config.mesh_config;
    let mesh = Api::<ConfigMap>::namespaced(ctx.client.clone(), &mesh_source.namespace)
        .get_opt(&mesh_source.name)
        .await
        .map_err(|source| ReconcileError::Read {
            what: format!("ConfigMap {}/{}", mesh_source.namespace, mesh_source.name),
            source,
        })?;
    let mesh = mesh
        .as_ref()
        .and_then(|cm| cm.data.as_ref())
        .and_then(|data| data.get(reconcile::MESH_KEY));
    let now = now();
    // The objects do not depend on the observed Service; the status does, and is computed
    // again from the Service as applied.
    let Some(desired) = reconcile::reconcile(gateway, &class, &ctx.config, None, now.clone())
    else {
        return Ok(false);
    };
    let params = PatchParams::apply(&ctx.config.controller_name).force();
    let mut applied_service = None;
    if let Some(sa) = &desired.service_account {
        let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &namespace);
        apply(&api, &params, &sa.name_any(), sa).await?;
    }
    if let Some(binding) = &desired.role_binding {
        let api: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &namespace);
        apply(&api, &params, &binding.name_any(), binding).await?;
    }
    if let Some(copy) =
        reconcile::mesh_config_map(gateway, &class, &ctx.config, mesh.map(String::as_str))
    {
        let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
        apply(&api, &params, &copy.name_any(), &copy).await?;
    }
    if let Some(deployment) = &desired.deployment {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
        apply(&api, &params, &deployment.name_any(), deployment).await?;
    }
    if let Some(service) = &desired.service {
        let api: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
        applied_service = Some(apply(&api, &params, &service.name_any(), service).await?);
    }
    let status = match &applied_service {
        Some(service) => reconcile::reconcile(gateway, &class, &ctx.config, Some(service), now)
            .map_or(desired.gateway_status, |d| d.gateway_status),
        None => desired.gateway_status,
    };
    if gateway.status.as_ref() != Some(&status) {
        let body = serde_json::json!({
            "apiVersion": Gateway::api_version(&()),
            "kind": Gateway::kind(&()),
            "status": status,
        });
        gateways
            .patch_status(&name, &params, &Patch::Apply(&body))
            .await
            .map_err(|source| ReconcileError::Apply {
                what: format!("Gateway {namespace}/{name} status"),
                source,
            })?;
    }
    Ok(true)
}

/// Gateways of `namespace` (all when `None`).
fn gateways_api(client: &Client, namespace: Option<&str>) -> Api<Gateway> {
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// `cluster` scope: applies the subjects of the configuration ClusterRoleBinding after every
/// reconcile and every change of a Gateway in `namespaces`, until `shutdown`.
async fn keep_cluster_subjects(
    ctx: Arc<Context>,
    namespaces: Vec<Option<String>>,
    shutdown: CancellationToken,
) {
    let changes = futures_util::stream::select_all(namespaces.iter().map(|namespace| {
        watcher(
            gateways_api(&ctx.client, namespace.as_deref()),
            watcher::Config::default(),
        )
        .default_backoff()
        .boxed()
    }));
    let trigger = ctx.subjects.clone();
    let forward = async move {
        let mut changes = changes;
        while let Some(event) = changes.next().await {
            // Errors are retried by the watcher's backoff; every event may change the set.
            if let Err(e) = event {
                tracing::debug!(error = %e, "gateway watch for the configuration binding");
            }
            trigger.notify_one();
        }
    };
    let sync = async {
        let mut retry = false;
        loop {
            if retry {
                tokio::select! {
                    () = ctx.subjects.notified() => {}
                    () = tokio::time::sleep(BACKOFF_MAX) => {}
                }
            } else {
                ctx.subjects.notified().await;
            }
            // Changes during the pause leave a permit: the next round picks them up.
            tokio::time::sleep(SUBJECTS_DEBOUNCE).await;
            match apply_cluster_subjects(&ctx, &namespaces).await {
                Ok(count) => {
                    retry = false;
                    tracing::debug!(subjects = count, "configuration binding applied");
                }
                Err(error) => {
                    retry = true;
                    tracing::warn!(%error, retry_in = ?BACKOFF_MAX, "configuration binding not applied");
                }
            }
        }
    };
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = forward => {}
        () = sync => {}
    }
}

/// Lists the Gateways and classes and applies the configuration ClusterRoleBinding with their
/// waypoints' ServiceAccounts; returns how many.
async fn apply_cluster_subjects(
    ctx: &Context,
    namespaces: &[Option<String>],
) -> Result<usize, ReconcileError> {
    let read = |what: &str| {
        let what = what.to_string();
        move |source| ReconcileError::Read { what, source }
    };
    let mut gateways = Vec::new();
    for namespace in namespaces {
        let list = gateways_api(&ctx.client, namespace.as_deref())
            .list(&Default::default())
            .await
            .map_err(read("Gateways"))?;
        gateways.extend(list.items);
    }
    let classes = Api::<GatewayClass>::all(ctx.client.clone())
        .list(&Default::default())
        .await
        .map_err(read("GatewayClasses"))?
        .items;
    let subjects = reconcile::cluster_subjects(&gateways, &classes, &ctx.config);
    let count = subjects.len();
    let binding = reconcile::cluster_role_binding(&ctx.config, subjects);
    let api: Api<ClusterRoleBinding> = Api::all(ctx.client.clone());
    let params = PatchParams::apply(&ctx.config.controller_name).force();
    apply(&api, &params, &binding.name_any(), &binding).await?;
    Ok(count)
}
