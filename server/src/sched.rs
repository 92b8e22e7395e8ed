//! How the kernel schedules the I/O threads beside the model instances
//! (`--io-scheduling`). With the default, `batch`, the I/O threads run under
//! SCHED_BATCH: a woken I/O thread does not preempt a model instance that is
//! running on the same core, so replies and new requests are handled in
//! bursts rather than with a switch each. Measured on 2 cores, server on one
//! (`python3 bench/overhead.py --before <normal> --duration 4s --rounds 2`):
//! unbatched `mlp` at c=64, context switches per request 6.5 → 2.0 (HTTP and
//! gRPC), batched 0.16 → 0.07; c=1 latency unchanged. Model instances keep
//! the normal policy. The second module allowed `unsafe` (one libc call).

/// The kernel scheduling policy of the I/O threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum IoScheduling {
    /// The default policy (SCHED_OTHER): every wake-up may preempt.
    Normal,
    /// SCHED_BATCH: wake-ups do not preempt a running model.
    Batch,
}

impl IoScheduling {
    /// Applies the policy to the calling thread (Linux; elsewhere nothing).
    pub fn apply_to_this_thread(self) {
        #[cfg(target_os = "linux")]
        if self == IoScheduling::Batch {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: pid 0 names the calling thread; `param` outlives the call.
            #[allow(unsafe_code)]
            let failed = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0;
            if failed {
                eprintln!(
                    "switchyard: SCHED_BATCH refused for an I/O thread ({}); it runs with the normal policy",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}
