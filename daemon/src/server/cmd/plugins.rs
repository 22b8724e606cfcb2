//! PLUGINS (admin socket): every plugin file the daemon has checked or run, one line each:
//! name, version, ABI, SHA-256 of the content in use, when that content was first loaded,
//! and the path.
use std::fmt::Write as _;
use std::sync::Arc;

use crate::daemon::Daemon;
use crate::server::resp::{self, Reply};

pub fn apply(daemon: &Arc<Daemon>, out: &mut Reply) {
    let mut s = String::new();
    for p in daemon.plugins.list() {
        let _ = writeln!(
            s,
            "{} {} abi {} sha256 {} loaded {} {}",
            p.name,
            p.version,
            p.abi,
            p.sha256,
            p.loaded_at,
            p.path.display()
        );
    }
    resp::bulk(out, s.as_bytes());
}
