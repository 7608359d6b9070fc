//! Workspace-level end-to-end suites.
//!
//! The suites live in `tests/tests/`: each runs the real components in-process, on loopback
//! addresses and ports the operating system picks, and asserts what crossed the sockets.
//!
//! - `demo.rs`: the README's first command — two workloads, a local CA, one HBONE tunnel.
