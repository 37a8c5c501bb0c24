//! Handing freed heap memory back to the operating system after a load peak.
//!
//! A burst of calls leaves tens of thousands of completed transactions lingering for
//! their RFC 3261 timers (64*T1 = 32 s on UDP). Once they expired the core's tables are
//! empty, but glibc keeps the freed blocks in its arenas: the process's RSS would stay
//! at the peak. glibc's `malloc_trim(0)` returns every free page of every arena. The
//! driver calls [`release_free_memory`] only when [`crate::UserAgentCore::take_drained`]
//! says a peak of at least 1,000 records just ended, so it runs at most once per load
//! peak; after 10,000 calls it took 1.2-1.5 ms (it holds each arena's lock meanwhile).
//!
//! What `malloc_trim` cannot release: the blocks glibc keeps in a thread's own cache
//! (tcache: up to 7 freed blocks per size class, never handed back while the thread
//! lives), and the top of a thread's (non-main) arena, which it merges free blocks into
//! but never shrinks. After a burst the cached blocks are the last ones the burst
//! freed, scattered over the arena, each pinning its page: 0.76-1.2 MB above the RSS
//! after 100 calls when the driver loop ran on one long-lived thread. So the driver
//! runs its loop on a worker thread that ends when a peak drained (its exit returns its
//! cache to the arena, and the next worker takes the same arena over from glibc's free
//! list), makes glibc shrink the worker's arena top ([`trim_thread_arena`], before the
//! exit and in the next worker) and trims after joining it: +12 to +328 KiB after
//! 10,000 calls at 1,000/s (see `driver.rs`).

/// Size of the block [`trim_thread_arena`] frees: glibc's `FASTBIN_CONSOLIDATION_THRESHOLD`.
const ARENA_TRIM_BLOCK: usize = 64 * 1024;

/// Makes glibc consolidate and trim the calling thread's arena: freeing a block of at
/// least 64 KiB (above the per-thread cache and fast-bin sizes, below the `mmap`
/// threshold, so it comes from the arena) makes glibc merge the arena's fast-bin
/// blocks and shrink the arena's top to its trim threshold. `malloc_trim` merges them
/// too but never shrinks the top of a thread's (non-main) arena: after a burst whose
/// last frees were small blocks (keys, timer nodes) the merged top stayed resident,
/// 3.5 MB in the load test with the per-thread cache off. Elsewhere: one allocation.
pub(crate) fn trim_thread_arena() {
    drop(std::hint::black_box(Vec::<u8>::with_capacity(ARENA_TRIM_BLOCK)));
}

/// [`release_free_memory`], logged with how long it took (called once a load peak drained).
pub(crate) fn release_after_peak() {
    let started = std::time::Instant::now();
    let released = release_free_memory();
    tracing::debug!(released, took = ?started.elapsed(), "load peak over: free heap returned to the system");
}

/// Returns the allocator's free pages to the system; true when memory was released.
/// A no-op (false) where the C library is not glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // one FFI call into glibc, nothing else in this crate is unsafe
pub(crate) fn release_free_memory() -> bool {
    unsafe extern "C" {
        /// glibc: returns free heap memory (every arena) to the system.
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: malloc_trim takes no pointer and has no precondition; it walks glibc's own
    // arenas, each under its lock, and may be called from any thread at any time.
    unsafe { malloc_trim(0) != 0 }
}

/// Returns the allocator's free pages to the system; true when memory was released.
/// A no-op (false) where the C library is not glibc.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn release_free_memory() -> bool {
    false
}
