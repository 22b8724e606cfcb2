//! How the daemon stops a run: [`RunControl`] carries a cancel request, the run's
//! progress and lineage, and the watchdog that enforces the job's timeout.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::RunError;
use crate::store::{InputLineage, PluginBuild};

/// How long a worker asked to stop (its stdin closed, which plugins see through the
/// cancellation callback) gets before it is killed.
pub const CANCEL_GRACE: Duration = Duration::from_secs(3);

/// Lets the daemon stop a run: `cancel` asks, the watchdog enforces.
pub struct RunControl {
    state: Mutex<Control>,
    changed: Condvar,
    /// When the run took its slot: `timeout_seconds` counts from here, so the work before
    /// the worker starts (the plugin's snapshot, `table:` inputs exported) counts too.
    began: Instant,
}

#[derive(Default)]
struct Control {
    stop: Option<RunError>,
    done: bool,
    /// Latest progress the plugin reported, in its own units.
    progress: Option<(u64, u64)>,
    /// Last tenth of the way logged, so progress reaches the logs without flooding them.
    logged_tenth: u64,
    /// The plugin build the run loaded, as far as known yet.
    plugin: Option<PluginBuild>,
    model_sha256: Option<String>,
    /// Registry model versions the run pinned, `<name>@<version>`.
    models: Vec<String>,
    /// A command's last lines of output.
    output: Option<String>,
    /// The run's inputs and params hash, once known.
    inputs: Vec<InputLineage>,
    params_sha256: Option<String>,
}

impl RunControl {
    pub fn new() -> Arc<RunControl> {
        Arc::new(RunControl { state: Mutex::default(), changed: Condvar::new(), began: Instant::now() })
    }

    /// Asks the run to stop; the first reason given is the one reported.
    pub fn cancel(&self, reason: &str) {
        let mut st = self.state.lock().expect("control lock");
        if st.stop.is_none() {
            st.stop = Some(RunError::Cancelled(reason.to_string()));
        }
        self.changed.notify_all();
    }

    /// Records progress; logs it at each further tenth of the way.
    pub(super) fn set_progress(&self, done: u64, total: u64) {
        let mut st = self.state.lock().expect("control lock");
        st.progress = Some((done, total));
        // At most 10: a plugin may report more done than its total.
        let tenth = (done.saturating_mul(10)).checked_div(total).unwrap_or(0).min(10);
        if tenth > st.logged_tenth {
            st.logged_tenth = tenth;
            tracing::info!(done, total, "progress {}%", tenth * 10);
        }
    }

    /// (done, total) as the plugin last reported it.
    pub fn progress(&self) -> Option<(u64, u64)> {
        self.state.lock().expect("control lock").progress
    }

    /// The plugin build and the model (its SHA-256) the run used, as far as known: the
    /// plugin's hash from the moment it is snapshotted, its name, version and the model's
    /// hash once the worker reports them.
    pub fn lineage(&self) -> (Option<PluginBuild>, Option<String>) {
        let st = self.state.lock().expect("control lock");
        (st.plugin.clone(), st.model_sha256.clone())
    }

    /// The registry model versions (`<name>@<version>`) and the command output the run
    /// recorded, as far as it got.
    pub fn models_and_output(&self) -> (Vec<String>, Option<String>) {
        let st = self.state.lock().expect("control lock");
        (st.models.clone(), st.output.clone())
    }

    /// The run's inputs (files, hashes, rows, table versions) and its params' hash.
    pub fn inputs(&self) -> (Vec<InputLineage>, Option<String>) {
        let st = self.state.lock().expect("control lock");
        (st.inputs.clone(), st.params_sha256.clone())
    }

    pub(super) fn set_inputs(&self, inputs: Vec<InputLineage>, params_sha256: String) {
        let mut st = self.state.lock().expect("control lock");
        st.inputs = inputs;
        st.params_sha256 = Some(params_sha256);
    }

    pub(super) fn set_models(&self, models: Vec<String>) {
        self.state.lock().expect("control lock").models = models;
    }

    pub(super) fn set_output(&self, output: String) {
        self.state.lock().expect("control lock").output = Some(output);
    }

    pub(super) fn set_plugin(&self, build: PluginBuild) {
        self.state.lock().expect("control lock").plugin = Some(build);
    }

    pub(super) fn set_reported(&self, plugin: &crate::wire::PluginDesc, model_sha256: Option<String>) {
        let mut st = self.state.lock().expect("control lock");
        if let Some(build) = st.plugin.as_mut() {
            build.name = Some(plugin.name.clone());
            build.version = Some(plugin.version.clone());
        }
        st.model_sha256 = model_sha256;
    }

    pub(super) fn finish(&self) {
        self.state.lock().expect("control lock").done = true;
        self.changed.notify_all();
    }

    pub(super) fn stop_reason(&self) -> Option<RunError> {
        self.state.lock().expect("control lock").stop.clone()
    }

    /// Waits for the run to end, a cancel or the timeout. When stopped: closes the worker's
    /// stdin to ask it to stop, waits `CANCEL_GRACE`, then kills it.
    /// Watches a worker, the leader of its own process group: stopped, it is asked through
    /// its stdin, then its whole group is killed.
    pub(super) fn watch(&self, timeout: Duration, stdin: std::os::fd::OwnedFd, worker_pid: u32) {
        self.watch_with(timeout, move || drop(stdin), || crate::child::kill_group(worker_pid));
    }

    /// Waits for the run to end, a cancel or the timeout. When stopped: `ask`s the process
    /// to stop, waits `CANCEL_GRACE`, then `force`s it.
    pub(super) fn watch_with(&self, timeout: Duration, ask: impl FnOnce(), force: impl FnOnce()) {
        if !self.wait_for_stop(timeout) {
            return;
        }
        ask();
        let grace_end = Instant::now() + CANCEL_GRACE;
        let mut st = self.state.lock().expect("control lock");
        while !st.done {
            let left = grace_end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = self.changed.wait_timeout(st, left).expect("control lock").0;
        }
        if !st.done {
            tracing::warn!("the run did not stop within {}s of being asked: killing it", CANCEL_GRACE.as_secs());
            drop(st);
            force();
        }
    }

    /// Waits for the outcome of work done beside the run's process (its inputs' hashes),
    /// within the run's `timeout` (past it, a timeout is recorded as the stop reason) and
    /// until a cancel. None when the run is stopped first, or the work ended without one.
    pub(super) fn wait_beside<T>(&self, timeout: Duration, work: &std::sync::mpsc::Receiver<T>) -> Option<T> {
        use std::sync::mpsc::RecvTimeoutError;
        // How often a cancel is looked for meanwhile.
        const LOOK: Duration = Duration::from_millis(100);
        let deadline = self.began.checked_add(timeout);
        loop {
            if self.stop_reason().is_some() {
                return work.try_recv().ok();
            }
            let left = deadline.map_or(LOOK, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                if let Ok(outcome) = work.try_recv() {
                    return Some(outcome);
                }
                let mut st = self.state.lock().expect("control lock");
                st.stop.get_or_insert(RunError::TimedOutHashing(timeout.as_secs()));
                return None;
            }
            match work.recv_timeout(left.min(LOOK)) {
                Ok(outcome) => return Some(outcome),
                Err(RecvTimeoutError::Disconnected) => return None,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Waits until the run ends by itself (false) or must be stopped (true): a cancel, or
    /// `timeout` past since the run began (then recorded as the stop reason). Any timeout
    /// is safe: one too far away for a deadline to be computed is never reached.
    pub(super) fn wait_for_stop(&self, timeout: Duration) -> bool {
        let deadline = self.began.checked_add(timeout);
        let mut st = self.state.lock().expect("control lock");
        while !st.done && st.stop.is_none() {
            let left = match deadline {
                Some(deadline) => deadline.saturating_duration_since(Instant::now()),
                None => Duration::from_secs(86_400),
            };
            if deadline.is_some() && left.is_zero() {
                st.stop = Some(RunError::TimedOut(timeout.as_secs()));
                break;
            }
            st = self.changed.wait_timeout(st, left).expect("control lock").0;
        }
        !st.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever the timeout (a validated job's is at most a week, but nothing here
        /// relies on it), the watchdog computes no overflowing deadline: a run that ended
        /// is left alone, a cancelled one is stopped.
        #[test]
        fn the_watchdog_takes_any_timeout(secs in proptest::prelude::any::<u64>(), nanos in 0u32..1_000_000_000) {
            let timeout = Duration::new(secs, nanos);
            let ended = RunControl::new();
            ended.finish();
            proptest::prop_assert!(!ended.wait_for_stop(timeout));
            let cancelled = RunControl::new();
            cancelled.cancel("test");
            proptest::prop_assert!(cancelled.wait_for_stop(timeout));
        }
    }

    #[test]
    fn a_run_past_its_timeout_is_stopped_as_timed_out() {
        let control = RunControl::new();
        assert!(control.wait_for_stop(Duration::from_millis(20)));
        assert_eq!(control.stop_reason().map(|e| e.status()), Some("timeout"));
    }

    /// The timeout counts from the run's start, not from the watchdog's: work done before
    /// the worker started (a large `table:` input exported) is part of it.
    #[test]
    fn the_timeout_counts_from_the_runs_start() {
        let control = RunControl::new();
        std::thread::sleep(Duration::from_millis(300));
        let watching = Instant::now();
        assert!(control.wait_for_stop(Duration::from_millis(400)));
        // 100 ms left of the 400; counted from the watch, it would wait all 400.
        assert!(watching.elapsed() < Duration::from_millis(380), "waited {:?}", watching.elapsed());
        assert_eq!(control.stop_reason().map(|e| e.status()), Some("timeout"));
    }

    /// Work beside the worker (its inputs' hashes) is waited for within the run's timeout,
    /// and not past a cancel: a read hung on a file system cannot hold the run for ever.
    #[test]
    fn work_beside_the_worker_is_waited_for_within_the_timeout() {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let control = RunControl::new();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            tx.send(7).unwrap();
        });
        assert_eq!(control.wait_beside(Duration::from_secs(30), &rx), Some(7), "done in time");
        sender.join().unwrap();
        assert!(control.stop_reason().is_none());

        let (_hung, rx) = std::sync::mpsc::sync_channel::<u32>(1);
        let waiting = Instant::now();
        let control = RunControl::new();
        assert_eq!(control.wait_beside(Duration::from_millis(300), &rx), None);
        assert!(waiting.elapsed() >= Duration::from_millis(300), "gave up after {:?}", waiting.elapsed());
        let stop = control.stop_reason().expect("stopped");
        assert_eq!(stop.status(), "timeout");
        assert!(stop.to_string().contains("hashing the run's input files"), "{stop}");

        // A cancel while it waits ends the wait.
        let control = RunControl::new();
        let canceller = {
            let control = Arc::clone(&control);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(150));
                control.cancel("test");
            })
        };
        let waiting = Instant::now();
        assert_eq!(control.wait_beside(Duration::from_secs(30), &rx), None);
        assert!(waiting.elapsed() < Duration::from_secs(5), "a cancelled run waited {:?}", waiting.elapsed());
        canceller.join().unwrap();
        assert_eq!(control.stop_reason().map(|e| e.status()), Some("cancelled"));
    }
}
