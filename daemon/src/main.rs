//! `recd`: the daemon (`serve`), its per-run child (`worker`) and the ops CLI (see `lib.rs`).

/// jemalloc, not glibc's malloc: the store's writes (sled copies a B-tree node on each
/// insert) are mostly allocation, and under glibc the daemon's CPU per run grew with each
/// run of a long-lived daemon (fragmented arenas). Measured side by side: docs/internals.md,
/// "Memory allocator".
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    recd::cli::main()
}
