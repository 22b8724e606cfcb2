//! PLUGINS (admin socket): every plugin file the daemon has checked or run, one line each:
//! the build the file was last seen holding (name, version, ABI, SHA-256, when the path was
//! first seen with that content), the latest run that loaded the path (by run id), with
//! that run's SHA-256 when it ran an older build, and the path.
use std::fmt::Write as _;
use std::sync::Arc;

use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub fn apply(daemon: &Arc<Daemon>, out: &mut Reply) {
    let mut s = String::new();
    for p in daemon.plugins.list() {
        let last_run = match &p.last_run {
            None => "-".to_string(),
            Some(run) if run.sha256 == p.sha256 => run.run_id.to_string(),
            Some(run) => format!("{} (sha256 {})", run.run_id, run.sha256),
        };
        let _ = writeln!(
            s,
            "{} {} abi {} sha256 {} first_seen {} last_run {} {}",
            p.name,
            p.version,
            p.abi,
            p.sha256,
            p.first_seen,
            last_run,
            p.path.display()
        );
    }
    resp::bulk(out, s.as_bytes());
}
