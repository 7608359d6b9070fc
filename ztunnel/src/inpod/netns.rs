//! Running code inside a pod's network namespace, to create the sockets ztunnel uses there.
//!
//! # Where it sits
//!
//! An in-pod proxy listens and connects from inside the pod's network namespace (its 15001,
//! 15006, 15008 and 15053 listeners, its connections to peers and to the application), yet is
//! served by ztunnel's ordinary worker runtime: a socket belongs to the namespace it was
//! *created* in, whichever thread later uses it. [`Netns`] owns one thread per pod that enters
//! the namespace (`setns`) once and then only runs the short jobs it is sent — creating,
//! configuring and binding sockets — so no worker thread ever changes namespace.
//!
//! [`NetnsId`] (device and inode of the namespace file) tells whether two handles name the same
//! namespace: a pod whose sandbox was recreated comes back with a different one.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::mpsc;

/// Identifies a network namespace: the device and inode of its namespace file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NetnsId {
    /// Device of the nsfs file.
    pub dev: u64,
    /// Inode of the nsfs file (what `ip netns identify` and `/proc/<pid>/ns/net` show).
    pub ino: u64,
}

impl fmt::Display for NetnsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

impl NetnsId {
    /// The namespace `fd` refers to.
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let meta = File::from(fd.try_clone_to_owned()?).metadata()?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A network namespace and the thread that works inside it. Cheap to share behind an `Arc`;
/// the thread ends when the handle is dropped.
pub struct Netns {
    fd: OwnedFd,
    id: NetnsId,
    jobs: mpsc::Sender<Job>,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netns").field("id", &self.id).finish()
    }
}

/// Why a namespace could not be entered or a job not run in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// The handle is not usable (stat or dup failed).
    #[error("network namespace handle: {0}")]
    Handle(#[source] io::Error),
    /// The namespace file could not be opened.
    #[error("failed to open network namespace {path}: {source}")]
    Open {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `setns` refused the handle (not a network namespace, or no `CAP_SYS_ADMIN`).
    #[error("failed to enter network namespace {id}: {source}")]
    Enter {
        /// The namespace.
        id: NetnsId,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// The namespace thread could not be started.
    #[error("failed to start the namespace thread: {0}")]
    Thread(#[source] io::Error),
    /// The namespace thread is gone (it panicked in a job).
    #[error("the thread of network namespace {0} is gone")]
    Gone(NetnsId),
}

impl Netns {
    /// Enters the namespace at `path` (e.g. `/var/run/netns/<name>` or `/proc/<pid>/ns/net`).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(OwnedFd::from(file))
    }

    /// Enters the namespace `fd` refers to (e.g. the descriptor received over ZDS) on a new
    /// thread; fails if that thread cannot enter it.
    pub fn new(fd: OwnedFd) -> Result<Self, NetnsError> {
        let id = NetnsId::of(fd.as_fd()).map_err(NetnsError::Handle)?;
        let thread_fd = fd.try_clone().map_err(NetnsError::Handle)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let (entered_tx, entered) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("netns-{}", id.ino))
            .spawn(move || {
                let result = nix::sched::setns(&thread_fd, nix::sched::CloneFlags::CLONE_NEWNET);
                drop(thread_fd);
                let ok = result.is_ok();
                let _ = entered_tx.send(result);
                if ok {
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                }
            })
            .map_err(NetnsError::Thread)?;
        match entered.recv() {
            Ok(Ok(())) => Ok(Self { fd, id, jobs }),
            Ok(Err(source)) => Err(NetnsError::Enter { id, source }),
            Err(_) => Err(NetnsError::Gone(id)),
        }
    }

    /// The namespace.
    pub fn id(&self) -> NetnsId {
        self.id
    }

    /// A handle on the namespace (e.g. to install rules in it).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Runs `job` inside the namespace and returns its result. Blocks the caller for the
    /// job's duration, so jobs must be short and must not block: creating, configuring and
    /// binding sockets.
    pub fn run<T, F>(&self, job: F) -> Result<T, NetnsError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(1);
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(job());
            }))
            .map_err(|_| NetnsError::Gone(self.id))?;
        rx.recv().map_err(|_| NetnsError::Gone(self.id))
    }
}

impl From<NetnsError> for io::Error {
    fn from(e: NetnsError) -> Self {
        match e {
            NetnsError::Handle(e) | NetnsError::Thread(e) => e,
            NetnsError::Open { source, .. } => source,
            NetnsError::Enter { source, .. } => io::Error::from(source),
            e @ NetnsError::Gone(_) => io::Error::other(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_netns() -> File {
        File::open("/proc/self/ns/net").unwrap()
    }

    #[test]
    fn jobs_run_in_the_namespace_and_ids_compare() {
        let ns = Netns::new(OwnedFd::from(own_netns())).unwrap();
        let own = NetnsId::of(own_netns().as_fd()).unwrap();
        assert_eq!(ns.id(), own);
        // The job's thread sees the namespace it entered.
        let seen = ns
            .run(|| NetnsId::of(File::open("/proc/thread-self/ns/net").unwrap().as_fd()))
            .unwrap()
            .unwrap();
        assert_eq!(seen, own);
        assert_eq!(ns.run(|| 40 + 2).unwrap(), 42);
        assert_eq!(own.to_string(), format!("net:[{}]", own.ino));
    }

    #[test]
    fn a_file_that_is_not_a_namespace_is_refused() {
        let file = tempfile::tempfile().unwrap();
        match Netns::new(OwnedFd::from(file)) {
            Err(NetnsError::Enter { .. }) => {}
            other => panic!("expected Enter error, got {other:?}"),
        }
        match Netns::open("/nonexistent/netns") {
            Err(NetnsError::Open { path, .. }) => assert_eq!(path, "/nonexistent/netns"),
            other => panic!("expected Open error, got {other:?}"),
        }
    }

    #[test]
    fn a_panicking_job_reports_the_thread_gone() {
        let ns = Netns::new(OwnedFd::from(own_netns())).unwrap();
        let result: Result<(), _> = ns.run(|| panic!("job panics"));
        assert!(matches!(result, Err(NetnsError::Gone(_))));
        assert!(matches!(ns.run(|| ()), Err(NetnsError::Gone(_))));
    }
}
