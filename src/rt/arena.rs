//! Raising a thread's malloc heap once, so it can grow later without a system call per page.
//!
//! glibc gives each new thread its own arena, and an arena's heap grows in place by exactly what
//! an allocation needs, making the new pages writable with one `mprotect` (a VMA split and
//! merge) whenever the heap passes its high-water mark. The control thread's memory grows by a
//! couple of KiB per joining agent, so a join paid an `mprotect` about every other time (about a
//! tenth of its CPU). Memory freed back to the heap's top is returned with `madvise` and keeps
//! the mark; so allocating and freeing this much once, at the thread's start, leaves the pages
//! unbacked (no resident memory) but writable, and later growth below the mark costs only page
//! faults. Elsewhere this is a short-lived allocation and nothing else: under another allocator,
//! on the main arena (`MALLOC_ARENA_MAX=1`, or arenas shared once threads outnumber them), and
//! with `vm.overcommit_memory=2` (glibc then unmaps what it trims, mark included).
//!
//! Must not: keep the memory, or be called on a hot path.

/// Below glibc's smallest mmap threshold (128 KiB), so every block comes from the arena's heap.
const BLOCK_BYTES: usize = 96 * 1024;

/// Allocates about `bytes` in blocks on the calling thread, then frees them all.
pub fn raise_heap_mark(bytes: usize) {
    let blocks: Vec<Vec<u8>> = (0..bytes.div_ceil(BLOCK_BYTES))
        .map(|_| Vec::with_capacity(BLOCK_BYTES))
        .collect();
    // Keeps the allocations from being optimised away as unused.
    let blocks = std::hint::black_box(blocks);
    // Newest first, so each free merges into the heap's top and the top is trimmed as it grows.
    for block in blocks.into_iter().rev() {
        drop(std::hint::black_box(block));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_the_mark_keeps_no_memory() {
        let rss_kib = || -> u64 {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0)
        };
        std::thread::spawn(move || {
            let before = rss_kib();
            raise_heap_mark(32 << 20);
            let after = rss_kib();
            // Other tests' threads run meanwhile: allow them some growth, far below 32 MiB.
            assert!(after < before + 8 * 1024, "RSS {before} KiB -> {after} KiB");
        })
        .join()
        .unwrap();
    }
}
