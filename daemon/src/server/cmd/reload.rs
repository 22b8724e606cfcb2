//! RELOAD (admin socket): re-reads the jobs folder; answers OK or the job file errors
//! (the files in error keep their previous definitions).
use std::sync::Arc;

use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub async fn apply(daemon: &Arc<Daemon>, out: &mut Reply) {
    match daemon.reload().await {
        Ok(errors) if errors.is_empty() => resp::simple(out, "OK"),
        Ok(errors) => {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            resp::error(out, &format!("ERR job files rejected (previous definitions kept): {}", text.join("; ")));
        }
        Err(e) => resp::error(out, &format!("ERR reload failed: {e:#}")),
    }
}
