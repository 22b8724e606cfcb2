//! VERIFY (admin socket): recomputes every table's current version from its stored rows
//! and checks it against what was published (users, rows, checksum), and that no staging
//! data is left. `+OK ...` when sound, else an error listing each finding.
use std::sync::Arc;

use crate::daemon::Daemon;
use crate::resp::{self, Reply};

/// A full scan of the store: on the blocking pool, never on a serving thread.
pub async fn apply(daemon: &Arc<Daemon>, out: &mut Reply) {
    let store = Arc::clone(&daemon.store);
    let verified = super::on_blocking_pool("verify", move || store.verify()).await;
    match verified {
        Ok(problems) if problems.is_empty() => {
            let n = daemon.store.tables().map(|t| t.len()).unwrap_or(0);
            resp::simple(out, &format!("OK {n} tables verified"));
        }
        Ok(problems) => resp::error(out, &format!("ERR verify: {}", problems.join("; "))),
        Err(e) => resp::error(out, &format!("ERR verify: {e}")),
    }
}
