//! The worker process seen from outside: its log lines forwarded into ours, and its end
//! described in words (exit code, or the signal and what it usually means).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};

/// Lines of worker stderr kept to explain a crash.
pub(super) const STDERR_TAIL: usize = 12;

pub(super) fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (_, Some(sig)) => format!("killed by signal {sig}{}", signal_name(sig)),
        (Some(code), _) => format!("exit code {code}"),
        _ => "unknown status".into(),
    }
}

pub(super) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGABRT => " (SIGABRT, the plugin aborted)",
        libc::SIGSEGV => " (SIGSEGV, invalid memory access)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGBUS => " (SIGBUS)",
        _ => "",
    }
}

pub(super) fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() { String::new() } else { format!("; last worker output: {}", tail.join(" | ")) }
}

/// Forwards the worker's log lines into ours (under the run's span fields) and keeps the
/// last few to explain a crash.
pub(super) fn forward_stderr(
    stderr: std::process::ChildStderr,
    job: String,
    run_id: u64,
) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            tracing::info!(target: "worker", job = %job, run_id, "{line}");
            let mut t = tail.lock().expect("tail");
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(line);
        }
        tail.lock().expect("tail").iter().cloned().collect()
    })
}
