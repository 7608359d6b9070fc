//! The memory allocator of the node proxy.
//!
//! Not on the data path itself, but under all of it: an idle proxied connection is a handful of
//! small heap objects (its task, the socket's registration with the runtime, the HTTP/2 stream
//! state, the tracker entry), and with tens of thousands of them open the allocator's own
//! overhead per object — and the memory it keeps per thread — is a large part of what a
//! connection costs. mimalloc packs small objects of one size class together without a
//! per-object header, so it holds less than the system allocator for the same objects. It is
//! built without transparent huge pages (`no_thp`): asked for them, it would back its arenas
//! with 2 MiB pages, and a few live objects would keep whole huge pages resident.
//!
//! It is also faster than the system allocator on the waypoint's request path, which
//! allocates headers, frames and buffers for every request (about 15 % less waypoint CPU per
//! request under load in the waypoint benchmark).
//!
//! The `ztunnel` and `waypoint` binaries install [`Allocator`] as their global allocator; a
//! program that runs a proxy in-process and wants the same figures (the L4 and waypoint
//! benchmarks) installs it too:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: ztunnel::alloc::Allocator = ztunnel::alloc::ALLOCATOR;
//! ```

/// The global allocator of the `ztunnel` binary.
pub type Allocator = mimalloc::MiMalloc;

/// The value to install with `#[global_allocator]`.
pub const ALLOCATOR: Allocator = mimalloc::MiMalloc;
