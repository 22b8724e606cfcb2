//! Plugin files as the daemon sees them, without ever loading one: trust checks (owner and
//! permissions), content hashes, and per-run snapshots.
//!
//! Each run's worker loads a snapshot of the plugin, `<data_dir>/plugins/<sha256>.so`,
//! never the file in the plugins folder. So a new build dropped into that folder, by an
//! atomic rename or by copying over the old file, is picked up by the next run, while runs
//! already going keep the code they started with; and a file caught half-written fails one
//! run's ABI check, never a running worker.
//!
//! A snapshot is deleted once no probe or run holds it and no plugin file was last seen
//! with its content: without that, every new build stayed on disk for good (the soak test
//! found 41 of them, 612 MiB, after 36 plugin swaps in 30 minutes).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::fsutil::{hex, sha256_of};
use crate::trust::check_trust;
use crate::wire::{PluginDesc, ProbeRequest};

/// A file changed this recently may still be being copied: wait for it to settle.
const SETTLE: Duration = Duration::from_millis(500);

fn now_stamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Free space a plugin snapshot must leave on the data folder's disk: the store needs room
/// to publish, and a full disk is what makes sled fail.
const SNAPSHOT_HEADROOM: u64 = 16 << 20;

/// Names of snapshot copies in progress; any left at start-up are from a killed daemon.
const TMP_SUFFIX: &str = ".tmp";

/// What the daemon knows of a plugin file: its hash, and what its descriptor said when a
/// worker last inspected it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct PluginInfo {
    pub path: PathBuf,
    pub sha256: String,
    pub name: String,
    pub version: String,
    pub abi: String,
    /// When this path was first seen with this content (RFC 3339): about when the build
    /// was deployed; later runs of it leave it unchanged.
    pub first_seen: String,
    /// The latest run (by run id) that loaded a build from this path, and which build.
    pub last_run: Option<LastRun>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct LastRun {
    pub run_id: u64,
    pub sha256: String,
}

/// Snapshots and what is known of them.
pub struct Registry {
    dir: PathBuf,
    known: Mutex<BTreeMap<PathBuf, PluginInfo>>,
    /// When each (path, content hash) was first snapshotted.
    seen: Mutex<BTreeMap<(PathBuf, String), String>>,
    usage: Arc<Mutex<Usage>>,
}

/// Which snapshots must stay on disk.
#[derive(Default)]
struct Usage {
    /// The content each plugin file had when it was last snapshotted: its next run will
    /// most likely want that snapshot again.
    latest: BTreeMap<PathBuf, String>,
    /// How many probes and runs hold each snapshot now.
    held: BTreeMap<String, usize>,
}

/// A snapshot held by one probe or run: it stays on disk until every holder is dropped.
pub struct Snapshot {
    pub path: PathBuf,
    pub sha256: String,
    usage: Arc<Mutex<Usage>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("path", &self.path).finish_non_exhaustive()
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let mut usage = self.usage.lock().expect("snapshot usage");
        if let Some(n) = usage.held.get_mut(&self.sha256) {
            *n -= 1;
            if *n == 0 {
                usage.held.remove(&self.sha256);
            }
        }
        if let Some(dir) = self.path.parent() {
            prune(dir, &usage);
        }
    }
}

/// Deletes the snapshots in `dir` that nothing holds and no plugin file last had. Runs
/// under the usage lock, so no snapshot can be taken up meanwhile.
fn prune(dir: &Path, usage: &Usage) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(sha) = name.to_str().and_then(|n| n.strip_suffix(".so")) else { continue };
        let wanted = usage.held.contains_key(sha) || usage.latest.values().any(|s| s == sha);
        if !wanted {
            match fs::remove_file(entry.path()) {
                Ok(()) => tracing::debug!(snapshot = %entry.path().display(), "removed an unused plugin snapshot"),
                Err(e) => {
                    tracing::warn!(snapshot = %entry.path().display(), "cannot remove an unused plugin snapshot: {e}")
                }
            }
        }
    }
}

impl Registry {
    pub fn new(data_dir: &Path) -> Registry {
        let dir = data_dir.join("plugins");
        remove_leftover_copies(&dir);
        Registry { dir, known: Mutex::default(), seen: Mutex::default(), usage: Arc::default() }
    }

    /// Checks `path`, waits for it to settle, and returns its snapshot, held until the
    /// returned value is dropped. The snapshot is shared by every run of the same content.
    /// The file is read through one descriptor, opened on the real path the trust check
    /// resolved: it is hashed, and copied (only if no snapshot of it exists) into a
    /// temporary file that is removed on every path but the final rename.
    pub fn snapshot(&self, path: &Path, pin: Option<&str>) -> Result<Snapshot, String> {
        let real = check_trust(path)?;
        wait_until_settled(&real);
        let (mut file, meta) = crate::fsutil::open_regular(&real, u64::MAX)
            .map_err(|e| format!("reading plugin {}: {} {e}", path.display(), real.display()))?;
        let sha = sha256_of(&mut file).map_err(|e| format!("reading plugin {}: {e}", path.display()))?;
        if let Some(pin) = pin
            && pin != sha
        {
            return Err(format!("plugin {} has sha256 {sha}, but the job pins {pin}", path.display()));
        }
        self.seen.lock().expect("registry").entry((path.to_path_buf(), sha.clone())).or_insert_with(now_stamp);
        // Held before the file is made, so that no prune removes it in between.
        let held = self.hold(path, &sha);
        if !held.path.exists() {
            self.copy_snapshot(path, &mut file, meta.len(), &sha, &held.path)?;
        }
        Ok(held)
    }

    /// Copies the plugin (`file`, hashed as `sha`) to `snap`, through a temporary file in
    /// the snapshot folder; refuses when the copy would leave the disk nearly full.
    fn copy_snapshot(&self, path: &Path, file: &mut fs::File, size: u64, sha: &str, snap: &Path) -> Result<(), String> {
        use std::io::{Seek, Write};
        let fail = |e: &dyn std::fmt::Display| format!("snapshotting plugin {}: {e}", path.display());
        fs::create_dir_all(&self.dir).map_err(|e| fail(&format!("{}: {e}", self.dir.display())))?;
        crate::fsutil::check_free_space(&self.dir, size.saturating_add(SNAPSHOT_HEADROOM)).map_err(|e| fail(&e))?;
        // Unique per call: two reloads may snapshot the same file at once (a watcher reload
        // and `recd reload`), and must not rename each other's copy away. Removed when
        // dropped, so a failed copy (a full disk) leaves nothing behind.
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!(".{sha}."))
            .suffix(TMP_SUFFIX)
            .tempfile_in(&self.dir)
            .map_err(|e| fail(&e))?;
        file.rewind().map_err(|e| fail(&e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = file.read(&mut buf).map_err(|e| fail(&e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(|e| fail(&e))?;
        }
        tmp.as_file().sync_all().map_err(|e| fail(&e))?;
        // The copy must be what we hashed: a file rewritten meanwhile is caught here.
        if hex(&hasher.finalize()) != sha {
            return Err(format!("plugin {} changed while it was being read: try again", path.display()));
        }
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o500)).map_err(|e| fail(&e))?;
        tmp.persist(snap).map_err(|e| fail(&e.error))?;
        Ok(())
    }

    fn hold(&self, path: &Path, sha: &str) -> Snapshot {
        let mut usage = self.usage.lock().expect("snapshot usage");
        usage.latest.insert(path.to_path_buf(), sha.to_string());
        *usage.held.entry(sha.to_string()).or_default() += 1;
        Snapshot { path: self.dir.join(format!("{sha}.so")), sha256: sha.to_string(), usage: Arc::clone(&self.usage) }
    }

    /// Records what a worker (a run or a probe) read from the descriptor of `path`'s
    /// snapshot `sha256`, if that is still the content the file was last seen with: a
    /// report about an older build (a long run that ends after a hot swap) changes
    /// nothing. A run also becomes the path's last run, unless a later run (by run id)
    /// already is.
    pub fn remember(&self, path: &Path, sha256: &str, plugin: &PluginDesc, run_id: Option<u64>) {
        let latest = self.usage.lock().expect("snapshot usage").latest.get(path).cloned();
        let first_seen = self.first_seen(path, sha256);
        let mut known = self.known.lock().expect("registry");
        let entry = known.entry(path.to_path_buf()).or_insert_with(|| PluginInfo {
            path: path.to_path_buf(),
            sha256: String::new(),
            name: String::new(),
            version: String::new(),
            abi: String::new(),
            first_seen: String::new(),
            last_run: None,
        });
        if latest.as_deref() == Some(sha256) || entry.sha256.is_empty() {
            entry.sha256 = sha256.to_string();
            entry.name = plugin.name.clone();
            entry.version = plugin.version.clone();
            entry.abi = plugin.abi.clone();
            entry.first_seen = first_seen;
        }
        if let Some(run_id) = run_id
            && entry.last_run.as_ref().is_none_or(|r| r.run_id < run_id)
        {
            entry.last_run = Some(LastRun { run_id, sha256: sha256.to_string() });
        }
    }

    /// When `path` was first snapshotted with this content.
    fn first_seen(&self, path: &Path, sha256: &str) -> String {
        let seen = self.seen.lock().expect("registry");
        seen.get(&(path.to_path_buf(), sha256.to_string())).cloned().unwrap_or_else(now_stamp)
    }

    pub fn list(&self) -> Vec<PluginInfo> {
        self.known.lock().expect("registry").values().cloned().collect()
    }
}

/// Removes snapshot copies a killed daemon left half-written (a running daemon removes its
/// own on every path).
fn remove_leftover_copies(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(TMP_SUFFIX) {
            match fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(file = %entry.path().display(), "removed a half-written plugin snapshot"),
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), "cannot remove a half-written plugin snapshot: {e}")
                }
            }
        }
    }
}

fn wait_until_settled(path: &Path) {
    for _ in 0..10 {
        let age =
            fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|t| SystemTime::now().duration_since(t).ok());
        match age {
            Some(age) if age < SETTLE => std::thread::sleep(SETTLE - age),
            _ => return,
        }
    }
}

/// How long a probe may take: loading a library and checking params is quick; a plugin
/// whose `create` hangs must not hang a reload.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `recd probe-plugin` on `path` with `request`, in a throwaway process: the
/// plugin's descriptor, or the job key at fault ("plugin", "params", "model",
/// "model_inputs" or "inputs") and the message.
pub fn probe(path: &Path, request: &ProbeRequest) -> Result<PluginDesc, (String, String)> {
    probe_once(path, request).0
}

/// The probe's answer, and whether the plugin itself gave it (an answer worth caching)
/// rather than the probe process failing to start, crashing or timing out.
fn probe_once(path: &Path, request: &ProbeRequest) -> (Result<PluginDesc, (String, String)>, bool) {
    let request = serde_json::to_string(request).expect("probe request serialises");
    match run_probe(path, &request) {
        Ok(probe) => match (probe.plugin, probe.field, probe.error) {
            (Some(desc), None, None) => (Ok(desc), true),
            (_, field, error) => (Err((field.unwrap_or_else(|| "plugin".into()), error.unwrap_or_default())), true),
        },
        Err(message) => (Err(("plugin".into(), message)), false),
    }
}

fn run_probe(path: &Path, request_json: &str) -> Result<crate::wire::Probe, String> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let exe = crate::wire::self_exe().map_err(|e| e.to_string())?;
    // A group of its own, killed when the probe ends: nothing the plugin starts outlives the
    // probe or holds its output open.
    let mut child = Command::new(exe)
        .arg("probe-plugin")
        .arg(path)
        .env(crate::child::PARENT_PID_VAR, std::process::id().to_string())
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start a probe: {e}"))?;
    // Written beside, closed once written: a probe stuck before it reads a request larger
    // than the pipe's buffer is still timed out below.
    let stdin = child.stdin.take().expect("piped stdin");
    drop(crate::child::write_beside(stdin, request_json.as_bytes().to_vec()));
    let stdout = crate::child::read_last(child.stdout.take().expect("piped stdout"), 1 << 20);
    let stderr = crate::child::read_last(child.stderr.take().expect("piped stderr"), 64 << 10);
    let deadline = std::time::Instant::now() + PROBE_TIMEOUT;
    let pid = child.id();
    // Not reaped while its group is killed: until then no other group can take its id.
    let mut timed_out = false;
    while !crate::child::has_ended(pid, false) {
        if std::time::Instant::now() > deadline {
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    crate::child::kill_group(pid);
    let status = child.wait().map_err(|e| e.to_string())?;
    if timed_out {
        return Err(format!(
            "loading plugin {} and checking the job took over {}s",
            path.display(),
            PROBE_TIMEOUT.as_secs()
        ));
    }
    // A process the plugin started outside the group can hold the pipes open: not waited for.
    let output =
        |read: std::sync::mpsc::Receiver<Vec<u8>>| read.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    let (out, err) = (output(stdout), output(stderr));
    let line = String::from_utf8_lossy(&out);
    let line = line.trim().lines().last().unwrap_or("");
    serde_json::from_str(line).map_err(|_| {
        format!(
            "loading plugin {} crashed the probe ({status}): {}",
            path.display(),
            String::from_utf8_lossy(&err).lines().last().unwrap_or("")
        )
    })
}

/// Probe outcomes by (content hash, probe request), so a reload re-checks only what
/// changed.
pub type ProbeCache = Mutex<BTreeMap<(String, String), Result<PluginDesc, (String, String)>>>;

impl Registry {
    /// Checks a job's plugin before any run: trust, pin, ABI, name, and its params as the
    /// plugin itself judges them. Errors name the job file's key at fault.
    pub fn check_job(
        &self,
        job: &crate::job::Job,
        config: &crate::config::Config,
        cache: &ProbeCache,
    ) -> Result<PluginDesc, (String, String)> {
        let held = self.snapshot(&job.plugin, job.plugin_sha256.as_deref()).map_err(|m| ("plugin".to_string(), m))?;
        let (snapshot, sha) = (&held.path, &held.sha256);
        let request = probe_request(job, config)?;
        let key = (sha.clone(), serde_json::to_string(&request).expect("probe request serialises"));
        let cached = cache.lock().expect("probe cache").get(&key).cloned();
        let result = match cached {
            Some(r) => r,
            None => {
                let (r, from_plugin) = probe_once(snapshot, &request);
                // Only the plugin's own verdict is kept: a probe that could not start or
                // timed out is tried again at the next reload.
                if from_plugin {
                    cache.lock().expect("probe cache").insert(key, r.clone());
                }
                r
            }
        };
        // Ops know the file they dropped in, not our snapshot of it.
        let snap = snapshot.display().to_string();
        let desc =
            result.map_err(|(field, message)| (field, message.replace(&snap, &job.plugin.display().to_string())))?;
        check_name(job, &desc)?;
        self.remember(&job.plugin, sha, &desc, None);
        Ok(desc)
    }
}

/// What a job's probe judges: the job with its registry references pinned to the current
/// versions (the probe checks those files), or, while a registry model it reads has no
/// version yet, the plugin and its params only (`check: false`; the first run checks the rest).
pub fn probe_request(job: &crate::job::Job, config: &crate::config::Config) -> Result<ProbeRequest, (String, String)> {
    match crate::models::pin(job, &config.data_dir) {
        Ok((pinned, _, _pins)) => Ok(ProbeRequest::for_job(&pinned, &config.onnxruntime)),
        Err(crate::models::ModelError::NoVersion(_)) => {
            let mut request = ProbeRequest::for_job(job, &config.onnxruntime);
            request.inputs.retain(|i| i.registry.is_none());
            request.check = false;
            Ok(request)
        }
        Err(e) => {
            let message = e.to_string();
            let field = if message.starts_with("inputs.") { "inputs" } else { "model" };
            Err((field.to_string(), message))
        }
    }
}

/// A job that names its plugin must get a file whose descriptor carries that name.
pub fn check_name(job: &crate::job::Job, desc: &PluginDesc) -> Result<(), (String, String)> {
    match &job.plugin_name {
        Some(want) if desc.name.replace('-', "_") != want.replace('-', "_") => Err((
            "plugin".into(),
            format!(
                "{} holds plugin `{}` (version {}), but the job names plugin `{want}`",
                job.plugin.display(),
                desc.name,
                desc.version
            ),
        )),
        _ => Ok(()),
    }
}

pub fn new_probe_cache() -> ProbeCache {
    Mutex::new(BTreeMap::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_need_free_space_and_half_written_copies_are_removed_at_start() {
        let data = tempfile::tempdir().unwrap();
        let plugins = tempfile::tempdir().unwrap();
        let file = plugins.path().join("librecd_x.so");
        fs::write(&file, b"version one").unwrap();
        let err = crate::fsutil::check_free_space(data.path(), u64::MAX).unwrap_err();
        assert!(err.starts_with(&format!("not enough free space in {}: ", data.path().display())), "{err}");
        let registry = Registry::new(data.path());
        let held = registry.snapshot(&file, None).unwrap();
        let snap_dir = data.path().join("plugins");
        let names: Vec<String> =
            fs::read_dir(&snap_dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, [format!("{}.so", held.sha256)], "only the snapshot, no temporary copy");
        // A copy left by a killed daemon is removed at the next start.
        fs::write(snap_dir.join(".abc.123.tmp"), b"half").unwrap();
        let _ = Registry::new(data.path());
        assert!(!snap_dir.join(".abc.123.tmp").exists());
    }

    #[test]
    fn snapshots_are_content_addressed_and_pins_checked() {
        let data = tempfile::tempdir().unwrap();
        let plugins = tempfile::tempdir().unwrap();
        let file = plugins.path().join("librecd_x.so");
        fs::write(&file, b"version one").unwrap();
        let old = SystemTime::now() - Duration::from_secs(10);
        fs::File::options().write(true).open(&file).unwrap().set_modified(old).unwrap();
        let reg = Registry::new(data.path());
        let one = reg.snapshot(&file, None).unwrap();
        let (snap, sha) = (one.path.clone(), one.sha256.clone());
        // sha256("version one"), computed independently with sha256sum
        assert_eq!(sha, "197c7c60ef8a8470a38d1a9212bdfde9cfe6fd4be910825fe6ac7880ac765d16");
        assert_eq!(fs::read(&snap).unwrap(), b"version one");
        let err = reg.snapshot(&file, Some("00")).unwrap_err();
        assert!(err.contains("but the job pins 00"), "{err}");
        fs::write(&file, b"version two").unwrap();
        let two = reg.snapshot(&file, None).unwrap();
        let (snap2, sha2) = (two.path.clone(), two.sha256.clone());
        assert_ne!(sha, sha2);
        assert_eq!(fs::read(&snap).unwrap(), b"version one", "a running worker's snapshot is untouched");
        assert_eq!(fs::read(&snap2).unwrap(), b"version two");
    }

    /// The reviewer's case: a long run of build one ends after a hot swap and a run of build
    /// two. `PLUGINS` must keep showing build two, and the last run by id; the time build
    /// two was first seen stays when it runs again.
    #[test]
    fn reports_about_an_older_build_or_an_earlier_run_change_nothing() {
        let data = tempfile::tempdir().unwrap();
        let plugins = tempfile::tempdir().unwrap();
        let file = plugins.path().join("librecd_x.so");
        let old = SystemTime::now() - Duration::from_secs(10);
        let write = |text: &str| {
            fs::write(&file, text).unwrap();
            fs::File::options().write(true).open(&file).unwrap().set_modified(old).unwrap();
        };
        let desc = |version: &str| PluginDesc { name: "x".into(), version: version.into(), abi: "1.3".into() };
        let reg = Registry::new(data.path());
        write("version one");
        let one = reg.snapshot(&file, None).unwrap(); // run 1 starts on build one
        write("version two");
        let two = reg.snapshot(&file, None).unwrap(); // run 2 starts on build two
        reg.remember(&file, &two.sha256, &desc("2"), Some(2));
        let seen_two = reg.list()[0].first_seen.clone();
        reg.remember(&file, &one.sha256, &desc("1"), Some(1)); // run 1 ends last
        let info = &reg.list()[0];
        assert_eq!((info.version.as_str(), info.sha256.as_str()), ("2", two.sha256.as_str()));
        assert_eq!(info.last_run, Some(LastRun { run_id: 2, sha256: two.sha256.clone() }));
        std::thread::sleep(Duration::from_millis(5));
        let again = reg.snapshot(&file, None).unwrap(); // run 3, same build
        reg.remember(&file, &again.sha256, &desc("2"), Some(3));
        let info = &reg.list()[0];
        assert_eq!(info.first_seen, seen_two, "a build is first seen once");
        assert_eq!(info.last_run.as_ref().map(|r| r.run_id), Some(3));
        // a probe after the file changed back: the file's build changes, its last run does not
        write("version one");
        let probed = reg.snapshot(&file, None).unwrap();
        reg.remember(&file, &probed.sha256, &desc("1"), None);
        let info = &reg.list()[0];
        assert_eq!((info.version.as_str(), info.sha256.as_str()), ("1", one.sha256.as_str()));
        assert_eq!(info.last_run, Some(LastRun { run_id: 3, sha256: two.sha256.clone() }));
    }

    /// A snapshot goes once nothing holds it and its file has moved on; the one a file has
    /// now stays for its next run, and one a run holds stays until the run ends.
    #[test]
    fn unused_snapshots_of_replaced_builds_are_removed() {
        let data = tempfile::tempdir().unwrap();
        let plugins = tempfile::tempdir().unwrap();
        let (a, b) = (plugins.path().join("librecd_a.so"), plugins.path().join("librecd_b.so"));
        let write = |file: &Path, text: &str| {
            fs::write(file, text).unwrap();
            let old = SystemTime::now() - Duration::from_secs(10);
            fs::File::options().write(true).open(file).unwrap().set_modified(old).unwrap();
        };
        let on_disk = || {
            let mut names: Vec<_> =
                fs::read_dir(data.path().join("plugins")).unwrap().map(|e| e.unwrap().path()).collect();
            names.sort();
            names
        };
        let reg = Registry::new(data.path());
        write(&a, "a1");
        write(&b, "b1");
        let a1 = reg.snapshot(&a, None).unwrap();
        drop(reg.snapshot(&b, None).unwrap());
        write(&a, "a2");
        let a2 = reg.snapshot(&a, None).unwrap();
        let mut want = vec![
            a1.path.clone(),
            a2.path.clone(),
            data.path().join("plugins").join(format!("{}.so", crate::fsutil::sha256_file(&b).unwrap())),
        ];
        want.sort();
        assert_eq!(on_disk(), want, "a1 is held by its run, b1 is b's latest");
        let a1_path = a1.path.clone();
        drop(a1);
        assert!(!a1_path.exists(), "a1: not held, and a has moved on to a2");
        drop(a2);
        assert!(on_disk().len() == 2, "a2 and b1 stay as their files' latest: {:?}", on_disk());
    }

    #[test]
    fn concurrent_snapshots_of_one_file_all_succeed() {
        let data = tempfile::tempdir().unwrap();
        let plugins = tempfile::tempdir().unwrap();
        let file = plugins.path().join("librecd_x.so");
        fs::write(&file, vec![7u8; 4 << 20]).unwrap();
        let old = SystemTime::now() - Duration::from_secs(10);
        fs::File::options().write(true).open(&file).unwrap().set_modified(old).unwrap();
        let reg = std::sync::Arc::new(Registry::new(data.path()));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (reg, file) = (reg.clone(), file.clone());
                std::thread::spawn(move || reg.snapshot(&file, None))
            })
            .collect();
        for t in threads {
            let snap = t.join().unwrap().expect("every snapshot succeeds");
            assert_eq!(fs::metadata(&snap.path).unwrap().len(), 4 << 20);
        }
    }
}
