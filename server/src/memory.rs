//! glibc allocator settings, so memory freed when a model version retires goes
//! back to the operating system without making every inference pay for it.
//!
//! Left alone, glibc raises its mmap threshold after the first large free,
//! later model-sized allocations come from the heap, and RSS grows with every
//! hot swap (measured: +89% after 30 swaps of a 20 MiB model). Fixing the
//! thresholds stops that adjustment; `release_free_memory` then trims the heap
//! when a version retires.
//!
//! The values trade swap memory against per-inference speed (measured with
//! `bench/swap.py --swaps 100` and `switchyard bench-runtime --model-repository
//! models/torch --model resnet18 --batch 1,8`, CPU, one thread):
//!
//! | mmap / trim threshold | RSS after 100 swaps | resnet18 b1 / b8 images/s |
//! |---|---:|---:|
//! | 1 MiB / 128 KiB (glibc's trim default) | +1.6% | 13 / 15 |
//! | 8 MiB / 16 MiB (chosen) | +7.6% | 22 / 20 |
//! | 32 MiB / 64 MiB | +35% | 22 / 23 |
//!
//! Too low, and every CNN activation is a fresh mapping, page-faulted in and
//! unmapped again. Operators may set their own through glibc's environment
//! (`GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...`, `MALLOC_*_THRESHOLD_`),
//! which is then left alone. One of the two modules allowed `unsafe` (libc
//! calls; `sched` is the other).

/// Allocations at least this large always get their own mapping (and are
/// unmapped on free), so model weights go back to the system on retire while
/// activations and batch buffers below it are reused from the heap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 8 << 20;

/// Call once at start-up, before ONNX Runtime is loaded. An operator who
/// tunes glibc's allocator through its own environment variables keeps
/// those settings.
pub fn tune_allocator() {
    let tuned_by_operator = std::env::vars_os().any(|(name, value)| {
        let name = name.to_string_lossy();
        name.starts_with("MALLOC_") && name.ends_with("_THRESHOLD_")
            || name == "GLIBC_TUNABLES" && value.to_string_lossy().contains("malloc")
    });
    if tuned_by_operator {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads exist.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        // Twice the mmap threshold, as glibc's dynamic rule would set it: the
        // top of the heap is not handed back and faulted in again per request.
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD);
    }
}

/// Returns freed heap memory to the OS (after a model version is dropped).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free pages.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}
