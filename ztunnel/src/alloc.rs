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

// The one place in the workspace with unsafe code: a global allocator is an unsafe trait, and
// the adapter below only forwards to mimalloc's C entry points.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{mi_free, mi_malloc, mi_realloc, mi_zalloc};

/// The global allocator of the `ztunnel` and `waypoint` binaries: mimalloc, called through its
/// plain entry points whenever the alignment asked for is one every mimalloc block has.
///
/// Rust passes an alignment with every allocation. Sent through mimalloc's aligned entry points
/// (as `mimalloc::MiMalloc` does for all of them), an allocation above 1 KiB whose size class is
/// not a power of two takes the over-allocating path, although its alignment (8 for byte
/// buffers, headers and most futures) is met by every block: a detour of a few hundred
/// instructions, and a block bigger than needed, for the body buffers, boxed request futures
/// and codec buffers that the request path allocates a dozen times per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Allocator;

/// The value to install with `#[global_allocator]`.
pub const ALLOCATOR: Allocator = Allocator;

/// The alignment of every block mimalloc hands out: its size classes are multiples of a word.
const WORD: usize = std::mem::size_of::<usize>();

/// Whether mimalloc's plain entry points meet `align`.
fn plain(align: usize) -> bool {
    align <= WORD
}

// SAFETY: every path hands the request to mimalloc, which returns either null or a block of at
// least `size` bytes aligned to at least `align`: the plain calls only when `align` is at most
// a word (every mimalloc block is word-aligned), the aligned ones otherwise. A block is always
// freed or resized by the same allocator, and resizing keeps the alignment: `realloc` is given
// the layout the block was allocated with, so it takes the same path as `alloc` did.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align()) {
            // SAFETY: mi_malloc accepts any size; the caller guarantees a non-zero one.
            unsafe { mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: same contract as this function.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.align()) {
            // SAFETY: as in `alloc`.
            unsafe { mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: same contract as this function.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator; mi_free takes blocks of either path.
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(layout.align()) {
            // SAFETY: `ptr` is a live block of this allocator; a word alignment survives any
            // resize.
            unsafe { mi_realloc(ptr.cast::<c_void>(), new_size).cast() }
        } else {
            // SAFETY: same contract as this function.
            unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::ALLOCATOR;

    /// Sizes around mimalloc's size-class edges (small, 1 KiB, powers of two, above 4 KiB) and
    /// alignments from a byte to a page, with and without the plain path.
    #[test]
    fn blocks_meet_size_and_alignment() {
        let sizes = [
            1, 7, 8, 24, 100, 1023, 1024, 1025, 1500, 4096, 4500, 8192, 70_000,
        ];
        let aligns = [1, 2, 4, 8, 16, 32, 64, 128, 4096];
        for &size in &sizes {
            for &align in &aligns {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero size; the block is written within its size and freed with
                // its layout.
                unsafe {
                    let p = ALLOCATOR.alloc(layout);
                    assert!(!p.is_null(), "{size}/{align}");
                    assert_eq!(p as usize % align, 0, "alloc {size}/{align}");
                    p.write_bytes(0xa5, size);
                    ALLOCATOR.dealloc(p, layout);

                    let z = ALLOCATOR.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0, "alloc_zeroed {size}/{align}");
                    let block = std::slice::from_raw_parts(z, size);
                    assert!(block.iter().all(|&b| b == 0), "zeroed {size}/{align}");
                    ALLOCATOR.dealloc(z, layout);
                }
            }
        }
    }

    /// Growing and shrinking keeps the bytes and the alignment.
    #[test]
    fn realloc_keeps_contents_and_alignment() {
        for &align in &[1, 8, 16, 64, 128] {
            let layout = Layout::from_size_align(100, align).unwrap();
            // SAFETY: each block is used within its current size and freed with its layout.
            unsafe {
                let p = ALLOCATOR.alloc(layout);
                for i in 0..100 {
                    p.add(i).write(i as u8);
                }
                let grown = ALLOCATOR.realloc(p, layout, 5000);
                assert_eq!(grown as usize % align, 0, "grown {align}");
                for i in 0..100 {
                    assert_eq!(
                        grown.add(i).read(),
                        i as u8,
                        "grown byte {i}, align {align}"
                    );
                }
                let big = Layout::from_size_align(5000, align).unwrap();
                let shrunk = ALLOCATOR.realloc(grown, big, 50);
                assert_eq!(shrunk as usize % align, 0, "shrunk {align}");
                for i in 0..50 {
                    assert_eq!(
                        shrunk.add(i).read(),
                        i as u8,
                        "shrunk byte {i}, align {align}"
                    );
                }
                ALLOCATOR.dealloc(shrunk, Layout::from_size_align(50, align).unwrap());
            }
        }
    }
}
