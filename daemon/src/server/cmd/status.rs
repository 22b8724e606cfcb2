//! STATUS (admin socket): tables with their versions, jobs, job file errors, as text.
use std::sync::Arc;

use crate::daemon::Daemon;
use crate::server::resp;

pub fn apply(daemon: &Arc<Daemon>, out: &mut Vec<u8>) {
    resp::bulk(out, daemon.status_text().as_bytes());
}
