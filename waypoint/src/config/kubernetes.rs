//! The Kubernetes source of the L7 configuration: the kinds of [`Kind::ALL`] watched on the
//! cluster's API server instead of read from a directory.
//!
//! It sits before the chain, where the directory watcher sits: one kube-rs watcher per kind
//! (and per watched namespace) keeps a copy of the objects; after a burst of changes (at most
//! every [`KubeSourceSettings::debounce`]) the copies of every kind go through the same loader
//! as the files of a directory ([`ConfigSet::add_objects`]) and the result replaces the
//! configuration in force at once. A malformed object is reported as `<kind> <ns>/<name>`
//! and left out; the others apply.
//!
//! Each kind is watched at the first of its [`Kind::versions`] the API server serves (`v1`
//! preferred), found by discovery. A kind whose CRD is not installed is reported once and
//! looked for again every [`KubeSourceSettings::rediscover`]; it does not hold the others.
//! Nothing is applied until every kind has either been listed in full or found missing, so
//! that a partial configuration (routes without their AuthorizationPolicies) is never served;
//! the readiness task handed to [`watch`] completes with that first configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, TypeMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, discovery};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use ztunnel::admin::ReadyTask;

use super::{ConfigError, ConfigSet, Kind};

/// Settings of the Kubernetes source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSourceSettings {
    /// The namespaces whose objects are read; empty (the default) = every namespace. Blank
    /// entries are ignored (`WAYPOINT_CONFIG_NAMESPACES=""` means every namespace).
    pub namespaces: Vec<String>,
    /// How long a burst of changes is gathered before the configuration is rebuilt; the
    /// configuration changes at most once per period. Default 100 ms.
    pub debounce: Duration,
    /// How often a kind the API server does not serve (its CRD is not installed) is looked
    /// for again. Default 30 s.
    pub rediscover: Duration,
}

impl Default for KubeSourceSettings {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            debounce: Duration::from_millis(100),
            rediscover: Duration::from_secs(30),
        }
    }
}

/// The `(API group, resource)` of every kind the source reads, in [`Kind::ALL`] order: what
/// the waypoint's identity must be allowed to `get`, `list` and `watch` (the waypoint
/// controller chart's `<name>-waypoint-config` ClusterRole grants exactly these).
pub const READ_RESOURCES: [(&str, &str); Kind::ALL.len()] = {
    let mut out = [("", ""); Kind::ALL.len()];
    let mut i = 0;
    while i < Kind::ALL.len() {
        out[i] = (Kind::ALL[i].group(), Kind::ALL[i].plural());
        i += 1;
    }
    out
};

/// The verbs the source uses on each of [`READ_RESOURCES`].
pub const READ_VERBS: [&str; 3] = ["get", "list", "watch"];

/// The collections watched for `namespaces` (the `--config-namespaces` list): each named
/// namespace once, sorted, blanks ignored; `[None]` (every namespace) when none is named.
pub fn watched_namespaces(namespaces: &[String]) -> Vec<Option<String>> {
    // Each namespace once: a namespace watched twice would report its objects as duplicates.
    let unique: BTreeSet<&str> = namespaces
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .collect();
    if unique.is_empty() {
        vec![None]
    } else {
        unique.into_iter().map(|n| Some(n.to_owned())).collect()
    }
}

/// How long a failed discovery (API server unreachable, not a missing CRD) waits before the
/// next attempt.
const DISCOVERY_RETRY: Duration = Duration::from_secs(1);

/// The version a kind is watched at: the first of its versions that the API server serves
/// for it. `served` lists the `(version, kind)` pairs discovery found in the kind's group.
pub fn preferred_version(kind: Kind, served: &[(String, String)]) -> Option<&'static str> {
    kind.versions()
        .iter()
        .copied()
        .find(|v| served.iter().any(|(sv, sk)| sv == v && sk == kind.as_str()))
}

/// One watched collection: a kind in one namespace (or all).
#[derive(Debug, Clone)]
struct Stream {
    kind: Kind,
    namespace: Option<String>,
}

/// The objects of every stream, by stream and `(namespace, name)`.
#[derive(Debug, Default)]
struct Store {
    objects: BTreeMap<usize, BTreeMap<(String, String), serde_yaml_ng::Value>>,
    /// Streams listed in full at least once, or found not served.
    settled: BTreeSet<usize>,
}

#[derive(Debug, Default)]
struct Shared {
    store: Mutex<Store>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn replace(&self, id: usize, objects: BTreeMap<(String, String), serde_yaml_ng::Value>) {
        let mut store = self.lock();
        store.objects.insert(id, objects);
        store.settled.insert(id);
        drop(store);
        self.changed.notify_one();
    }

    fn upsert(&self, id: usize, key: (String, String), value: serde_yaml_ng::Value) {
        self.lock()
            .objects
            .entry(id)
            .or_default()
            .insert(key, value);
        self.changed.notify_one();
    }

    fn remove(&self, id: usize, key: &(String, String)) {
        if let Some(objects) = self.lock().objects.get_mut(&id) {
            objects.remove(key);
        }
        self.changed.notify_one();
    }

    /// Every object, in stream order (kind order) then namespace and name; `None` until
    /// every one of `streams` has settled.
    fn snapshot(&self, streams: usize) -> Option<Vec<serde_yaml_ng::Value>> {
        let store = self.lock();
        if store.settled.len() < streams {
            return None;
        }
        Some(
            store
                .objects
                .values()
                .flat_map(|objects| objects.values().cloned())
                .collect(),
        )
    }
}

/// Starts watching the API server: one task per kind and namespace, and the task that
/// rebuilds the configuration and hands it to `apply`. `ready` completes with the first
/// configuration applied. Returns the tasks (abort them all to stop).
pub fn watch<F>(
    client: Client,
    settings: &KubeSourceSettings,
    apply: F,
    ready: Option<ReadyTask>,
) -> Vec<JoinHandle<()>>
where
    F: Fn(ConfigSet, Vec<ConfigError>) + Send + Sync + 'static,
{
    let namespaces = watched_namespaces(&settings.namespaces);
    let streams: Vec<Stream> = Kind::ALL
        .into_iter()
        .flat_map(|kind| {
            namespaces.iter().map(move |namespace| Stream {
                kind,
                namespace: namespace.clone(),
            })
        })
        .collect();
    let shared = Arc::new(Shared::default());
    let mut tasks: Vec<JoinHandle<()>> = streams
        .iter()
        .enumerate()
        .map(|(id, stream)| {
            tokio::spawn(run_stream(
                client.clone(),
                stream.clone(),
                id,
                Arc::clone(&shared),
                settings.rediscover,
            ))
        })
        .collect();
    tasks.push(tokio::spawn(rebuild(
        shared,
        streams.len(),
        settings.debounce,
        apply,
        ready,
    )));
    tasks
}

/// Rebuilds the configuration after every burst of changes.
async fn rebuild<F>(
    shared: Arc<Shared>,
    streams: usize,
    debounce: Duration,
    apply: F,
    mut ready: Option<ReadyTask>,
) where
    F: Fn(ConfigSet, Vec<ConfigError>),
{
    loop {
        shared.changed.notified().await;
        // Changes during the pause leave a permit: the next round picks them up.
        tokio::time::sleep(debounce).await;
        let Some(objects) = shared.snapshot(streams) else {
            continue;
        };
        let mut config = ConfigSet::default();
        let errors = config.add_objects(&objects);
        tracing::info!(
            objects = config.len(),
            errors = errors.len(),
            "L7 configuration loaded from the Kubernetes API server"
        );
        apply(config, errors);
        if let Some(task) = ready.take() {
            task.done();
        }
    }
}

/// What discovery says about a kind.
enum Discovered {
    Served(ApiResource),
    NotServed,
}

async fn discover(client: &Client, kind: Kind) -> Result<Discovered, kube::Error> {
    let group = match discovery::group(client, kind.group()).await {
        Ok(group) => group,
        Err(kube::Error::Discovery(_)) => return Ok(Discovered::NotServed),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Ok(Discovered::NotServed);
        }
        Err(e) => return Err(e),
    };
    let mut resources = BTreeMap::new();
    let served: Vec<(String, String)> = group
        .versions()
        .flat_map(|v| {
            let version = v.to_owned();
            group
                .versioned_resources(v)
                .into_iter()
                .map(move |(ar, _)| (version.clone(), ar))
        })
        .map(|(version, ar)| {
            let pair = (version, ar.kind.clone());
            resources.insert(pair.clone(), ar);
            pair
        })
        .collect();
    let Some(version) = preferred_version(kind, &served) else {
        return Ok(Discovered::NotServed);
    };
    Ok(resources
        .remove(&(version.to_owned(), kind.as_str().to_owned()))
        .map_or(Discovered::NotServed, Discovered::Served))
}

/// Discovers, then watches, one stream; back to discovery when its type goes away.
async fn run_stream(
    client: Client,
    stream: Stream,
    id: usize,
    shared: Arc<Shared>,
    rediscover: Duration,
) {
    let kind = stream.kind;
    let mut reported = false;
    loop {
        match discover(&client, kind).await {
            Ok(Discovered::Served(ar)) => {
                reported = false;
                tracing::info!(%kind, api_version = %ar.api_version, "watching");
                watch_stream(&client, &stream, &ar, id, &shared).await;
                // Gone while discovery still lists it: do not ask again at once.
                tokio::time::sleep(DISCOVERY_RETRY).await;
            }
            Ok(Discovered::NotServed) => {
                if !reported {
                    tracing::warn!(
                        %kind,
                        group = kind.group(),
                        "the API server does not serve this kind (CRD not installed?); its objects are not loaded until it does"
                    );
                    shared.replace(id, BTreeMap::new());
                    reported = true;
                }
                tokio::time::sleep(rediscover).await;
            }
            Err(e) => {
                tracing::warn!(%kind, error = %e, "API discovery failed; retrying");
                tokio::time::sleep(DISCOVERY_RETRY).await;
            }
        }
    }
}

/// Watches one stream until its type is no longer served.
async fn watch_stream(
    client: &Client,
    stream: &Stream,
    ar: &ApiResource,
    id: usize,
    shared: &Shared,
) {
    let api: Api<DynamicObject> = match &stream.namespace {
        Some(namespace) => Api::namespaced_with(client.clone(), namespace, ar),
        None => Api::all_with(client.clone(), ar),
    };
    let mut events = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut initial: Option<BTreeMap<(String, String), serde_yaml_ng::Value>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => initial = Some(BTreeMap::new()),
            Ok(Event::InitApply(object)) => {
                if let Some((key, value)) = to_value(object, ar) {
                    initial.get_or_insert_default().insert(key, value);
                }
            }
            Ok(Event::InitDone) => shared.replace(id, initial.take().unwrap_or_default()),
            Ok(Event::Apply(object)) => {
                if let Some((key, value)) = to_value(object, ar) {
                    shared.upsert(id, key, value);
                }
            }
            Ok(Event::Delete(object)) => shared.remove(id, &key_of(&object)),
            Err(e) if not_found(&e) => {
                tracing::warn!(kind = %stream.kind, error = %e, "no longer served; looking for it again");
                return;
            }
            Err(e) => tracing::warn!(kind = %stream.kind, error = %e, "watch failed; retrying"),
        }
    }
}

/// Whether a watch error says the type is gone (404).
fn not_found(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => {
            matches!(e, kube::Error::Api(status) if status.code == 404)
        }
        watcher::Error::WatchError(status) => status.code == 404,
        _ => false,
    }
}

fn key_of(object: &DynamicObject) -> (String, String) {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// The object as the loader reads it, with `apiVersion` and `kind` filled in when the API
/// server left them out.
fn to_value(
    mut object: DynamicObject,
    ar: &ApiResource,
) -> Option<((String, String), serde_yaml_ng::Value)> {
    let key = key_of(&object);
    if object.types.is_none() {
        object.types = Some(TypeMeta {
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
        });
    }
    // Noise for the loader, and the largest part of most objects.
    object.metadata.managed_fields = None;
    match serde_yaml_ng::to_value(&object) {
        Ok(value) => Some((key, value)),
        Err(e) => {
            tracing::warn!(kind = %ar.kind, namespace = %key.0, name = %key.1, error = %e, "object ignored");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(v, k)| ((*v).to_owned(), (*k).to_owned()))
            .collect()
    }

    #[test]
    fn preferred_version_is_the_first_served() {
        /// The kind, the `(version, kind)` pairs served, the version expected.
        type Case = (
            Kind,
            &'static [(&'static str, &'static str)],
            Option<&'static str>,
        );
        let cases: &[Case] = &[
            (
                Kind::VirtualService,
                &[
                    ("v1alpha3", "VirtualService"),
                    ("v1beta1", "VirtualService"),
                    ("v1", "VirtualService"),
                ],
                Some("v1"),
            ),
            (
                Kind::VirtualService,
                &[
                    ("v1alpha3", "VirtualService"),
                    ("v1beta1", "VirtualService"),
                ],
                Some("v1beta1"),
            ),
            (
                Kind::DestinationRule,
                &[("v1alpha3", "DestinationRule"), ("v1", "VirtualService")],
                Some("v1alpha3"),
            ),
            // Served only at a version the loader does not read.
            (Kind::GrpcRoute, &[("v1alpha1", "GRPCRoute")], None),
            // The group is served, the kind is not.
            (Kind::ServiceEntry, &[("v1", "VirtualService")], None),
            (Kind::AuthorizationPolicy, &[], None),
        ];
        for (kind, pairs, expected) in cases {
            assert_eq!(
                preferred_version(*kind, &served(pairs)),
                *expected,
                "{kind} {pairs:?}"
            );
        }
    }

    #[test]
    fn watched_namespaces_table() {
        let cases: &[(&[&str], &[Option<&str>])] = &[
            (&[], &[None]),
            (&[""], &[None]),
            (&[" ", ""], &[None]),
            (&["a"], &[Some("a")]),
            (&["b", "a", "b"], &[Some("a"), Some("b")]),
            (&["a", "", " b "], &[Some("a"), Some("b")]),
        ];
        for (given, want) in cases {
            let given: Vec<String> = given.iter().map(|s| (*s).to_owned()).collect();
            let want: Vec<Option<String>> = want.iter().map(|n| n.map(str::to_owned)).collect();
            assert_eq!(watched_namespaces(&given), want, "{given:?}");
        }
    }

    #[test]
    fn read_resources_are_the_kinds_read() {
        assert_eq!(READ_RESOURCES.len(), Kind::ALL.len());
        for (kind, (group, resource)) in Kind::ALL.into_iter().zip(READ_RESOURCES) {
            assert_eq!(group, kind.group(), "{kind}");
            // The plural of the kind, as the CRDs name it.
            let lower = kind.as_str().to_lowercase();
            let plural = match lower.strip_suffix('y') {
                Some(stem) => format!("{stem}ies"),
                None => format!("{lower}s"),
            };
            assert_eq!(resource, plural, "{kind}");
        }
    }

    #[test]
    fn snapshot_waits_for_every_stream_and_orders_by_stream() {
        let shared = Shared::default();
        let value = |name: &str| serde_yaml_ng::Value::String(name.to_owned());
        shared.upsert(1, ("b".into(), "x".into()), value("1/b/x"));
        shared.replace(
            0,
            BTreeMap::from([
                (("ns".into(), "z".into()), value("0/ns/z")),
                (("a".into(), "y".into()), value("0/a/y")),
            ]),
        );
        assert_eq!(shared.snapshot(2), None, "stream 1 not listed yet");
        shared.replace(
            1,
            BTreeMap::from([(("b".into(), "x".into()), value("1/b/x"))]),
        );
        shared.remove(0, &("ns".into(), "z".into()));
        assert_eq!(
            shared.snapshot(2),
            Some(vec![value("0/a/y"), value("1/b/x")])
        );
    }

    #[test]
    fn objects_get_their_type_and_lose_managed_fields() {
        let ar = ApiResource {
            group: "networking.istio.io".into(),
            version: "v1".into(),
            api_version: "networking.istio.io/v1".into(),
            kind: "VirtualService".into(),
            plural: "virtualservices".into(),
        };
        let mut object = DynamicObject::new("reviews", &ar).within("default");
        object.types = None;
        object.metadata.managed_fields = Some(Vec::new());
        object.data = serde_json::json!({"spec": {"hosts": ["reviews"]}});
        let (key, value) = to_value(object, &ar).unwrap();
        assert_eq!(key, ("default".to_owned(), "reviews".to_owned()));
        let expected: serde_yaml_ng::Value = serde_yaml_ng::from_str(
            "{apiVersion: networking.istio.io/v1, kind: VirtualService, metadata: {name: reviews, namespace: default}, spec: {hosts: [reviews]}}",
        )
        .unwrap();
        assert_eq!(value, expected);
    }
}
