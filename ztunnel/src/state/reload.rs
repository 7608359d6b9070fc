//! Hot reload of the local config file: poll, load, swap on success, keep the old state on
//! failure.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use super::local::load_file;
use super::store::StateHandle;

/// What identifies one version of the file: modification time, length and content hash.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    hash: u64,
}

/// Reads the file's fingerprint; `None` when it cannot be read (missing, permissions).
async fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || fingerprint_now(&path))
        .await
        .ok()
        .flatten()
}

/// [`fingerprint`], blocking.
fn fingerprint_now(path: &Path) -> Option<Fingerprint> {
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    Some(Fingerprint {
        modified: meta.modified().ok(),
        len: meta.len(),
        hash: hasher.finish(),
    })
}

/// Watches `path` every `interval` and reloads it into `handle` when it changes.
///
/// A change is acted on once the file has stayed the same for one `interval` (so a file being
/// written is not loaded half-way); replacing it atomically (write + rename) is still best.
/// The file as it is when `watch_file` is called counts as already loaded: call it before
/// loading the file with [`super::load_file`], so that a change made in between is not missed
/// (at worst the same version is loaded twice). On a change the whole file is loaded into a fresh state: success swaps
/// it in and logs at INFO; failure logs a WARN naming the file and the error, keeps the previous
/// state and increments [`StateHandle::reload_failures`]. The task runs until aborted.
pub fn watch_file(
    path: impl Into<PathBuf>,
    handle: StateHandle,
    interval: Duration,
) -> JoinHandle<()> {
    let path = path.into();
    // The version last loaded (or present when called).
    let mut last = fingerprint_now(&path);
    tokio::spawn(async move {
        // A new version seen at the previous tick: it is loaded only once it has stayed the
        // same for a whole interval, so a file caught half-written is not loaded.
        let mut pending = None;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let current = fingerprint(&path).await;
            if current == last {
                pending = None;
                continue;
            }
            if pending != Some(current.clone()) {
                pending = Some(current);
                continue;
            }
            pending = None;
            last = current;
            match load_file(&path) {
                Ok(state) => {
                    tracing::info!(
                        file = %path.display(),
                        workloads = state.workload_count(),
                        services = state.service_count(),
                        policies = state.policies().len(),
                        "reloaded local config"
                    );
                    handle.swap(state);
                    handle.record_reload(true);
                }
                Err(error) => {
                    tracing::warn!(
                        file = %path.display(),
                        %error,
                        "failed to reload local config, keeping the previous state"
                    );
                    handle.record_reload(false);
                }
            }
        }
    })
}
