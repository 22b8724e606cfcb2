//! The daemon's child processes (a run's worker or command, a plugin probe): each leads a
//! process group of its own, ended as a whole; waited for without being reaped, so that
//! the group's id stays taken while it is killed; its output read with a deadline; and,
//! in the child, its end tied to the daemon's.

use std::io::Read;

/// Sends SIGKILL to every process of the group `leader` started (a run's worker or command
/// is spawned as a group's leader); a group already gone is no error.
pub fn kill_group(leader: u32) {
    signal_group(leader, rustix::process::Signal::KILL);
}

/// Sends `signal` to every process of the group `leader` started; a group already gone is
/// no error.
pub fn signal_group(leader: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(leader as i32) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Waits until the child `pid` has ended, leaving it to be reaped (`Child::wait`).
pub fn wait_unreaped(pid: u32) {
    while !has_ended(pid, true) {}
}

/// Whether the child `pid` has ended (a zombie, not reaped: its id stays taken until
/// `Child::wait`); with `hang`, first waits until it has.
pub fn has_ended(pid: u32, hang: bool) -> bool {
    use rustix::process::{Pid, WaitIdOptions, waitid};
    let Some(pid) = Pid::from_raw(pid as i32) else { return true };
    let options = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
    let options = if hang { options } else { options | WaitIdOptions::NOHANG };
    match waitid(rustix::process::WaitId::Pid(pid), options) {
        Ok(Some(_)) => true,
        Ok(None) => false,
        Err(rustix::io::Errno::INTR) => false,
        // Not our child (any more): nothing to wait for.
        Err(_) => true,
    }
}

/// Reads `stream` to its end on a thread of its own, keeping its last `keep` bytes; they
/// arrive on the returned channel when it ends. Read from the start, a child's output
/// never fills its pipe and blocks it; waited for with a deadline, a process it started
/// that holds the pipe open cannot hold the caller.
pub fn read_last(stream: impl Read + Send + 'static, keep: usize) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (done, read) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut stream, mut kept, mut chunk) = (stream, Vec::new(), vec![0u8; 8192]);
        while let Ok(n @ 1..) = stream.read(&mut chunk) {
            kept.extend_from_slice(&chunk[..n]);
            if kept.len() > keep {
                kept.drain(..kept.len() - keep);
            }
        }
        let _ = done.send(kept);
    });
    read
}

/// Ends this process with the daemon: a worker or probe whose daemon was killed (SIGKILL,
/// a crash) would otherwise run on, orphaned, a hung plugin forever. The daemon passes
/// its pid ([`PARENT_PID_VAR`]): if it died before the kernel was asked, our parent is
/// another process by now, and we end at once.
pub fn die_with_parent() {
    use rustix::process::{Signal, getppid, set_parent_process_death_signal};
    if set_parent_process_death_signal(Some(Signal::KILL)).is_err() {
        std::process::exit(1);
    }
    let daemon = std::env::var(PARENT_PID_VAR).ok().and_then(|p| p.parse::<i32>().ok());
    if let Some(daemon) = daemon
        && getppid().map(|p| p.as_raw_nonzero().get()) != Some(daemon)
    {
        std::process::exit(1);
    }
}

/// The variable the daemon passes its pid in to the workers and probes it starts.
pub const PARENT_PID_VAR: &str = "RECD_PARENT_PID";
