//! STATUS (admin socket): tables with their versions, jobs, job file errors, as text.
use std::sync::Arc;

use crate::daemon::Daemon;
use crate::resp::{self, Reply};

pub fn apply(daemon: &Arc<Daemon>, out: &mut Reply) {
    resp::bulk(out, daemon.status_text().as_bytes());
}
