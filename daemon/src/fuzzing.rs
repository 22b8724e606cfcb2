//! Entry points of the fuzz targets in `fuzz/` (cargo-fuzz), and the checks that make a
//! finding of what would otherwise pass silently. Each takes the fuzzer's bytes, drives the
//! daemon's own code the way the daemon does, and panics only where a promise is broken:
//! bad input must be refused with an error that says where, never crash the daemon, and
//! never publish a table that breaks the store's invariants. The committed seeds in
//! `fuzz/seeds/` are replayed by this module's unit tests, so a finding kept there (see
//! `fuzz/README.md`) is a regression test in the ordinary suite.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::job::{self, JobError, OutputChecks};
use crate::resp;
use crate::run::{self, RunError};
use crate::shard::Shard;
use crate::store::{self, Retention, Store, TableKind, VersionInfo};

/// The RESP request parser on `data` as one connection's bytes: it never panics, a parsed
/// request never claims more bytes than it was given (or none), and what follows it parses
/// on its own; the reply parser (the CLI's) never panics either.
pub fn resp(data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        match resp::parse_request(&data[at..]) {
            Ok(Some((_, used))) => {
                assert!(used > 0 && used <= data.len() - at, "parsed {used} bytes of {}", data.len() - at);
                at += used;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let _ = resp::parse_frame(data);
}

/// What the `job_file` target tells the fuzzer and the seed tests: did the file validate.
#[derive(Debug, PartialEq, Eq)]
pub enum JobOutcome {
    NotText,
    Valid,
    Refused(String),
}

/// The file job errors must name, as the daemon shows it; the job is named after it (as in
/// the unit tests' cases, whose seeds name it in `after`).
const JOB_FILE: &str = "jobs/j.toml";

/// Parses and validates `data` as a job file, then checks its links as if it were the only
/// job, as a reload does (without the disk checks of `resolve`); for a valid job, works out
/// what the daemon would do with it: its next fire times and retry waits.
pub fn job_file(data: &[u8]) -> JobOutcome {
    let Ok(text) = std::str::from_utf8(data) else { return JobOutcome::NotText };
    let base = Path::new("/srv/recd");
    let parsed = match job::parse_and_validate(text, JOB_FILE, "j", base, &base.join("plugins")) {
        Err(e) => {
            check_job_error(&e, text);
            return JobOutcome::Refused(e.to_string());
        }
        Ok(parsed) => parsed,
    };
    let jobs = std::collections::BTreeMap::from([(parsed.name.clone(), parsed.clone())]);
    if let Some((_, e)) = job::check_links(&jobs, &Default::default()).into_iter().next() {
        check_job_error(&e, text);
        return JobOutcome::Refused(e.to_string());
    }
    // A second job naming the same table is refused, unless both declare it shared.
    let twin = job::Job { name: "twin".into(), ..parsed.clone() };
    let pair = std::collections::BTreeMap::from([(parsed.name.clone(), parsed.clone()), (twin.name.clone(), twin)]);
    let refused = job::check_tables(&pair, &|_| Some(parsed.name.clone()), &Default::default());
    assert_eq!(refused.len(), usize::from(!parsed.shared_table), "one of two jobs publishing a table is refused");
    for (_, e) in &refused {
        check_job_error(e, text);
    }
    exercise_job(&parsed);
    JobOutcome::Valid
}

/// An error names the file and a line of it (1 for a file-wide problem).
fn check_job_error(e: &JobError, text: &str) {
    let shown = e.to_string();
    assert!(shown.starts_with(&format!("{JOB_FILE}:")), "error does not name the file: {shown}");
    let lines = text.lines().count().max(1);
    match e {
        JobError::Io { .. } => panic!("parsing touched the disk: {shown}"),
        JobError::Syntax { line, column, message, .. } => {
            assert!((1..=lines + 1).contains(line) && *column >= 1, "bad location in {shown}");
            assert!(!message.trim().is_empty(), "empty message: {shown}");
        }
        JobError::Invalid { line, field, message, .. } => {
            assert!((1..=lines).contains(line), "line {line} outside the file's {lines}: {shown}");
            assert!(!field.is_empty() && !message.trim().is_empty(), "unnamed field or empty message: {shown}");
        }
    }
}

fn exercise_job(parsed: &job::Job) {
    assert_eq!(parsed.name, "j");
    assert!(parsed.plugin.is_absolute(), "plugin path {:?} is not absolute", parsed.plugin);
    assert!(parsed.inputs.iter().all(|i| i.path.is_absolute() || i.format == job::InputFormat::Table));
    if let Some(schedule) = &parsed.schedule {
        let from = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a valid instant");
        // Validation refused every pattern no date matches, so a valid one fires.
        let next = schedule.next_after(from).expect("a valid schedule fires");
        assert!(next > from, "next fire time {next} is not after {from}");
        let upcoming = schedule.upcoming(from, 3);
        assert!(upcoming.windows(2).all(|w| w[0] < w[1]), "fire times out of order: {upcoming:?}");
    }
    let policy = &parsed.policy;
    for attempt in 1..=policy.retries.min(64) + 1 {
        assert!(policy.backoff(attempt) <= policy.retry_backoff_max.max(policy.retry_backoff));
    }
}

/// What the `result_stream` target tells the fuzzer and the seed tests.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamOutcome {
    Published { users: u64, rows: u64 },
    Refused(String),
}

/// Takes `data` as a worker's stdout for a run of table `fuzz`: its first byte picks the
/// job's settings (bit 0: hashes, not lists; bit 1: `allow_empty`; bit 2: shard 1/2, not
/// the whole; bits 3..: `max_items_per_user` 1..=32), the rest is the stream. A refused
/// stream must leave the served version as it was; a published one must be sound.
pub fn result_stream(data: &[u8]) -> StreamOutcome {
    use_the_daemons_panic_hook();
    let Some((&settings, stream)) = data.split_first() else { return StreamOutcome::Refused("no input".into()) };
    let kind = if settings & 1 == 1 { TableKind::Hashes } else { TableKind::Lists };
    let checks = OutputChecks {
        max_items_per_user: u32::from(settings >> 3) + 1,
        allow_empty: settings & 2 == 2,
        known_users: None,
        known_items: None,
    };
    let shard = if settings & 4 == 4 { Shard::parse("1/2").expect("a valid shard") } else { Shard::default() };
    let store = fuzz_store().lock().expect("fuzz store");
    let table = match kind {
        TableKind::Lists => "fuzz_lists",
        TableKind::Hashes => "fuzz_hashes",
    };
    let before = store.served(table).map(|t| t.version);
    let outcome = run::publish_stream(&store, table, kind, &checks, shard, &mut std::io::Cursor::new(stream));
    let problems = store.verify().expect("verify reads the store");
    assert!(problems.is_empty(), "the store is unsound after {outcome:?}: {problems:?}");
    match outcome {
        Ok(version) => {
            check_published(&store, table, &version, &checks, shard);
            let whole_rows = shard.is_whole().then(|| stream_rows(stream));
            if let Some(Some(rows)) = whole_rows {
                assert_eq!(version.rows, rows, "published rows differ from the rows streamed");
            }
            StreamOutcome::Published { users: version.users, rows: version.rows }
        }
        Err(e) => {
            let after = store.served(table).map(|t| t.version);
            assert_eq!(before, after, "a refused stream changed the served version ({e})");
            StreamOutcome::Refused(refusal_text(&e))
        }
    }
}

/// libFuzzer's panic hook aborts at every panic, even one the daemon catches (arrow-ipc's
/// on a malformed stream, see `wire::decode_rows`). The daemon runs with Rust's default
/// hook, which prints the message and unwinds; a hook that does the same (without the
/// backtrace cargo-fuzz asks for, whose symbolising would slow the fuzzer a hundredfold)
/// is put in, once, so that the target judges what the daemon does: a panic it catches is
/// a refused stream, and one it does not catch still reaches libFuzzer's harness, which
/// aborts and reports it.
/// (`cfg(fuzzing)`: cargo-fuzz builds with it; the seed tests keep the test harness's hook.)
fn use_the_daemons_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if cfg!(fuzzing) {
        ONCE.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}"))));
    }
}

fn refusal_text(e: &RunError) -> String {
    let text = e.to_string();
    assert!(!text.trim().is_empty(), "a refusal without a reason");
    text
}

/// The published version is the served one and holds what the checks allow: lists of at
/// most `max_items_per_user` distinct items, best first, finite scores; hashes with
/// distinct field names; users in the shard.
fn check_published(store: &Store, table: &str, version: &VersionInfo, checks: &OutputChecks, shard: Shard) {
    let served = store.served(table).expect("a published table is served");
    assert_eq!(served.version, version.version);
    let mut users = 0;
    for entry in served.iter_lists() {
        let (user, value) = entry.expect("a stored row reads back");
        users += 1;
        let user = std::str::from_utf8(&user).expect("user ids are text");
        assert!(shard.contains(user), "user {user:?} is outside shard {shard}");
        match served.kind {
            TableKind::Lists => {
                let list = store::decode_list(&value);
                assert!(!list.is_empty() && list.len() <= checks.max_items_per_user as usize, "{user}: {list:?}");
                assert!(list.iter().all(|(_, s)| s.is_finite()));
                let best_first = |w: &[(&[u8], f32)]| w[0].1.total_cmp(&w[1].1).then(w[0].0.cmp(w[1].0)).is_gt();
                assert!(list.windows(2).all(best_first), "not best first: {list:?}");
            }
            TableKind::Hashes => {
                let fields = store::decode_hash(&value);
                let names: std::collections::HashSet<_> = fields.iter().map(|(name, _)| *name).collect();
                assert_eq!(names.len(), fields.len(), "{user}: a field name twice in {fields:?}");
            }
        }
    }
    assert_eq!(users, version.users);
}

/// Rows in the stream's row frames up to the worker's last message (a frame after it
/// fails the run), counted here without the daemon's reader; None if a frame does not
/// parse.
fn stream_rows(mut stream: &[u8]) -> Option<u64> {
    let mut rows = 0;
    while let Some((&tag, rest)) = stream.split_first() {
        let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let payload = rest.get(4..4 + len)?;
        stream = &rest[4 + len..];
        if tag == crate::wire::TAG_MESSAGE {
            let message: serde_json::Value = serde_json::from_slice(payload).ok()?;
            if message.get("type").and_then(|t| t.as_str()) != Some("progress") {
                break;
            }
        } else if tag == crate::wire::TAG_ROWS {
            let reader = arrow_ipc::reader::StreamReader::try_new(payload, None).ok()?;
            for batch in reader {
                rows += batch.ok()?.num_rows() as u64;
            }
        }
    }
    Some(rows)
}

/// One store for the whole fuzzing process, in memory-backed /dev/shm where there is one:
/// a publish flushes, and the fuzzer runs thousands a second.
fn fuzz_store() -> &'static Mutex<Store> {
    static STORE: OnceLock<Mutex<Store>> = OnceLock::new();
    STORE.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        let dir: PathBuf = root.join(format!("recd-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let retention = Retention { count: 2, max_age: None };
        // A small page cache: the fuzzer's tables are tiny, and libFuzzer stops at 2 GiB.
        let caches = store::Caches { sled_bytes: 64 << 20, read_bytes: 0, disk_reserve_bytes: 0 };
        Mutex::new(Store::open_with(&dir, retention, caches).expect("the fuzz store opens"))
    })
}

#[cfg(test)]
mod tests {
    //! Replays every committed seed: each must pass the target's checks, and a seed named
    //! `ok-*` must be accepted (valid job, published table), one named `bad-*` refused.
    //! The result-stream seeds are built here, as the worker frames its rows; the files in
    //! `fuzz/seeds/result_stream` must be what these builders give (`RECD_BLESS_SEEDS=1`
    //! rewrites them after a deliberate change of the stream).
    use std::sync::Arc;

    use arrow_array::{ArrayRef, BooleanArray, Float32Array, Int64Array, RecordBatch, StringArray};

    use super::*;
    use crate::wire::{self, Message, TAG_MESSAGE, TAG_ROWS};

    fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<_> = std::fs::read_dir(seed_dir(target))
            .unwrap_or_else(|e| panic!("{}: {e}", seed_dir(target).display()))
            .map(|e| e.expect("a directory entry").path())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect();
        out.sort();
        assert!(out.len() >= 4, "too few seeds in {}", seed_dir(target).display());
        out
    }

    fn seed_dir(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds").join(target)
    }

    #[test]
    fn every_resp_seed_passes_the_parser_checks() {
        for (_, data) in seeds("resp") {
            resp(&data);
        }
    }

    #[test]
    fn every_job_file_seed_is_judged_as_its_name_says() {
        for (name, data) in seeds("job_file") {
            let outcome = job_file(&data);
            match name.split('-').next() {
                Some("ok") => assert_eq!(outcome, JobOutcome::Valid, "{name}"),
                Some("bad") => assert!(matches!(outcome, JobOutcome::Refused(_)), "{name}: {outcome:?}"),
                _ => {}
            }
        }
    }

    #[test]
    fn every_result_stream_seed_is_judged_as_its_name_says() {
        for (name, data) in seeds("result_stream") {
            let outcome = result_stream(&data);
            match name.split('-').next() {
                Some("ok") => assert!(matches!(outcome, StreamOutcome::Published { .. }), "{name}: {outcome:?}"),
                Some("bad") => assert!(matches!(outcome, StreamOutcome::Refused(_)), "{name}: {outcome:?}"),
                _ => {}
            }
        }
    }

    /// The result_stream target's first finding: arrow-ipc panicked, inside the daemon's run,
    /// on a buffer whose offset lies past the message body. The run now fails and says why.
    #[test]
    fn a_buffer_past_the_ipc_body_fails_the_run_and_says_why() {
        let data = std::fs::read(seed_dir("result_stream").join("bad-arrow-buffer-past-body")).unwrap();
        match result_stream(&data) {
            StreamOutcome::Refused(reason) => assert!(reason.contains("malformed Arrow IPC stream"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_committed_result_stream_seeds_are_the_built_ones() {
        let dir = seed_dir("result_stream");
        for (name, bytes, _) in built_streams() {
            let path = dir.join(name);
            if std::env::var_os("RECD_BLESS_SEEDS").is_some() {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let committed = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(committed == bytes, "{} differs from its builder (RECD_BLESS_SEEDS=1 rewrites it)", path.display());
        }
    }

    /// The built streams give the outcome they were built for, to the row.
    #[test]
    fn built_result_streams_publish_or_are_refused_as_built() {
        for (name, bytes, expected) in built_streams() {
            let outcome = result_stream(&bytes);
            match (&outcome, expected) {
                (StreamOutcome::Published { users, rows }, Ok((u, r))) => assert_eq!((*users, *rows), (u, r), "{name}"),
                (StreamOutcome::Refused(reason), Err(words)) => assert!(reason.contains(words), "{name}: {reason}"),
                _ => panic!("{name}: {outcome:?}, built for {expected:?}"),
            }
        }
    }

    /// Settings byte (see [`result_stream`]).
    const LISTS_MAX_10: u8 = 9 << 3;
    const LISTS_MAX_1: u8 = 0;
    const HASHES: u8 = 1;
    const ALLOW_EMPTY: u8 = 2;
    const HALF_SHARD: u8 = 4;

    /// A built seed: its file name, its bytes, and the published (users, rows) or words of
    /// the refusal.
    type BuiltStream = (&'static str, Vec<u8>, Result<(u64, u64), &'static str>);

    fn built_streams() -> Vec<BuiltStream> {
        let three_users = [
            rows(&[("u1", "a", 0.9), ("u1", "b", 0.5), ("u1", "c", 0.7), ("u2", "a", 0.1), ("u2", "d", 0.2)]),
            rows(&[("u3", "z", -1.0)]),
        ];
        let sharded: Vec<_> = (0..40).map(|u| format!("user{u}")).collect();
        let sharded_rows: Vec<_> = sharded.iter().map(|u| (u.as_str(), "i", 1.0)).collect();
        let half = Shard::parse("1/2").unwrap();
        let in_half = sharded.iter().filter(|u| half.contains(u)).count() as u64;
        let kept = sharded.iter().find(|u| half.contains(u)).expect("a user in the shard").as_str();
        let dropped = sharded.iter().find(|u| !half.contains(u)).expect("a user outside it").as_str();
        vec![
            (
                "ok-lists",
                stream(LISTS_MAX_10, &[progress(1, 2), three_users[0].clone(), three_users[1].clone(), done(6)]),
                Ok((3, 6)),
            ),
            (
                "ok-lists-shard",
                stream(LISTS_MAX_10 | HALF_SHARD, &[rows(&sharded_rows), done(40)]),
                Ok((in_half, in_half)),
            ),
            ("ok-hashes", stream(HASHES, &[hashes(), done(2)]), Ok((2, 2))),
            ("ok-empty-allowed", stream(ALLOW_EMPTY, &[done(0)]), Ok((0, 0))),
            ("bad-empty", stream(0, &[done(0)]), Err("emitted no rows")),
            ("bad-no-last-message", stream(LISTS_MAX_10, &[three_users[0].clone()]), Err("ended before")),
            (
                "bad-failed",
                stream(LISTS_MAX_10, &[three_users[0].clone(), failed("plugin said no")]),
                Err("plugin said no"),
            ),
            ("bad-too-many", stream(LISTS_MAX_1, &[three_users[0].clone(), done(5)]), Err("max_items_per_user")),
            ("bad-repeat", stream(LISTS_MAX_10, &[rows(&[("u", "a", 1.0), ("u", "a", 2.0)]), done(2)]), Err("twice")),
            (
                "bad-split-user",
                stream(LISTS_MAX_10, &[rows(&[("u", "a", 1.0), ("v", "a", 1.0), ("u", "b", 1.0)]), done(3)]),
                Err("not contiguous"),
            ),
            ("bad-nan", stream(LISTS_MAX_10, &[rows(&[("u", "a", f32::NAN)]), done(1)]), Err("non-finite")),
            ("bad-tag", stream(LISTS_MAX_10, &[(b'X', vec![1, 2, 3])]), Err("unknown frame tag")),
            ("bad-no-columns", stream(LISTS_MAX_10, &[no_columns(), done(1)]), Err("rows with 0 columns")),
            ("bad-hash-no-columns", stream(HASHES, &[no_columns(), done(1)]), Err("rows with 0 columns")),
            ("bad-cut", cut(stream(LISTS_MAX_10, &[three_users[0].clone(), done(5)])), Err("")),
            (
                "bad-rows-after-done",
                stream(LISTS_MAX_10, &[three_users[0].clone(), done(5), three_users[1].clone()]),
                Err("after its last message"),
            ),
            (
                "bad-failed-then-more",
                stream(LISTS_MAX_10, &[failed("plugin said no"), three_users[1].clone()]),
                Err("plugin said no"),
            ),
            (
                "bad-row-count",
                stream(LISTS_MAX_10, &[three_users[0].clone(), done(4)]),
                Err("reported 4 result rows but sent 5"),
            ),
            (
                "bad-shard-split-user",
                stream(
                    LISTS_MAX_10 | HALF_SHARD,
                    &[rows(&[(kept, "a", 1.0), (dropped, "a", 1.0), (kept, "b", 1.0)]), done(3)],
                ),
                Err("not contiguous"),
            ),
            ("bad-huge-message", huge_message(stream(LISTS_MAX_10, &[])), Err("message frame of")),
        ]
    }

    type Frame = (u8, Vec<u8>);

    fn stream(settings: u8, frames: &[Frame]) -> Vec<u8> {
        let mut out = vec![settings];
        for (tag, payload) in frames {
            wire::write_frame(&mut out, *tag, payload).unwrap();
        }
        out
    }

    fn cut(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes.truncate(bytes.len() - 7);
        bytes
    }

    fn rows(rows: &[(&str, &str, f32)]) -> Frame {
        let batch = RecordBatch::try_from_iter([
            ("user", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef),
            ("item", Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))) as ArrayRef),
            ("score", Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.2))) as ArrayRef),
        ])
        .unwrap();
        (TAG_ROWS, wire::encode_rows(&batch).unwrap())
    }

    /// One row and no columns: a batch the Arrow IPC format allows and no table can take.
    fn no_columns() -> Frame {
        let options = arrow_array::RecordBatchOptions::new().with_row_count(Some(1));
        let batch =
            RecordBatch::try_new_with_options(Arc::new(arrow_schema::Schema::empty()), vec![], &options).unwrap();
        (TAG_ROWS, wire::encode_rows(&batch).unwrap())
    }

    fn hashes() -> Frame {
        let batch = RecordBatch::try_from_iter([
            ("user", Arc::new(StringArray::from(vec!["c1", "c2"])) as ArrayRef),
            ("churn", Arc::new(Float32Array::from(vec![Some(0.25), None])) as ArrayRef),
            ("segment", Arc::new(StringArray::from(vec!["new", "loyal"])) as ArrayRef),
            ("orders", Arc::new(Int64Array::from(vec![3, 40])) as ArrayRef),
            ("lapsed", Arc::new(BooleanArray::from(vec![false, true])) as ArrayRef),
        ])
        .unwrap();
        (TAG_ROWS, wire::encode_rows(&batch).unwrap())
    }

    fn message(message: Message) -> Frame {
        (TAG_MESSAGE, serde_json::to_vec(&message).unwrap())
    }

    fn progress(done: u64, total: u64) -> Frame {
        message(Message::Progress { done, total })
    }

    fn done(rows: u64) -> Frame {
        message(Message::Done {
            provider: "cpu".into(),
            rows,
            plugin: Default::default(),
            stats: Default::default(),
            model_sha256: None,
            warnings: Vec::new(),
            input_rows: Default::default(),
        })
    }

    /// `bytes` and the header of a message frame of 2 MiB, whose payload is not there: the
    /// header alone is refused.
    fn huge_message(mut bytes: Vec<u8>) -> Vec<u8> {
        bytes.push(TAG_MESSAGE);
        bytes.extend((2u32 << 20).to_le_bytes());
        bytes
    }

    fn failed(error: &str) -> Frame {
        message(Message::Failed { error: error.into(), plugin: None })
    }
}
