//! The worker process seen from outside: its log lines forwarded into ours, and its end
//! described in words (exit code, or the signal and what it usually means).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};
use std::time::Instant;

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

/// Whose output a forwarder logs (the log target).
#[derive(Clone, Copy)]
pub(super) enum Source {
    Worker,
    Command,
}

/// The longest output line logged and kept: the rest of a longer one is dropped. A child
/// that writes without newlines (a progress bar, a plugin gone wrong) would otherwise grow
/// one line in the daemon's memory until it ran out (1.5 GB made the daemon's peak 3.2 GB).
pub(super) const LINE_MAX_BYTES: usize = 4096;

/// How many output lines a run logs at once, and then each second: past that, lines are
/// counted and kept for the tail but not logged, and their count is logged when logging
/// resumes. A child printing in a loop would otherwise fill the daemon's log and its disk.
const LOG_BURST: f64 = 1000.0;
const LOG_PER_SECOND: f64 = 100.0;

/// A token bucket over output lines ([`LOG_BURST`], [`LOG_PER_SECOND`]).
struct LogBudget {
    tokens: f64,
    last: Instant,
    /// Lines not logged since the last one that was.
    dropped: u64,
}

impl LogBudget {
    fn new(now: Instant) -> LogBudget {
        LogBudget { tokens: LOG_BURST, last: now, dropped: 0 }
    }

    /// For a line at `now`: None if it is not logged; else the count of lines not logged
    /// before it, to say so first.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * LOG_PER_SECOND;
        self.tokens = (self.tokens + refill).min(LOG_BURST);
        self.last = now;
        if self.tokens < 1.0 {
            self.dropped += 1;
            return None;
        }
        self.tokens -= 1.0;
        Some(std::mem::take(&mut self.dropped))
    }
}

/// A thread forwarding a child's output into our log, line by line, keeping the last ones.
pub(super) struct Forwarded {
    tail: Arc<Mutex<VecDeque<String>>>,
    ended: std::sync::mpsc::Receiver<()>,
}

impl Forwarded {
    /// The last lines, once the output has ended or `wait` has passed: a process the child
    /// started outside its group can hold the pipe open, and the run does not wait for it.
    pub(super) fn tail(&self, wait: std::time::Duration) -> Vec<String> {
        if self.ended.recv_timeout(wait) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            tracing::warn!(
                "a run's output is still open after its process ended (a process it started outside its group?): not waiting for it"
            );
        }
        self.tail.lock().expect("tail").iter().cloned().collect()
    }
}

/// Forwards `stream`'s lines into our log (under the run's span fields, target `worker` or
/// `command`), as bytes (any encoding: shown lossily) cut at [`LINE_MAX_BYTES`], and keeps
/// the last `keep` to explain how the run ended.
pub(super) fn forward(
    stream: impl Read + Send + 'static,
    source: Source,
    job: &str,
    run_id: u64,
    keep: usize,
) -> Forwarded {
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(keep)));
    let (done, ended) = std::sync::mpsc::channel();
    let (job, kept) = (job.to_string(), Arc::clone(&tail));
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let (mut bytes, mut budget) = (Vec::new(), LogBudget::new(Instant::now()));
        let log = |line: &str| match source {
            Source::Worker => tracing::info!(target: "worker", job = %job, run_id, "{line}"),
            Source::Command => tracing::info!(target: "command", job = %job, run_id, "{line}"),
        };
        while let Ok(Some(line)) = next_line(&mut reader, &mut bytes) {
            match budget.admit(Instant::now()) {
                Some(0) => log(&line),
                Some(dropped) => {
                    log(&not_logged(dropped));
                    log(&line);
                }
                None => {}
            }
            let mut t = kept.lock().expect("tail");
            if t.len() == keep {
                t.pop_front();
            }
            t.push_back(line);
        }
        if budget.dropped > 0 {
            log(&not_logged(budget.dropped));
        }
        let _ = done.send(());
    });
    Forwarded { tail, ended }
}

fn not_logged(lines: u64) -> String {
    format!("({lines} lines of output not logged: over {LOG_BURST} at once or {LOG_PER_SECOND} a second)")
}

/// The next line of `reader`, without its line end, at most [`LINE_MAX_BYTES`] of it (the
/// rest is read and dropped); None at the end.
fn next_line(reader: &mut impl BufRead, bytes: &mut Vec<u8>) -> std::io::Result<Option<String>> {
    bytes.clear();
    let n = reader.by_ref().take(LINE_MAX_BYTES as u64).read_until(b'\n', bytes)?;
    if n == 0 {
        return Ok(None);
    }
    let cut = bytes.last() != Some(&b'\n') && n == LINE_MAX_BYTES;
    if cut {
        skip_to_line_end(reader)?;
        drop_split_char(bytes);
    }
    let text = String::from_utf8_lossy(bytes);
    let line = text.trim_end_matches(['\n', '\r']);
    Ok(Some(if cut { format!("{line}… (cut at {LINE_MAX_BYTES} bytes)") } else { line.to_string() }))
}

/// Drops the end of `bytes` if it is a UTF-8 character the cut split, which would
/// otherwise show as U+FFFD. Output in another encoding (not UTF-8 before the end) is left
/// whole to the lossy view.
fn drop_split_char(bytes: &mut Vec<u8>) {
    let tail = bytes.len().saturating_sub(4);
    if let Some(start) = (tail..bytes.len()).rev().find(|&i| bytes[i] & 0xC0 != 0x80) {
        let split = std::str::from_utf8(&bytes[start..]).is_err_and(|e| e.error_len().is_none());
        if split && std::str::from_utf8(&bytes[..start]).is_ok() {
            bytes.truncate(start);
        }
    }
}

fn skip_to_line_end(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(());
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(at) => {
                reader.consume(at + 1);
                return Ok(());
            }
            None => {
                let len = available.len();
                reader.consume(len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<String> {
        let mut reader = BufReader::new(input);
        let mut bytes = Vec::new();
        std::iter::from_fn(|| next_line(&mut reader, &mut bytes).unwrap()).collect()
    }

    #[test]
    fn output_lines_are_logged_in_a_burst_then_at_a_rate_and_the_rest_counted() {
        let start = Instant::now();
        let mut budget = LogBudget::new(start);
        let logged = (0..1500).filter(|_| budget.admit(start).is_some()).count();
        assert_eq!(logged, 1000, "the burst");
        // Half a second later: 50 more lines, the first saying 500 were not logged.
        let later = start + std::time::Duration::from_millis(500);
        let outcomes: Vec<_> = (0..60).map(|_| budget.admit(later)).collect();
        assert_eq!(outcomes[0], Some(500));
        assert_eq!(outcomes[1..50], [Some(0); 49]);
        assert_eq!(outcomes[50..], [None; 10]);
        // A quiet minute fills the bucket to its burst, no more.
        let quiet = later + std::time::Duration::from_secs(60);
        assert_eq!(budget.admit(quiet), Some(10));
        let logged = (0..2000).filter(|_| budget.admit(quiet).is_some()).count();
        assert_eq!(logged, 999);
        assert_eq!(not_logged(3), "(3 lines of output not logged: over 1000 at once or 100 a second)");
    }

    #[test]
    fn a_long_line_is_cut_without_splitting_a_character() {
        let cut = format!("… (cut at {LINE_MAX_BYTES} bytes)");
        // "é" is 2 bytes and "€" 3: the cut at 4096 bytes falls inside each.
        for (pad, ch) in [(LINE_MAX_BYTES - 1, "é"), (LINE_MAX_BYTES - 2, "€"), (LINE_MAX_BYTES - 1, "€")] {
            let line = "a".repeat(pad) + ch + "rest";
            let got = lines(format!("{line}\nnext\n").as_bytes());
            assert_eq!(got, vec!["a".repeat(pad) + &cut, "next".to_string()], "{ch} after {pad} bytes");
        }
        // A character that ends exactly at the cut is kept; a line in another encoding (here
        // Latin-1, whose é could start a UTF-8 character) is shown lossily, whole.
        let line = "a".repeat(LINE_MAX_BYTES - 2) + "é" + "rest";
        assert_eq!(lines(line.as_bytes()), vec!["a".repeat(LINE_MAX_BYTES - 2) + "é" + &cut]);
        let latin1 = vec![0xE9u8; LINE_MAX_BYTES + 10];
        assert_eq!(lines(&latin1), vec!["\u{FFFD}".repeat(LINE_MAX_BYTES) + &cut]);
    }
}
