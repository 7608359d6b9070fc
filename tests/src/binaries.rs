//! The workspace's binaries, for suites that run them as processes (the `waypoint` CLI and
//! controller against the API server double of [`crate::kube`]).
//!
//! Integration tests of another package cannot use `CARGO_BIN_EXE_<name>`, so a binary is
//! looked up next to the test executable: `<target>/<profile>/<name>`, the same target
//! directory and profile. Cargo builds the `waypoint` binary there whenever it builds the
//! waypoint package's integration tests (`waypoint/tests/`), as `cargo test --workspace`
//! does. Running only this package's suites does not build it: run
//! `cargo build --release -p waypoint` (with the same profile and `CARGO_TARGET_DIR`) first.
//! A missing binary fails the test loudly; it is never skipped.
//!
//! Nothing here runs cargo itself: a nested `cargo build` inside `cargo test` can wait
//! forever on the lock cargo holds on the build directory.

use std::path::PathBuf;

/// The profile directory the running test executable was built into: the parent of the
/// `deps/` holding `<test>-<hash>`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("the test executable is in deps/");
    deps.parent()
        .expect("deps/ is in the profile directory")
        .to_path_buf()
}

/// The path of workspace binary `name` of package `package`, from the test's own target
/// directory and profile.
///
/// # Panics
/// When the binary has not been built: the message says which command builds it.
pub fn binary(package: &str, name: &str) -> PathBuf {
    let dir = profile_dir();
    let path = dir.join(name);
    let profile = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("release");
    let flag = match profile {
        "release" => " --release".to_owned(),
        "debug" => String::new(),
        other => format!(" --profile {other}"),
    };
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build{flag} -p {package}` (same CARGO_TARGET_DIR) before this suite",
        path.display()
    );
    path
}

/// A spawned process, killed and reaped when dropped, so that a failing test leaves nothing
/// running. Its stdout and stderr, when piped, are drained by threads of their own, so a
/// chatty process never blocks on a full pipe.
#[derive(Debug)]
pub struct Process {
    child: std::process::Child,
    stdout: Option<std::thread::JoinHandle<Vec<u8>>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

/// What a process printed and how it ended.
#[derive(Debug)]
pub struct Output {
    /// The exit status.
    pub status: std::process::ExitStatus,
    /// Everything written to stdout (empty unless piped).
    pub stdout: Vec<u8>,
    /// Everything written to stderr (empty unless piped).
    pub stderr: Vec<u8>,
}

impl Process {
    /// Spawns `command`.
    ///
    /// # Panics
    /// When it cannot be spawned: this is test code.
    pub fn spawn(command: &mut std::process::Command) -> Process {
        let mut child = command.spawn().expect("spawn the process");
        let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            pipe.map(|mut pipe| {
                std::thread::spawn(move || {
                    let mut all = Vec::new();
                    let _ = pipe.read_to_end(&mut all);
                    all
                })
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        );
        Process {
            child,
            stdout,
            stderr,
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits (blocking) for the process to exit, at most `limit` (an upper bound against
    /// hangs); `None` when it is still running.
    ///
    /// # Panics
    /// When its status cannot be read: this is test code.
    pub fn wait_timeout(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("process status") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Waits (blocking) for the process to exit, at most `limit`, and returns what it printed.
    ///
    /// # Panics
    /// When it is still running after `limit` (it is killed): this is test code.
    pub fn output(mut self, limit: std::time::Duration) -> Output {
        let status = self
            .wait_timeout(limit)
            .unwrap_or_else(|| panic!("the process did not exit within {limit:?}"));
        let join = |pipe: Option<std::thread::JoinHandle<Vec<u8>>>| {
            pipe.map(|t| t.join().unwrap_or_default())
                .unwrap_or_default()
        };
        Output {
            status,
            stdout: join(self.stdout.take()),
            stderr: join(self.stderr.take()),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
