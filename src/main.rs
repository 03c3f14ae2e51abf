//! The `multimix` command-line program.

mod cli;

/// Keep freed memory in the process: candle allocates a fresh buffer for every op, and glibc's
/// defaults return large blocks to the OS after each free, so every step page-faults its
/// working set back in. Equivalent to
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=…`.
fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// candle runs its own elementwise ops on a spinning "barrier pool" of `CANDLE_NUM_THREADS − 1`
/// workers besides rayon's (which gemm and the fused ops use); with the heavy work in gemm and
/// the fused ops, those extra spinning threads only compete with rayon's for the cores (a default
/// ViT training step took ≈2× the CPU time with them on a loaded 2-core machine). Default to 1
/// unless the user set it. Called before any other thread exists.
fn default_candle_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    default_candle_threads();
    match cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", cli::one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
