//! Shared helpers: a `TestDaemon` in a temp dir with its own sockets, and paths to the
//! workspace's built artefacts and data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const RECD: &str = env!("CARGO_BIN_EXE_recd");

/// The workspace root (this test binary belongs to `daemon/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// Where cargo put `recd` and, beside it, the plugin libraries (`make test` builds them).
pub fn plugins_dir() -> PathBuf {
    Path::new(RECD).parent().expect("target dir").to_path_buf()
}

pub fn onnxruntime() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return PathBuf::from(p);
    }
    root().join(".deps/py/onnxruntime/capi/libonnxruntime.so.1.31.1")
}

/// sha256sum's answer for a file, as an independent hash.
pub fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum runs");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().expect("a hash").to_string()
}

/// A job file as shipped in `jobs/`, its relative data and model paths made absolute.
pub fn shipped_job(name: &str) -> String {
    let text = std::fs::read_to_string(root().join(format!("jobs/{name}.toml"))).expect("shipped job file");
    let r = root().display().to_string();
    text.replace("\"data/", &format!("\"{r}/data/")).replace("\"models/", &format!("\"{r}/models/"))
}

/// The ranking job as shipped, with extra lines appended (to its `[params]`).
pub fn ranking_job(extra_params: &str) -> String {
    format!("{}{extra_params}\n", shipped_job("ranking"))
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// (head, body) of `GET path` on a local HTTP port, sent with `Host: host`.
pub fn http_get_as(port: u16, host: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_string(), body.to_string())
}

/// (head, body) of `GET path` on a local HTTP port.
pub fn http_get(port: u16, path: &str) -> (String, String) {
    http_get_as(port, "localhost", path)
}

pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    env: Vec<(String, String)>,
    /// The recd executable `serve` runs from (default: cargo's).
    bin: PathBuf,
    /// Its `recd.toml`, read socket and admin socket.
    config: PathBuf,
    socket: PathBuf,
    admin_socket: PathBuf,
    /// The umask `serve` starts with (default: the test process's).
    umask: Option<u32>,
}

impl TestDaemon {
    /// Starts `recd serve` with the given job files (name, contents) in its jobs folder.
    pub fn start(jobs: &[(&str, &str)]) -> TestDaemon {
        Self::start_with(jobs, "")
    }

    /// Like `start`, with extra `recd.toml` lines.
    pub fn start_with(jobs: &[(&str, &str)], extra_config: &str) -> TestDaemon {
        Self::start_env(jobs, extra_config, &[])
    }

    /// Like `start_with`, with extra environment variables for the daemon.
    pub fn start_env(jobs: &[(&str, &str)], extra_config: &str, env: &[(&str, &str)]) -> TestDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
        for (name, text) in jobs {
            std::fs::write(dir.path().join("jobs").join(format!("{name}.toml")), text).unwrap();
        }
        let config = format!(
            "data_dir = \"data\"\nsocket = \"recd.sock\"\nadmin_socket = \"admin.sock\"\njobs_dir = \"jobs\"\nplugins_dir = \"{}\"\nonnxruntime = \"{}\"\n",
            plugins_dir().display(),
            onnxruntime().display()
        ) + extra_config;
        std::fs::write(dir.path().join("recd.toml"), config).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let at = dir.path().to_path_buf();
        let mut d = TestDaemon {
            child: None,
            env,
            bin: PathBuf::from(RECD),
            umask: None,
            config: at.join("recd.toml"),
            socket: at.join("recd.sock"),
            admin_socket: at.join("admin.sock"),
            dir,
        };
        d.spawn();
        d
    }

    /// Starts `recd serve` on a setup `recd init` wrote into `home` (inside `dir`, which
    /// the daemon keeps alive): its `recd.toml` and sockets in `var/`; the log goes to
    /// `dir/daemon.log`.
    pub fn start_init(dir: tempfile::TempDir, home: &Path) -> TestDaemon {
        let mut d = TestDaemon {
            child: None,
            env: Vec::new(),
            bin: PathBuf::from(RECD),
            umask: None,
            config: home.join("recd.toml"),
            socket: home.join("var/recd.sock"),
            admin_socket: home.join("var/recd-admin.sock"),
            dir,
        };
        d.spawn();
        d
    }

    /// Starts `bin serve --config config` as installed somewhere else (an unpacked
    /// package), its sockets where that config says; the log goes to `dir/daemon.log`.
    pub fn start_installed(
        dir: tempfile::TempDir,
        bin: &Path,
        config: &Path,
        socket: &Path,
        admin: &Path,
    ) -> TestDaemon {
        let mut d = TestDaemon {
            child: None,
            env: Vec::new(),
            bin: bin.to_path_buf(),
            umask: None,
            config: config.to_path_buf(),
            socket: socket.to_path_buf(),
            admin_socket: admin.to_path_buf(),
            dir,
        };
        d.spawn();
        d
    }

    /// Like `start`, the daemon started under `umask` (through `sh -c 'umask ..; exec ..'`,
    /// so the test process's own umask stays as it is).
    pub fn start_umask(jobs: &[(&str, &str)], umask: u32) -> TestDaemon {
        let mut d = Self::start_env(jobs, "", &[]);
        d.stop();
        d.umask = Some(umask);
        std::fs::remove_dir_all(d.dir.path().join("data")).unwrap();
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).unwrap();
        let mut command = match self.umask {
            None => Command::new(&self.bin),
            Some(mask) => {
                let mut sh = Command::new("sh");
                sh.arg("-c").arg(format!("umask {mask:03o} && exec \"$0\" \"$@\"")).arg(&self.bin);
                sh
            }
        };
        let child = command
            .args(["serve", "--config"])
            .arg(self.config())
            .env("RECD_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn recd serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Connect rather than look for the files: after a crash the old ones are still there.
        let up = |p: PathBuf| std::os::unix::net::UnixStream::connect(p).is_ok();
        while !(up(self.socket()) && up(self.admin_socket())) {
            assert!(Instant::now() < deadline, "daemon did not start:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn config(&self) -> PathBuf {
        self.config.clone()
    }
    pub fn socket(&self) -> PathBuf {
        self.socket.clone()
    }
    pub fn admin_socket(&self) -> PathBuf {
        self.admin_socket.clone()
    }
    pub fn jobs_dir(&self) -> PathBuf {
        self.config.parent().expect("the config's folder").join("jobs")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs `recd <args> --config <ours>` as an ops user would.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(RECD).args(args).arg("--config").arg(self.config()).output().expect("run recd cli")
    }

    /// `recd verify`, asserting that every table's stored rows match what was published;
    /// `context` says where the test was.
    pub fn assert_verified(&self, context: &str) {
        let verify = self.cli(&["verify"]);
        assert!(
            verify.status.success(),
            "{context}: {}{}\n--- daemon log ---\n{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr),
            self.log()
        );
    }

    /// `recd run JOB`, asserting success.
    pub fn run_job(&self, job: &str) -> String {
        let out = self.cli(&["run", job]);
        assert!(
            out.status.success(),
            "recd run {job} failed: {}\n--- daemon log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn redis(&self) -> redis::Connection {
        let url = format!("redis+unix://{}", self.socket().display());
        redis::Client::open(url).unwrap().get_connection().expect("redis connection")
    }

    pub fn admin(&self) -> redis::Connection {
        let url = format!("redis+unix://{}", self.admin_socket().display());
        redis::Client::open(url).unwrap().get_connection().expect("admin connection")
    }

    /// `redis-cli -s <socket> <args>`: stdout as text.
    pub fn redis_cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .expect("redis-cli (make setup installs redis-tools)");
        assert!(out.status.success(), "redis-cli failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The job's run history, newest first, via the admin socket.
    pub fn history(&self, job: &str) -> Vec<serde_json::Value> {
        let mut admin = self.admin();
        let text: String = redis::cmd("HISTORY").arg(job).arg(100).query(&mut admin).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Replaces a job file the way editors do: write a temp file, rename it over.
    pub fn write_job(&self, name: &str, text: &str) {
        let tmp = self.jobs_dir().join(format!(".{name}.toml.swp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.jobs_dir().join(format!("{name}.toml"))).unwrap();
    }

    /// Polls `f` every 50 ms until it returns Some, or fails after `secs` seconds.
    pub fn wait_for<T>(&self, what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}\n--- daemon log ---\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the daemon and starts it again from another copy of the executable.
    pub fn restart_from(&mut self, bin: &Path) {
        self.stop();
        self.bin = bin.to_path_buf();
        self.spawn();
    }

    /// Starts the daemon again on the same folder (after `stop`).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the daemon first");
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL: the daemon gets no chance to clean up (its workers see their pipes close).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits; returns whether it exited with status 0.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
