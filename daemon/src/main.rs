//! `recd`: the daemon (`serve`), its per-run child (`worker`) and the ops CLI (see `lib.rs`).

fn main() -> std::process::ExitCode {
    recd::cli::main()
}
