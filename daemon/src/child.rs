//! The daemon's child processes (a run's worker or command, a plugin probe): each leads a
//! process group of its own, ended as a whole; waited for without being reaped, so that
//! the group's id stays taken while it is killed; its output read with a deadline; and,
//! in the child, its end tied to the daemon's.

use std::io::Read;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

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

/// Writes `bytes` to a child's stdin on a thread of its own, and returns the pipe's end to
/// keep (closing it is how a run's worker is asked to stop). A child that does not read
/// cannot hold the caller before its deadline is watched: input larger than the pipe's
/// buffer waits in that thread, until the child reads it or is killed. The thread's copy
/// of the pipe closes once it is done.
pub fn write_beside(stdin: std::process::ChildStdin, bytes: Vec<u8>) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::io::Write;
    let kept = std::os::fd::OwnedFd::from(stdin);
    let mut writer = std::fs::File::from(kept.try_clone()?);
    std::thread::Builder::new().name("child-stdin".into()).spawn(move || {
        let _ = writer.write_all(&bytes);
    })?;
    Ok(kept)
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

/// A child's output pipe, read so that a process the child started outside its process
/// group cannot hold the reader once the child has ended: a fork that never exec'd (so
/// close-on-exec did not close the pipe) in a group or session of its own, which the kill
/// of the child's group misses. `grace` after the child's end, a read that would still
/// wait fails instead.
pub struct GroupOutput<R> {
    pipe: R,
    pid: u32,
    /// The child, in words ("the worker").
    what: &'static str,
    grace: Duration,
    ended: Option<Instant>,
}

impl<R> GroupOutput<R> {
    /// The output `pipe` of the child `pid` (not reaped while it is read).
    pub fn new(pipe: R, pid: u32, what: &'static str, grace: Duration) -> GroupOutput<R> {
        GroupOutput { pipe, pid, what, grace, ended: None }
    }
}

impl<R: Read + AsFd> Read for GroupOutput<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        // How long one wait for data lasts before the child is looked at again.
        const LOOK: Timespec = Timespec { tv_sec: 0, tv_nsec: 200_000_000 };
        loop {
            let mut fds = [PollFd::new(&self.pipe, PollFlags::IN)];
            match poll(&mut fds, Some(&LOOK)) {
                // Data, the end of the stream (all writers gone) or an error: read says.
                Ok(1..) => return self.pipe.read(buf),
                Ok(0) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            if has_ended(self.pid, false) {
                let ended = *self.ended.get_or_insert_with(Instant::now);
                if ended.elapsed() >= self.grace {
                    return Err(std::io::Error::other(format!(
                        "{} ended, but a process it started outside its process group still held its output open {}s later",
                        self.what,
                        self.grace.as_secs_f32()
                    )));
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Input larger than a pipe's buffer, to a child that never reads it, does not hold the
    /// caller; the kept end is the child's only stdin once the input is written (closing it
    /// ends a reader's input).
    #[test]
    fn input_written_beside_holds_neither_the_caller_nor_the_child_s_stdin() {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let mut sleeper =
            Command::new("sleep").arg("30").process_group(0).stdin(Stdio::piped()).spawn().expect("sleep starts");
        let started = Instant::now();
        let kept = write_beside(sleeper.stdin.take().unwrap(), vec![b'x'; 4 << 20]).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5), "the caller waited for a child that does not read");
        kill_group(sleeper.id());
        sleeper.wait().unwrap();
        drop(kept);

        let mut cat = Command::new("cat").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("cat starts");
        let output = read_last(cat.stdout.take().unwrap(), 1 << 20);
        let kept = write_beside(cat.stdin.take().unwrap(), b"spec line\n".to_vec()).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        assert!(!has_ended(cat.id(), false), "cat's input ended while its kept end was open");
        drop(kept);
        assert_eq!(output.recv_timeout(Duration::from_secs(10)).unwrap(), b"spec line\n");
        assert!(cat.wait().unwrap().success());
    }

    /// A child whose output is held open by a process it started in a session of its own
    /// (which the kill of its group misses) ends the read a grace after the child's end,
    /// with what it wrote before; a child whose output closes with it ends it at once.
    #[test]
    fn a_child_s_output_held_open_by_a_process_outside_its_group_ends_the_read_after_a_grace() {
        let read_all = |script: &str| {
            let mut child = std::process::Command::new("sh")
                .args(["-c", script])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let pipe = child.stdout.take().unwrap();
            let mut output = GroupOutput::new(pipe, child.id(), "sh", Duration::from_millis(300));
            let started = Instant::now();
            let mut got = Vec::new();
            let outcome = output.read_to_end(&mut got);
            let took = started.elapsed();
            child.wait().unwrap();
            (String::from_utf8(got).unwrap(), outcome, took)
        };
        let (got, outcome, took) = read_all("echo hi");
        assert_eq!((got.as_str(), outcome.unwrap()), ("hi\n", 3));
        assert!(took < Duration::from_secs(5), "{took:?}");
        let (got, outcome, took) = read_all("setsid sleep 20 & echo hi");
        assert_eq!(got, "hi\n");
        let error = outcome.unwrap_err().to_string();
        assert!(error.contains("outside its process group still held its output open"), "{error}");
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(10), "{took:?}");
    }
}
