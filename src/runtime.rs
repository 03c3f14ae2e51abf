//! Process settings of the `multimix` program, shared with the benches so they time what the
//! program runs. Call [`configure`] first thing in `main`, before any other thread exists.

/// Keep freed memory in the process: candle allocates a fresh buffer for every op, and glibc's
/// defaults give every block above the mmap threshold (at most 32 MiB) its own mapping, returned
/// to the OS on free, so every step page-faults and zeroes its large buffers again (a ViT-Tiny
/// FGSM batch of 250 spent a sixth of its time in the kernel's page clearing). With no mmap'd
/// blocks and no trimming, freed memory stays in the heap for the next op; glibc still maps
/// memory when the heap cannot grow. Equivalent to
/// `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647`.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; `configure` runs before other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// candle runs its own elementwise ops on a spinning "barrier pool" of `CANDLE_NUM_THREADS − 1`
/// workers besides rayon's (which gemm and the fused ops use); with the heavy work in gemm and
/// the fused ops, those extra spinning threads only compete with rayon's for the cores (a default
/// ViT training step took ≈2× the CPU time with them on a loaded 2-core machine). Default to 1
/// unless the user set it.
fn default_candle_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Apply the program's allocator settings and candle thread default. Call once at the start of
/// `main`, before any other thread exists (it sets an environment variable).
pub fn configure() {
    tune_allocator();
    default_candle_threads();
}
