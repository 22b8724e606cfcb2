//! The fsync failures only sled's flusher thread is told of. The flusher fsyncs the log
//! every `SLED_FLUSH_EVERY_MS` and only logs a failure (sled 0.34.7 `flusher.rs`). Linux's
//! local filesystems report a failed write-back to every handle open when it happened,
//! recd's own included (`durable::SledFiles`), but some tell the failing fsync alone (FUSE
//! filesystems do): recd's next sync would then succeed with the lost writes missing. So
//! the daemon's logging watches for sled's flusher's errors ([`FlusherWatch`]), and a store
//! whose flusher failed since it opened counts it a failed write of its own: its next sync
//! fails (`durable::SledFiles::sync`), and the daemon's check every 2 s marks it failed
//! (`Store::check_flusher`), which opens it again once no run writes.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// The errors sled's flusher threads logged in this daemon. The message does not say
/// which database: a daemon has one store open (a reopen closes the old one first, which
/// joins its flusher).
pub(crate) static ERRORS: FlusherErrors = FlusherErrors::new();

/// sled's flusher thread logs under this target.
const FLUSHER_TARGET: &str = "sled::flusher";

/// How many flusher errors were logged, and the last one's message.
pub(crate) struct FlusherErrors {
    count: AtomicU64,
    last: Mutex<String>,
}

impl FlusherErrors {
    pub(crate) const fn new() -> FlusherErrors {
        FlusherErrors { count: AtomicU64::new(0), last: Mutex::new(String::new()) }
    }

    pub(super) fn record(&self, message: String) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = message;
        self.count.fetch_add(1, Ordering::SeqCst);
    }
}

/// Where a database's watch starts: taken before sled opens it, since its flusher fsyncs
/// as it starts.
#[derive(Clone, Copy)]
pub(super) struct FlusherMark {
    errors: &'static FlusherErrors,
    seen: u64,
}

impl FlusherMark {
    pub(super) fn now(errors: &'static FlusherErrors) -> FlusherMark {
        FlusherMark { errors, seen: errors.count.load(Ordering::SeqCst) }
    }

    /// The flusher's last error, where one came after the mark.
    pub(super) fn failure(&self) -> Option<String> {
        (self.errors.count.load(Ordering::SeqCst) != self.seen).then(|| {
            let last = self.errors.last.lock().unwrap_or_else(|e| e.into_inner());
            format!("sled's flusher thread failed: {last}")
        })
    }
}

/// A flusher failure as an I/O error of the kind its message names: sled prints the
/// `io::Error` it met, which ends "(os error N)" for an OS error. So a full disk the
/// flusher met is seen as one (`reserve::is_disk_full`), as one recd's own fsync met is.
pub(super) fn io_error(failure: String) -> std::io::Error {
    let kind = os_error_code(&failure)
        .map_or(std::io::ErrorKind::Other, |code| std::io::Error::from_raw_os_error(code).kind());
    std::io::Error::new(kind, failure)
}

/// N in the last "(os error N)" of `message`.
fn os_error_code(message: &str) -> Option<i32> {
    let (_, after) = message.rsplit_once("(os error ")?;
    after.split_once(')')?.0.parse().ok()
}

/// A tracing layer recording sled's flusher's errors in [`ERRORS`]. sled logs through the
/// `log` crate; the bridge `init` installs (tracing-log) turns its records into events
/// whose target is `log` and whose `log.target` field is the record's target. Read from
/// the field, not through tracing-log's `NormalizeEvent`, which only knows the bridge of
/// its own version. Give it a filter at ERROR, so that it does not enable every level.
pub(crate) struct FlusherWatch(&'static FlusherErrors);

impl FlusherWatch {
    pub(crate) fn new() -> FlusherWatch {
        FlusherWatch(&ERRORS)
    }
}

impl<S: Subscriber> Layer<S> for FlusherWatch {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() != Level::ERROR {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.log_target.as_deref().unwrap_or(event.metadata().target()) == FLUSHER_TARGET {
            self.0.record(fields.message);
        }
    }
}

/// An event's message, and the target of the `log` record it came from.
#[derive(Default)]
struct Fields {
    message: String,
    log_target: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "log.target" => self.log_target = Some(value.to_string()),
            _ => self.record_debug(field, &value),
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn an_error_sleds_flusher_logs_is_a_failure_of_the_databases_opened_before_it() {
        static ERRORS: FlusherErrors = FlusherErrors::new();
        let errors = &ERRORS;
        let subscriber = tracing_subscriber::registry().with(FlusherWatch(errors).with_filter(LevelFilter::ERROR));
        // sled logs through `log`; the bridge the daemon installs sends it to the
        // thread's subscriber (another test may have installed it already).
        let _ = tracing_log::LogTracer::builder().with_max_level(log::LevelFilter::Error).init();
        let before = FlusherMark::now(errors);
        tracing::subscriber::with_default(subscriber, || {
            log::warn!(target: "sled::flusher", "not an error");
            log::error!(target: "sled::pagecache::logger", "not the flusher");
            tracing::error!("not a log record");
            assert_eq!(before.failure(), None);
            let eio = std::io::Error::from_raw_os_error(5);
            log::error!(target: "sled::flusher", "failed to fsync from periodic flush thread: {}", eio);
        });
        let failure = before.failure().expect("the flusher's error is recorded");
        assert_eq!(
            failure,
            "sled's flusher thread failed: failed to fsync from periodic flush thread: Input/output error (os error 5)"
        );
        assert_eq!(FlusherMark::now(errors).failure(), None, "a database opened after has not failed");
    }

    #[test]
    fn a_flusher_failure_keeps_the_kind_of_the_os_error_it_names() {
        let failure = |e: std::io::Error| format!("sled's flusher thread failed: failed to fsync: {e}");
        let full = io_error(failure(std::io::Error::from_raw_os_error(28)));
        assert_eq!(full.kind(), std::io::ErrorKind::StorageFull);
        assert!(full.to_string().ends_with("(os error 28)"), "the message is kept: {full}");
        let eio = std::io::Error::from_raw_os_error(5);
        assert_eq!(io_error(failure(eio)).kind(), std::io::Error::from_raw_os_error(5).kind());
        assert_eq!(io_error("failed to fsync: (os error x)".into()).kind(), std::io::ErrorKind::Other);
        assert_eq!(io_error("no code (os error 28".into()).kind(), std::io::ErrorKind::Other);
    }
}
