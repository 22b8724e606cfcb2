//! The ABI is really C: a plugin written in C against `recd_plugin.h` alone, compiled here
//! with the system compiler, runs end to end; and the handshake refuses a plugin built for
//! another ABI, naming both versions, without disturbing other jobs.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::util::{TestDaemon, root};

/// Compiles C source into `dir/librecd_<name>.so` with the system C compiler.
pub fn compile_c(source: &Path, dir: &Path, name: &str) -> PathBuf {
    compile_c_with(source, dir, name, &[])
}

pub fn compile_c_with(source: &Path, dir: &Path, name: &str, flags: &[&str]) -> PathBuf {
    let out = dir.join(format!("librecd_{name}.so"));
    let cc = Command::new("cc")
        .args(["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"])
        .args(flags)
        .arg("-I")
        .arg(root().join("plugin-api/include"))
        .arg(source)
        .arg("-o")
        .arg(&out)
        .output()
        .expect("a C compiler (cc)");
    assert!(cc.status.success(), "cc failed: {}", String::from_utf8_lossy(&cc.stderr));
    out
}

fn raw_times(col: &ArrayRef) -> Vec<i64> {
    match col.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => {
            col.as_primitive::<arrow_array::types::TimestampSecondType>().values().to_vec()
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            col.as_primitive::<arrow_array::types::TimestampMillisecondType>().values().to_vec()
        }
        other => panic!("unexpected ts type {other}"),
    }
}

/// The expected lists, computed here from the Parquet data: per user, the k items first
/// bought most recently (ties by item id) that the user never bought; cancelled lines ignored.
fn expected_recent(k: usize) -> HashMap<String, Vec<String>> {
    let file = std::fs::File::open(root().join("data/demo/retail.parquet")).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let mut first_seen: HashMap<String, i64> = HashMap::new();
    let mut bought: HashMap<String, HashSet<String>> = HashMap::new();
    for batch in reader {
        let b = batch.unwrap();
        let users = b.column_by_name("user_id").unwrap().as_string::<i32>().clone();
        let items = b.column_by_name("item_id").unwrap().as_string::<i32>().clone();
        let cancelled = b.column_by_name("cancelled").unwrap().as_boolean().clone();
        let ts = raw_times(b.column_by_name("ts").unwrap());
        for (r, &when) in ts.iter().enumerate() {
            if cancelled.value(r) {
                continue;
            }
            let (u, i) = (users.value(r), items.value(r));
            let seen = first_seen.entry(i.to_string()).or_insert(when);
            *seen = (*seen).min(when);
            bought.entry(u.to_string()).or_default().insert(i.to_string());
        }
    }
    let mut order: Vec<(&String, &i64)> = first_seen.iter().collect();
    order.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    bought
        .iter()
        .map(|(u, mine)| {
            (u.clone(), order.iter().map(|(i, _)| (*i).clone()).filter(|i| !mine.contains(i)).take(k).collect())
        })
        .collect()
}

#[test]
fn a_plugin_written_in_c_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let so = compile_c(&root().join("plugins/recent/recent.c"), dir.path(), "recent");
    let job = format!(
        "plugin = \"{}\"\ntable = \"recent\"\n[inputs]\ninteractions = \"{}/data/demo/retail.parquet\"\n[params]\nk = 5\n",
        so.display(),
        root().display()
    );
    let d = TestDaemon::start(&[("recent", &job)]);
    let report = d.run_job("recent");
    let expected = expected_recent(5);
    assert!(report.contains(&format!("{} users, {} rows", expected.len(), expected.len() * 5)), "{report}");
    let mut conn = d.redis();
    let mut users: Vec<&String> = expected.keys().collect();
    users.sort();
    let mut pipe = redis::pipe();
    for u in &users {
        pipe.cmd("ZREVRANGE").arg(format!("recent:{u}")).arg(0).arg(-1).arg("WITHSCORES");
    }
    let served: Vec<Vec<(String, f64)>> = pipe.query(&mut conn).unwrap();
    for (u, list) in users.iter().zip(served) {
        let items: Vec<&String> = list.iter().map(|(i, _)| i).collect();
        let want: Vec<&String> = expected[*u].iter().collect();
        assert_eq!(items, want, "user {u}");
        let scores: Vec<f64> = list.iter().map(|(_, s)| *s).collect();
        assert_eq!(scores, [5.0, 4.0, 3.0, 2.0, 1.0], "user {u}");
    }
    // the C plugin validates its own params, before any run: on reload and in validate
    d.write_job("recent", &job.replace("k = 5", "kk = 5"));
    let out = d.cli(&["reload"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("recent.toml:5: field `params`: params: unknown field `kk`, expected `k`"), "{err}");
    let out = d.cli(&["validate", d.jobs_dir().join("recent.toml").to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("field `params`: params: unknown field `kk`"));
    // ... and the last good definition (k = 5) keeps running
    assert!(d.run_job("recent").contains("version 2"));
}

#[test]
fn a_plugin_for_another_abi_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    // A plugin of a descriptor alone: no entry points (designated initialisers leave them
    // NULL), built for ABI `major.minor`.
    let descriptor_only = |name: &str, major: u32, minor: u32| {
        let src = dir.path().join(format!("{name}.c"));
        let descriptor = format!(
            "static const RecdPluginV1 D = {{.abi_major = {major}, .abi_minor = {minor}, .name = \"{name}\", .version = \"1.0\"}};"
        );
        let text = format!(
            "#include \"recd_plugin.h\"\n{descriptor}\n\
             RECD_PLUGIN_EXPORT const RecdPluginV1 *recd_plugin_entry(void) {{ return &D; }}\n"
        );
        std::fs::write(&src, text).unwrap();
        compile_c(&src, dir.path(), name)
    };
    let future = descriptor_only("future", 2, 0);
    // A descriptor of this ABI whose entry points were left out.
    let hollow = descriptor_only("hollow", 1, 3);
    let src = dir.path().join("nothing.c");
    std::fs::write(&src, "int recd_something_else(void) { return 1; }\n").unwrap();
    let nothing = compile_c(&src, dir.path(), "nothing");
    let ok = "plugin = \"faulty\"\ntable = \"t\"\n[params]\nmode = \"ok\"\n";
    let d = TestDaemon::start(&[
        ("future", &format!("plugin = \"{}\"\n", future.display())),
        ("nothing", &format!("plugin = \"{}\"\n", nothing.display())),
        ("hollow", &format!("plugin = \"{}\"\n", hollow.display())),
        ("fine", ok),
    ]);
    // refused when the job is loaded, before any run, with both versions named
    let status = String::from_utf8_lossy(&d.cli(&["status"]).stdout).into_owned();
    assert!(status.contains("future.toml:1: field `plugin`: plugin"), "{status}");
    assert!(status.contains("speaks ABI 2.0, this recd speaks ABI 1.3"), "{status}");
    assert!(
        status.contains("nothing.toml:1: field `plugin`: plugin")
            && status.contains("does not export `recd_plugin_entry`")
    );
    assert!(status.contains("has an invalid descriptor: `create` is NULL"), "{status}");
    let out = d.cli(&["run", "future"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job named `future`"));
    // other jobs are unaffected
    d.run_job("fine");
}

/// What the older-ABI plugins below share: the descriptor as ABI 1.0 laid it out (it
/// ends at `destroy`), and `create`/`destroy`.
const LEGACY_PRELUDE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include "recd_plugin.h"
typedef struct {
  uint32_t abi_major, abi_minor;
  const char *name, *version;
  int32_t (*create)(const uint8_t*, size_t, void**, RecdError*);
  int32_t (*run)(void*, const RecdHost*, RecdTable*, size_t, RecdError*);
  void (*destroy)(void*);
} DescriptorV1_0;
static int32_t create(const uint8_t* p, size_t n, void** instance, RecdError* e) {
  (void)p; (void)n; (void)e;
  *instance = malloc(1);
  return RECD_OK;
}
static void destroy(void* i) { free(i); }
"#;

/// A plugin built for ABI 1.0 has no `check` field: its descriptor ends at `destroy`. The
/// host must not read past it. Here the word after it points to a function that aborts,
/// so a host that read `check` from a 1.0 descriptor would crash the probe.
const LEGACY_1_0: &str = r#"
static int32_t run(void* i, const RecdHost* h, RecdTable* in, size_t n, RecdError* e) {
  (void)i; (void)h; (void)in; (void)n; (void)e;
  return RECD_OK;
}
static int32_t trap(void* i, RecdTable* t, size_t n, RecdError* e) {
  (void)i; (void)t; (void)n; (void)e;
  abort();
}
static const struct {
  DescriptorV1_0 d;
  int32_t (*after)(void*, RecdTable*, size_t, RecdError*);
} D = {{1, 0, "legacy", "1.0.0", create, run, destroy}, trap};
RECD_PLUGIN_EXPORT const RecdPluginV1* recd_plugin_entry(void) { return (const RecdPluginV1*)&D.d; }
"#;

#[test]
fn a_plugin_built_for_abi_1_0_still_loads_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("legacy.c");
    std::fs::write(&src, format!("{LEGACY_PRELUDE}{LEGACY_1_0}")).unwrap();
    let legacy = compile_c(&src, dir.path(), "legacy");
    let job = format!("plugin = \"{}\"\nallow_empty = true\n", legacy.display());
    let d = TestDaemon::start(&[("legacy", &job)]);
    let out = d.cli(&["validate", d.jobs_dir().join("legacy.toml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(d.run_job("legacy").contains("version 1"));
    let plugins = String::from_utf8_lossy(&d.cli(&["plugins"]).stdout).into_owned();
    assert!(plugins.contains("legacy 1.0.0 abi 1.0 sha256 "), "{plugins}");
}

/// A plugin built for ABI 1.1 has no `stream_inputs` field: its descriptor ends at `check`.
/// Here the word after it points to the string "t", the name of its one input, so a host
/// that read `stream_inputs` from a 1.1 descriptor would hand `t` over with no rows, and
/// the plugin refuses that.
const LEGACY_1_1: &str = r#"
typedef struct {
  DescriptorV1_0 v1_0;
  int32_t (*check)(void*, RecdTable*, size_t, RecdError*);
} DescriptorV1_1;
static int32_t run(void* i, const RecdHost* h, RecdTable* in, size_t n, RecdError* e) {
  (void)i; (void)h;
  int64_t rows = n > 0 ? in[0].array.length : -1;
  for (size_t k = 0; k < n; k++) {
    in[k].array.release(&in[k].array);
    in[k].schema.release(&in[k].schema);
  }
  if (n != 1 || rows != 3) {
    e->code = RECD_INVALID_INPUT;
    snprintf(e->message, RECD_ERROR_MESSAGE_CAP, "input t came with %lld rows", (long long)rows);
    return RECD_INVALID_INPUT;
  }
  return RECD_OK;
}
static const struct {
  DescriptorV1_1 d;
  const char* after;
} D = {{{1, 1, "legacy11", "1.1.0", create, run, destroy}, NULL}, "t"};
RECD_PLUGIN_EXPORT const RecdPluginV1* recd_plugin_entry(void) { return (const RecdPluginV1*)&D.d; }
"#;

#[test]
fn a_plugin_built_for_abi_1_1_gets_its_inputs_whole() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("legacy11.c");
    std::fs::write(&src, format!("{LEGACY_PRELUDE}{LEGACY_1_1}")).unwrap();
    let legacy = compile_c(&src, dir.path(), "legacy11");
    let csv = dir.path().join("t.csv");
    std::fs::write(&csv, "user_id,item_id\nu1,a\nu2,b\nu3,c\n").unwrap();
    let job = format!("plugin = \"{}\"\nallow_empty = true\n[inputs]\nt = \"{}\"\n", legacy.display(), csv.display());
    let d = TestDaemon::start(&[("legacy11", &job)]);
    assert!(d.run_job("legacy11").contains("version 1"));
    let plugins = String::from_utf8_lossy(&d.cli(&["plugins"]).stdout).into_owned();
    assert!(plugins.contains("legacy11 1.1.0 abi 1.1 sha256 "), "{plugins}");
}

/// A plugin that breaks the ABI's rule for host callbacks (only on the thread that called
/// `run`, while it runs): `FROM_THREAD` logs from a thread of its own during `run`,
/// `AFTER_RUN` keeps the vtable and logs from `destroy`.
const ROGUE: &str = r#"
#include <pthread.h>
#include <stdlib.h>
#include "recd_plugin.h"
static const RecdHost* kept;
static void* log_from_thread(void* host) {
  const RecdHost* h = host;
  h->log(h->ctx, RECD_LOG_INFO, (const uint8_t*)"from my thread", 14);
  return NULL;
}
static int32_t create(const uint8_t* p, size_t n, void** instance, RecdError* e) {
  (void)p; (void)n; (void)e;
  *instance = malloc(1);
  return RECD_OK;
}
static int32_t run(void* i, const RecdHost* h, RecdTable* in, size_t n, RecdError* e) {
  (void)i; (void)in; (void)n; (void)e;
  kept = h;
#ifdef FROM_THREAD
  pthread_t thread;
  if (pthread_create(&thread, NULL, log_from_thread, (void*)h) != 0) return RECD_INTERNAL;
  pthread_join(thread, NULL);
#else
  (void)log_from_thread;
#endif
  return RECD_OK;
}
static void destroy(void* i) {
#ifdef AFTER_RUN
  /* The probe destroys an instance that never ran. */
  if (kept) kept->log(kept->ctx, RECD_LOG_INFO, (const uint8_t*)"from destroy", 12);
#endif
  free(i);
}
static const RecdPluginV1 D = {.abi_major = 1, .abi_minor = 3, .name = "rogue", .version = "1.0",
                               .create = create, .run = run, .destroy = destroy};
RECD_PLUGIN_EXPORT const RecdPluginV1* recd_plugin_entry(void) { return &D; }
"#;

/// Host callbacks against the ABI's rules would use a host that is in use by another
/// thread or gone with `run`'s stack: they are refused, and the run fails saying which
/// rule; the daemon serves on.
#[test]
fn a_plugin_calling_the_host_off_its_run_thread_or_after_run_fails_its_run() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("rogue.c");
    std::fs::write(&src, ROGUE).unwrap();
    let from_thread = compile_c_with(&src, dir.path(), "from_thread", &["-DFROM_THREAD", "-pthread"]);
    let after_run = compile_c_with(&src, dir.path(), "after_run", &["-DAFTER_RUN"]);
    let job =
        |so: &Path, table: &str| format!("plugin = \"{}\"\ntable = \"{table}\"\nallow_empty = true\n", so.display());
    let d = TestDaemon::start(&[
        ("from_thread", &job(&from_thread, "from_thread")),
        ("after_run", &job(&after_run, "after_run")),
        ("fine", "plugin = \"faulty\"\ntable = \"ok\"\n[params]\nmode = \"ok\"\n"),
    ]);
    for (name, broken) in
        [("from_thread", "from a thread other than the one that called `run`"), ("after_run", "after `run` returned")]
    {
        let out = d.cli(&["run", name]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: {err}");
        let want = format!("plugin `rogue` failed: the plugin called the host's `log` {broken}, which was refused");
        assert!(err.contains(&want), "{name}: want {want:?} in {err}");
    }
    d.run_job("fine");
}
