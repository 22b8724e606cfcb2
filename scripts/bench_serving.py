#!/usr/bin/env python3
"""Serving benchmark: recd against a local redis-server holding the same lists.

Run with ``make bench-serving`` (it builds the workspace first), or, once built:

    python3 scripts/bench_serving.py [--users N] [--items N] [--scale F] [--keep] [--no-doc]

Python standard library only. The script:

1. makes a work folder under ``target/bench-serving/`` (git-ignored) with a ``recd.toml``
   and one job file, ``synthetic.toml`` (the ``synthetic`` test plugin,
   ``tests/plugins/synthetic``: ``--users`` users named as redis-benchmark renders
   ``__rand_int__``, 12-digit zero-padded, with ``--items`` items each), starts
   ``target/release/recd serve`` and runs the job with ``recd run``;
2. starts ``redis-server`` on a Unix socket (no port, no persistence) and fills it from
   recd: each user's list is read with ``GET bench:<user>`` (JSON) and written with
   ``ZADD bench:<user> <score> <item> ...`` plus ``SET json:<user> <the same JSON>``
   through ``redis-cli --pipe``;
3. checks that both servers give byte-identical replies for a sample of users;
4. runs redis-benchmark for every row (``ZREVRANGE <key> 0 9 WITHSCORES`` and ``GET <key>``,
   1 and 50 clients, without and with ``-P 16``), against recd and against Redis one
   after the other, random users with ``-r <users>``;
5. runs the hot-key rows (unless ``--no-hot-keys``): ``recd-loadgen`` (``benches/loadgen``,
   one client for both servers) reads one key, Zipf-distributed keys and, as a check of the
   client against redis-benchmark, uniform keys, 1 and 50 clients, pinned and not;
6. prints the tables and writes them, with the machine and the method, to
   ``docs/performance.md`` (unless ``--no-doc``).

Every process it starts is stopped (SIGTERM, then SIGKILL) whatever happens, by its own
pid. The work folder is removed at the end unless ``--keep`` or a failure (then it holds
the logs). Exit status 1 on any failure: a server that does not start, a failed run,
replies that differ, a redis-benchmark error.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECD = ROOT / "target" / "release" / "recd"
PLUGIN = ROOT / "target" / "release" / "librecd_synthetic.so"
LOADGEN = ROOT / "target" / "release" / "recd-loadgen"
ORT = ROOT / ".deps" / "py" / "onnxruntime" / "capi" / "libonnxruntime.so.1.31.1"
DOC = ROOT / "docs" / "performance.md"
TABLE = "bench"
PIPELINE = 16


class Fail(Exception):
    pass


def log(msg: str) -> None:
    print(f"bench-serving: {msg}", flush=True)


# ---------------------------------------------------------------- RESP over a Unix socket


def encode(args: list[bytes]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


class Conn:
    """A minimal pipelining RESP2 client: send many requests, then read the replies."""

    def __init__(self, path: Path, timeout: float = 120.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = bytearray()
        self.pos = 0

    def close(self) -> None:
        self.sock.close()

    def send(self, requests: list[list[bytes]]) -> None:
        """Sends the requests in one write, after dropping the replies already read."""
        del self.buf[: self.pos]
        self.pos = 0
        self.sock.sendall(b"".join(encode(r) for r in requests))

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise Fail("the server closed the connection")
        self.buf += chunk

    def _line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n", self.pos)
            if end >= 0:
                line = bytes(self.buf[self.pos : end])
                self.pos = end + 2
                return line
            self._fill()

    def _take(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n + 2:
            self._fill()
        data = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n + 2
        return data

    def reply(self):
        """One reply: bytes, int, None (null), a list, or ("err", text) for an error reply."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            return ("err", rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._take(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise Fail(f"unexpected reply line {line[:80]!r}")

    def call(self, *args: str | bytes):
        self.send([[a.encode() if isinstance(a, str) else a for a in args]])
        return self.reply()


def wait_for_socket(path: Path, proc: subprocess.Popen, what: str, logfile: Path, secs: float = 30) -> None:
    deadline = time.monotonic() + secs
    while True:
        try:
            c = Conn(path, timeout=2)
            if c.call("PING") == b"PONG":
                c.close()
                return
            c.close()
        except OSError:
            pass
        if proc.poll() is not None:
            raise Fail(f"{what} exited with status {proc.returncode}:\n{tail(logfile)}")
        if time.monotonic() > deadline:
            raise Fail(f"{what} did not answer PING on {path} within {secs}s:\n{tail(logfile)}")
        time.sleep(0.05)


def pct(xs: list[float], q: float) -> float:
    """The q-quantile of xs, nearest rank."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- processes


class Procs:
    """Processes this script started; stop() ends each by its pid."""

    def __init__(self):
        self.started: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], logfile: Path, **kw) -> subprocess.Popen:
        out = open(logfile, "wb")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
        out.close()
        self.started.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 20) -> int | None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self) -> None:
        for _, proc in reversed(self.started):
            self.stop(proc)


# ---------------------------------------------------------------- the machine


DOC_HEAD = """# Performance

Measured, never typed in: each section below is written by its benchmark command and
replaced when that command runs again (the other sections are left as they are).

- `make bench-serving`: reads over the socket, recd vs `redis-server` (redis-benchmark), and
  hot keys (recd-loadgen).
- `make bench-batch`: whole jobs vs the Python pipeline, the scoring stage vs ONNX
  Runtime's own loop, and peak memory as users grow.
"""


def write_section(doc: Path, name: str, section: str) -> None:
    """Replaces the `<!-- name: begin -->` ... `<!-- name: end -->` part of `doc` (or adds
    it at the end), keeping every other section."""
    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    text = doc.read_text() if doc.exists() else ""
    if not text.startswith("# Performance"):
        text = DOC_HEAD  # the single-benchmark layout before sections: start afresh
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail_ = rest.split(end, 1)
        text = head + section.strip("\n") + tail_
    else:
        text = text.rstrip("\n") + "\n\n" + section.strip("\n") + "\n"
    doc.write_text(text)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass

    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return "unknown"

    commit = out(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = out(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "ram": mem,
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "redis": out(["redis-server", "--version"]),
        "benchmark": out(["redis-benchmark", "--version"]),
        "commit": commit + (" (with uncommitted changes to tracked files)" if dirty else ""),
    }


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


# ---------------------------------------------------------------- steps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_recd(procs: Procs, work: Path, users: int, items: int, seed: int) -> tuple[Path, Path, int]:
    """recd serving the synthetic table, with the dashboard on (the dashboard rows poll it;
    the other rows leave it idle). Its socket, config and HTTP port."""
    (work / "jobs").mkdir()
    port = free_port()
    (work / "recd.toml").write_text(
        'data_dir = "data"\n'
        'socket = "recd.sock"\n'
        'admin_socket = "admin.sock"\n'
        'jobs_dir = "jobs"\n'
        f'plugins_dir = "{RECD.parent}"\n'
        f'onnxruntime = "{ORT}"\n'
        f'metrics_listen = "127.0.0.1:{port}"\n'
        "dashboard = true\n"
    )
    (work / "jobs" / "synthetic.toml").write_text(
        "# the serving benchmark's table: made-up lists, no schedule (run by the script)\n"
        'description = "synthetic lists for make bench-serving"\n'
        'plugin = "synthetic"\n'
        f'table = "{TABLE}"\n'
        f"max_items_per_user = {items}\n"
        "[params]\n"
        f"users = {users}\n"
        f"items = {items}\n"
        f"seed = {seed}\n"
    )
    config = work / "recd.toml"
    proc = procs.start(
        "recd serve",
        [str(RECD), "serve", "--config", str(config)],
        work / "recd.log",
        env={**os.environ, "RECD_LOG": "info"},
    )
    wait_for_socket(work / "recd.sock", proc, "recd serve", work / "recd.log")
    wait_for_socket(work / "admin.sock", proc, "recd serve (admin socket)", work / "recd.log")
    log(f"recd serve is up (pid {proc.pid}); running the synthetic job ({users} users x {items} items)")
    t0 = time.monotonic()
    run = subprocess.run([str(RECD), "run", "synthetic", "--config", str(config)], capture_output=True, text=True)
    if run.returncode != 0:
        raise Fail(f"recd run synthetic failed ({run.returncode}):\n{run.stderr}{run.stdout}\n{tail(work / 'recd.log')}")
    log(f"{run.stdout.strip()} [{time.monotonic() - t0:.1f}s wall]")
    return work / "recd.sock", config, port


def start_redis(procs: Procs, work: Path) -> Path:
    sock = work / "redis.sock"
    proc = procs.start(
        "redis-server",
        [
            "redis-server",
            "--port", "0",
            "--unixsocket", str(sock),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(work),
        ],
        work / "redis.log",
    )
    wait_for_socket(sock, proc, "redis-server", work / "redis.log")
    log(f"redis-server is up (pid {proc.pid})")
    return sock


ITEM_RE = re.compile(rb'\{"item":"((?:[^"\\]|\\.)*)","score":([^}]*)\}')


def measure_memory(procs: Procs, work: Path, redis_sock: Path) -> dict:
    """recd's resident memory, its store's size on disk and Redis's own count of its data."""
    recd = next(proc for name, proc in procs.started if name == "recd serve")
    status = Path(f"/proc/{recd.pid}/status").read_text()
    rss_kb = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
    store = sum(f.stat().st_size for f in (work / "data").rglob("*") if f.is_file())
    conn = Conn(redis_sock)
    info = conn.call("INFO", "memory").decode()
    conn.close()
    used = int(re.search(r"^used_memory:(\d+)", info, re.M).group(1))
    return {"recd_rss_mb": rss_kb // 1024, "store_mb": store >> 20, "redis_mb": used >> 20}


def fill_redis(recd_sock: Path, redis_sock: Path, users: int, items: int) -> None:
    """Reads every list from recd (GET, JSON) and writes it to Redis: ZADD + SET json:."""
    t0 = time.monotonic()
    pipe = subprocess.Popen(
        ["redis-cli", "-s", str(redis_sock), "--pipe"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    recd = Conn(recd_sock)
    bulk: dict[bytes, bytes] = {}  # member or score text -> its RESP bulk (few distinct values)

    def b(x: bytes) -> bytes:
        piece = bulk.get(x)
        if piece is None:
            piece = bulk[x] = b"$%d\r\n%s\r\n" % (len(x), x)
        return piece

    zadd_head = b"*%d\r\n$4\r\nZADD\r\n" % (2 + 2 * items)
    try:
        batch = 2000
        for first in range(0, users, batch):
            names = [b"%012d" % u for u in range(first, min(first + batch, users))]
            recd.send([[b"GET", b"%s:%s" % (TABLE.encode(), n)] for n in names])
            out = []
            for n in names:
                text = recd.reply()
                if not isinstance(text, bytes):
                    raise Fail(f"GET {TABLE}:{n.decode()} on recd answered {text!r}")
                pairs = ITEM_RE.findall(text)
                if len(pairs) != items or any(b"\\" in m for m, _ in pairs):
                    raise Fail(f"GET {TABLE}:{n.decode()}: expected {items} plain items, got {text[:200]!r}")
                key = b"%s:%s" % (TABLE.encode(), n)
                out.append(zadd_head + b"$%d\r\n%s\r\n" % (len(key), key))
                out.append(b"".join(b(s) + b(m) for m, s in pairs))
                out.append(encode([b"SET", b"json:" + n, text]))
            assert pipe.stdin is not None
            pipe.stdin.write(b"".join(out))
        assert pipe.stdin is not None
        pipe.stdin.close()
        report = pipe.stdout.read().decode(errors="replace") if pipe.stdout else ""
        if pipe.wait() != 0 or "errors: 0," not in report:
            raise Fail(f"redis-cli --pipe failed:\n{report}")
    finally:
        recd.close()
        if pipe.poll() is None:
            pipe.kill()
            pipe.wait()
    log(f"redis-server filled from recd in {time.monotonic() - t0:.1f}s ({report.strip().splitlines()[-1]})")


def check_same(recd_sock: Path, redis_sock: Path, users: int, items: int) -> int:
    """Byte-identical replies on a sample of users; returns how many users were compared."""
    a, r = Conn(recd_sock), Conn(redis_sock)
    try:
        dbsize = r.call("DBSIZE")
        if dbsize != 2 * users:
            raise Fail(f"redis-server holds {dbsize} keys, expected {2 * users}")
        info = a.call("INFO")
        want = f"table_{TABLE}:version=1,users={users},rows={users * items},"
        if not isinstance(info, bytes) or want not in info.decode():
            raise Fail(f"recd INFO has no `{want}`:\n{info!r}")
        rng = random.Random(7)
        sample = sorted({0, users - 1, *(rng.randrange(users) for _ in range(200))})

        for u in sample:
            name = f"{u:012d}"
            for ours, theirs in [
                (["ZREVRANGE", f"{TABLE}:{name}", "0", "9", "WITHSCORES"],) * 2,
                (["ZREVRANGE", f"{TABLE}:{name}", "0", "-1", "WITHSCORES"],) * 2,
                (["ZCARD", f"{TABLE}:{name}"],) * 2,
                (["GET", f"{TABLE}:{name}"], ["GET", f"json:{name}"]),
            ]:
                x, y = exact(a, ours), exact(r, theirs)
                if x != y:
                    raise Fail(f"{' '.join(ours)} differs:\n recd:  {x[:300]!r}\n redis: {y[:300]!r}")
        # a user outside the table is missing on both
        for ours, theirs in [(["GET", f"{TABLE}:{users:012d}"], ["GET", f"json:{users:012d}"])]:
            if exact(a, ours) != exact(r, theirs):
                raise Fail("a missing key answers differently")
        return len(sample)
    finally:
        a.close()
        r.close()


def exact(conn: Conn, args: list[str]) -> bytes:
    """One request's reply as the exact bytes the server wrote."""
    conn.send([[x.encode() for x in args]])  # drops what was read before: the reply starts at 0
    conn.reply()
    return bytes(conn.buf[: conn.pos])


def cpu_split() -> tuple[set[int], set[int]] | None:
    """(client CPUs, server CPUs): the lowest CPU for redis-benchmark, the others for the
    server under test; None on a single CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return {cpus[0]}, set(cpus[1:])


def pin(pid: int, cpus: set[int]) -> None:
    """Pins every thread of `pid` to `cpus` (threads it starts later inherit the mask)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except ProcessLookupError:
            pass  # a thread that ended meanwhile


def benchmark(sock: Path, clients: int, pipeline: int, requests: int, users: int, cmd: list[str],
              client_cpus: set[int] | None = None) -> dict:
    argv = [
        "redis-benchmark", "-s", str(sock),
        "-c", str(clients), "-n", str(requests), "-r", str(users), "-P", str(pipeline),
        "--csv", *cmd,
    ]
    return measure(argv, client_cpus)


def measure(argv: list[str], client_cpus: set[int] | None) -> dict:
    """Runs a client that prints redis-benchmark's --csv form (redis-benchmark itself, or
    recd-loadgen), on `client_cpus` when given; its rate and latencies."""
    t0 = time.monotonic()
    pin_client = (lambda: os.sched_setaffinity(0, client_cpus)) if client_cpus else None
    run = subprocess.run(argv, capture_output=True, text=True, timeout=600, preexec_fn=pin_client)
    wall = time.monotonic() - t0
    rows = [r for r in csv.reader(io.StringIO(run.stdout)) if r]
    if run.returncode != 0 or len(rows) < 2 or rows[0][:2] != ["test", "rps"]:
        raise Fail(f"{' '.join(argv)} failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    head, values = rows[0], rows[-1]
    got = dict(zip(head, values))
    return {
        "rps": float(got["rps"]),
        "avg": float(got["avg_latency_ms"]),
        "p50": float(got["p50_latency_ms"]),
        "p95": float(got["p95_latency_ms"]),
        "p99": float(got["p99_latency_ms"]),
        "max": float(got["max_latency_ms"]),
        "wall": wall,
        "stderr": run.stderr.strip(),
        "argv": argv,
    }


def loadgen(sock: Path, clients: int, requests: int, keys: int, dist: str, command: str, prefix: str,
            client_cpus: set[int] | None = None) -> dict:
    """One recd-loadgen run; its output has redis-benchmark's --csv form."""
    argv = [str(LOADGEN), "--socket", str(sock), "--clients", str(clients), "--requests", str(requests),
            "--keys", str(keys), "--dist", dist, "--command", command, "--prefix", prefix]
    return measure(argv, client_cpus)


def summarise(row: dict, runs: dict[str, list[dict]]) -> dict:
    """`row` with each server's medians over its runs, the recd / Redis ratios and whether
    both targets are met (req/s at least Redis's, p99 no worse)."""
    for who, got in runs.items():
        row[who] = {k: statistics.median(r[k] for r in got) for k in ("rps", "p50", "p99")}
        row[who]["rounds"] = got
    a, r = row["recd"], row["redis"]
    row["rps_ratio"] = a["rps"] / r["rps"]
    row["p99_ratio"] = a["p99"] / r["p99"] if r["p99"] > 0 else float("inf")
    row["met"] = a["rps"] >= r["rps"] and a["p99"] <= r["p99"]
    return row


HOT_DISTS = [("one key", "one"), ("Zipf s=1", "zipf:1"), ("uniform", "uniform")]


def hot_key_rows(recd_sock: Path, redis_sock: Path, procs, users: int, requests: int, rounds: int,
                 split) -> list[dict]:
    """recd vs Redis under recd-loadgen, every key choice, 1 and 50 clients, pinned (client
    on one CPU, servers on the others) and not."""
    rows = []
    i = 0
    all_cpus = set(os.sched_getaffinity(0))
    for pinned in ([True, False] if split else [False]):
        for _, proc in procs.started:
            pin(proc.pid, split[1] if pinned else all_cpus)
        client_cpus = split[0] if pinned else None
        for label, command, recd_prefix, redis_prefix in [
            ("ZREVRANGE <key> 0 9 WITHSCORES", "zrevrange", f"{TABLE}:", f"{TABLE}:"),
            ("GET <key>", "get", f"{TABLE}:", "json:"),
        ]:
            for keys_label, dist in HOT_DISTS:
                for clients in (1, 50):
                    runs: dict[str, list[dict]] = {"recd": [], "redis": []}
                    for _ in range(rounds):
                        order = [("recd", recd_sock, recd_prefix), ("redis", redis_sock, redis_prefix)]
                        if i % 2:
                            order.reverse()
                        i += 1
                        for who, sock, prefix in order:
                            res = loadgen(sock, clients, requests, users, dist, command, prefix, client_cpus)
                            runs[who].append(res)
                            log(f"{who:5} {label} {keys_label} -c {clients} {'pinned' if pinned else 'unpinned'}: "
                                f"{fmt_rps(res['rps'])} req/s, p99 {res['p99']:.3f} ms")
                    row = {"label": label, "keys": keys_label, "clients": clients, "pinned": pinned}
                    rows.append(summarise(row, runs))
    if split:  # back to the placement of the main rows
        for _, proc in procs.started:
            pin(proc.pid, split[1])
    return rows


class Poller:
    """Polls the dashboard's endpoints as fast as a page would never do (the overview and a
    user lookup every `interval` seconds) on a thread placed on `cpus` (the client's), so
    its own work does not land on the server's CPU."""

    def __init__(self, port: int, users: int, cpus: set[int] | None, interval: float = 0.1):
        self.port, self.users, self.cpus, self.interval = port, users, cpus, interval
        self.stop = threading.Event()
        self.polls = 0
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)
        rng = random.Random(7)
        try:
            while not self.stop.is_set():
                user = f"{rng.randrange(self.users):012d}"
                for path in ("/api/overview", f"/api/user?id={user}"):
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
                        r.read()
                    self.polls += 1
                self.stop.wait(self.interval)
        except OSError as e:
            self.error = str(e)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        if self.error:
            raise Fail(f"polling the dashboard failed: {self.error}")


def read_latency(port: int) -> tuple[list[tuple[float, float]], float]:
    """recd's own read-latency histogram (`recd_read_latency_seconds` on /metrics): its
    cumulative buckets and its sum."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    buckets, total = [], 0.0
    for line in text.splitlines():
        if line.startswith('recd_read_latency_seconds_bucket{le="'):
            le = line.split('"')[1]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith("recd_read_latency_seconds_sum "):
            total = float(line.rsplit(" ", 1)[1])
    return buckets, total


def daemon_latency(before, after) -> dict:
    """Between two readings of the histogram: the mean read latency the daemon measured
    (from the serving turn that answered a request to its reply written: what the client's own scheduling
    cannot touch) and the bucket bound its 99th percentile falls under."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after[0], before[0])]
    n = counts[-1][1]
    p99 = next(le for le, c in counts if c >= 0.99 * n)
    return {"srv_mean_us": (after[1] - before[1]) / n * 1e6, "srv_p99_ms": p99 * 1e3}


def dashboard_rows(recd_sock: Path, port: int, users: int, requests: int, rounds: int, split) -> list[dict]:
    """recd alone, 50 clients on uniform keys, with the dashboard idle and while it is polled
    every 100 ms, alternating; the servers as the main rows place them."""
    client_cpus = split[0] if split else None
    rows = []
    for label, command in [("ZREVRANGE <key> 0 9 WITHSCORES", "zrevrange"), ("GET <key>", "get")]:
        runs: dict[str, list[dict]] = {"quiet": [], "polled": []}
        for i in range(rounds):
            for who in (["quiet", "polled"] if i % 2 == 0 else ["polled", "quiet"]):
                before = read_latency(port)
                poller = Poller(port, users, client_cpus) if who == "polled" else None
                with poller or contextlib.nullcontext():
                    res = loadgen(recd_sock, 50, requests, users, "uniform", command, f"{TABLE}:", client_cpus)
                if poller:
                    res["polls_per_s"] = poller.polls / res["wall"]
                res.update(daemon_latency(before, read_latency(port)))
                runs[who].append(res)
                log(f"recd  {label} uniform -c 50, dashboard {who}: {fmt_rps(res['rps'])} req/s, p99 {res['p99']:.3f} ms")
        row = {"label": label}
        for who, got in runs.items():
            row[who] = {k: statistics.median(r[k] for r in got) for k in ("rps", "p99", "srv_mean_us", "srv_p99_ms")}
        row["polls_per_s"] = statistics.median(r["polls_per_s"] for r in runs["polled"])
        row["rps_ratio"] = row["polled"]["rps"] / row["quiet"]["rps"]
        row["p99_ratio"] = row["polled"]["p99"] / row["quiet"]["p99"]
        rows.append(row)
    return rows


def markdown_table(columns: str, aligns: str, rows: list[list[str]]) -> list[str]:
    """A Markdown table: `columns` and `aligns` separated by "|" (aligns: "l" left, "r"
    right), then one line per row of cells."""
    align = {"l": "---", "r": "--:"}
    return [
        "| " + " | ".join(c.strip() for c in columns.split("|")) + " |",
        "|" + "|".join(align[a.strip()] for a in aligns.split("|")) + "|",
        *("| " + " | ".join(cells) + " |" for cells in rows),
    ]


def met_text(row: dict) -> str:
    return "met" if row["met"] else "**NOT met**"


def render_dashboard_rows(rows: list[dict]) -> list[str]:
    return markdown_table(
        "command | keys | clients | idle req/s | polled req/s | req/s ratio | client p99 ms idle / polled"
        " | daemon mean µs idle / polled | daemon p99 ≤ ms idle / polled | dashboard requests/s",
        "l|l|r|r|r|r|r|r|r|r",
        [
            [f"`{r['label']}`", "uniform", "50", fmt_rps(q["rps"]), fmt_rps(p["rps"]), f"{r['rps_ratio']:.2f}",
             f"{q['p99']:.3f} / {p['p99']:.3f}", f"{q['srv_mean_us']:.1f} / {p['srv_mean_us']:.1f}",
             f"{q['srv_p99_ms']:g} / {p['srv_p99_ms']:g}", f"{r['polls_per_s']:.1f}"]
            for r in rows
            for q, p in [(r["quiet"], r["polled"])]
        ],
    )


def render_hot_rows(results: list[dict]) -> list[str]:
    return markdown_table(
        "command | keys | clients | pinned | recd req/s | Redis req/s | req/s ratio | recd p99 ms"
        " | Redis p99 ms | p99 ratio | targets",
        "l|l|r|l|r|r|r|r|r|r|l",
        [
            [f"`{row['label']}`", row["keys"], str(row["clients"]), "yes" if row["pinned"] else "no",
             fmt_rps(a["rps"]), fmt_rps(r["rps"]), f"{row['rps_ratio']:.2f}",
             f"{a['p99']:.3f}", f"{r['p99']:.3f}", f"{row['p99_ratio']:.2f}", met_text(row)]
            for row in results
            for a, r in [(row["recd"], row["redis"])]
        ],
    )


# Why GET with 50 clients trails: what profiling found (perf on both servers' serving
# threads, same client, 2026-12-05). Fixed text: the run above measures, this explains.
HOT_GET_NOTE = [
    "Where GET stands (profiled with `perf` on 2026-12-05): both servers make one read and one",
    "write per request and spend about four fifths of their CPU in the kernel's Unix-socket",
    "code.",
    "Three differences were found and fixed, each measured side by side against the build",
    "before it. (1) A 3.7 kB list is copied into the reply in 2 kB chunks (glibc's `memcpy`",
    "takes a slow path on this CPU above 2112 bytes: see `daemon/src/resp.rs`) instead of sent",
    "by a `writev` of the stored value: GET of one key from 153k to 167k requests/s. (2) Each",
    "read connection was a tokio task: every request took a wake and two polls of a task and",
    "its futures, and recd's serving thread spent more time in user space than Redis's (925",
    "and 979 samples against 657 and 827, for the same 400,000 GETs of one key with 50",
    "clients, `perf` at 2 kHz). The read socket is now served by one event loop per serving",
    "thread, in Redis's order (read and answer every ready connection, then write every",
    "answer): 502 and 647 samples. Side by side, pinned, GET of one key: 234k requests/s as",
    "tasks, 261k as a loop, Redis 239k (50 clients); 25.2k, 24.9k and 20.9k (1 client). The",
    "loop registers each connection for writes too, as tokio did; registered for reads only,",
    "as Redis does, it served one client 20.7k requests/s, since a reply read no longer woke",
    "the thread before the next request came. (3) Faster than Redis, recd's thread ran out of",
    "work more often and slept: 0.08-0.22 times per request under redis-benchmark (50",
    "clients), Redis's 0.005-0.08. Each sleep makes the client's next write wake the thread,",
    "and on this VM (the guest halts an idle CPU at once) redis-benchmark's `send` spent 11% of",
    "its time waking recd against 6% waking Redis: the client, the bottleneck of the rows",
    "with 50 clients and no pipeline, served fewer requests. The thread now looks for",
    "requests for a window that follows the gaps between them (up to 50 µs,",
    "`busy_poll_microseconds`; see docs/operations.md) before it sleeps. Side by side,",
    "redis-benchmark `-c 50 -P 1`, pinned: GET 115.6k requests/s without it, 132.0k with it,",
    "Redis 123.7k (the client's CPU per request 8.40, 7.35 and 7.85 µs); ZREVRANGE 109.6k,",
    "126.4k and 109.5k. One client, GET of one key: 26.3k, 42.7k and 21.7k, for 15.7, 22.8",
    "and 20.3 µs of the serving thread's CPU per request.",
]


def render_hot_doc(results, meta, dashboard) -> str:
    met = sum(1 for r in results if r["met"])
    dash = [] if not dashboard else [
        "",
        "### Reads while the dashboard is polled",
        "",
        "recd alone, the same client and lists, with the dashboard (`dashboard = true`, on",
        "`metrics_listen`) idle and while a poller reads `/api/overview` and one user's",
        "`/api/user` every 100 ms (the page itself polls every 5 s), alternating, medians. The",
        "poller runs on the client's CPU when pinned, so its bursts also delay the client: the",
        "client's p99 counts that. The daemon's own read latency (`recd_read_latency_seconds`,",
        "from the serving turn that answered a request to its reply written, read from `/metrics` around each run)",
        "does not; its p99 is the histogram bucket bound it falls under. The listener and the",
        "dashboard run on a thread of their own at nice 19.",
        "",
        *render_dashboard_rows(dashboard),
    ]
    return "\n".join(
        [
            "<!-- bench-hot-keys: begin -->",
            "## Serving hot keys: recd vs redis-server",
            "",
            "Generated by `make bench-serving` with the table above (same run, same servers, same",
            "lists): do not edit by hand. Real traffic is not uniform: a fallback's `__default__`",
            "list is read for every unknown user, and a few popular users read far more than the",
            "rest. redis-benchmark can only pick keys uniformly (`-r`), so these rows use",
            "`recd-loadgen` (`benches/loadgen`), one client for both servers: a single-threaded",
            "event loop like redis-benchmark's, each connection one request at a time, latency from",
            "the write to the whole reply. Keys: **one key** (`bench:000000000000` only), **Zipf s=1**",
            f"over all {meta['users']:,} users (key rank r read with weight 1/r: the hottest key takes",
            f"{100 / sum(1 / r for r in range(1, meta['users'] + 1)):.1f}% of reads), and **uniform**, the",
            "same key choice as the table above, to show this client measures as redis-benchmark",
            "does. GET reads `json:<user>` on Redis, as above. **Pinned**: the client on one CPU,",
            "both servers on the others; not pinned: everything on every CPU.",
            f"{meta['hot_requests']:,} requests per run, {meta['rounds']} runs per row and server",
            "(alternating who goes first), medians.",
            "",
            *render_hot_rows(results),
            "",
            f"**{met} of {len(results)} rows meet both targets** (req/s ratio ≥ 1.0 and p99 ratio ≤ 1.0).",
            "",
            *HOT_GET_NOTE,
            *dash,
            "<!-- bench-hot-keys: end -->",
        ]
    )


# ---------------------------------------------------------------- report


def fmt_rps(x: float) -> str:
    return f"{x:,.0f}"


def render_rows(results: list[dict]) -> list[str]:
    return markdown_table(
        "command | clients | pipeline | recd req/s | Redis req/s | req/s ratio | recd p50 ms | Redis p50 ms"
        " | recd p99 ms | Redis p99 ms | p99 ratio | targets",
        "l|r|r|r|r|r|r|r|r|r|r|l",
        [
            [f"`{row['label']}`", str(row["clients"]), str(row["pipeline"]),
             fmt_rps(a["rps"]), fmt_rps(r["rps"]), f"{row['rps_ratio']:.2f}",
             f"{a['p50']:.3f}", f"{r['p50']:.3f}", f"{a['p99']:.3f}", f"{r['p99']:.3f}", f"{row['p99_ratio']:.2f}",
             met_text(row)]
            for row in results
            for a, r in [(row["recd"], row["redis"])]
        ],
    )


def render_doc(results, m, meta) -> str:
    met = sum(1 for r in results if r["met"])
    n_unpiped, n_piped = meta["requests"]
    return "\n".join(
        [
            "<!-- bench-serving: begin -->",
            "## Serving: recd vs redis-server",
            "",
            "Generated by `make bench-serving` (`scripts/bench_serving.py`): do not edit by hand, run it",
            "again. It compares recd with a local `redis-server` holding the same lists, both on Unix",
            "sockets, measured by `redis-benchmark` in one run on one machine.",
            "",
            f"### Result ({meta['date']})",
            "",
            f"{meta['users']:,} users × {meta['items']} items. Latencies in milliseconds as redis-benchmark",
            "reports them. *req/s ratio* is recd / Redis (higher is better for recd), *p99 ratio* is",
            "recd p99 / Redis p99 (lower is better for recd).",
            "",
            *render_rows(results),
            "",
            "**Targets**, per row: throughput ratio ≥ 1.0 (recd serves at least as many requests per",
            "second as Redis) and recd's p99 latency no worse than Redis's (p99 ratio ≤ 1.0).",
            f"**{met} of {len(results)} rows meet both.**",
            "" if met == len(results) else "Rows marked NOT met miss at least one of the two targets.",
            "",
            "### Machine",
            "",
            f"- CPU: {m['cpu']}, {m['cores']} cores (as the kernel reports them; a virtual machine)",
            f"- RAM: {m['ram']}",
            f"- Kernel: {m['kernel']}",
            f"- Redis: `{m['redis']}`",
            f"- Benchmark client: `{m['benchmark']}`",
            f"- recd: commit `{m['commit']}`, release build (`cargo build --release --workspace --all-targets`)",
            f"- Load average (1, 5, 15 min) before the run: {meta['load_before']}; after: {meta['load_after']}.",
            "  The machine is shared with other work, so the numbers carry noise from it; the",
            "  benchmark client and the servers run on one machine (CPU placement: see Method).",
            f"- Whole run (start of recd to the last benchmark): {meta['run_time']:.0f} s.",
            f"- recd memory (RSS) after the run: {meta['recd_rss_mb']:,} MiB; Redis `used_memory`: {meta['redis_mb']:,} MiB.",
            "",
            "### Method",
            "",
            "Data. The `synthetic` test plugin (`tests/plugins/synthetic`) publishes table `bench`:",
            f"{meta['users']:,} users named as redis-benchmark renders `__rand_int__` (12-digit zero-padded:",
            f"`000000000000` to `{meta['users'] - 1:012d}`), each with {meta['items']} distinct items `item-<n>` from a",
            "catalogue of 10,000 (seeded xorshift), scores strictly decreasing. Scores are multiples",
            "of 1/16 (e.g. `873.4375`), exact in f32 and in f64, so recd (shortest f32 text) and",
            "Redis 7.0 (`%.17g`) write the same score text and both servers send the same bytes.",
            "",
            "Redis. `redis-server --port 0 --unixsocket <path> --save \"\" --appendonly no`, filled from",
            "recd itself: each user's list is read with `GET bench:<user>` and written with",
            "`ZADD bench:<user> <score> <item> ...` and `SET json:<user> <the JSON recd returned>`",
            "(through `redis-cli --pipe`). **GET differs in key only**: recd answers `GET bench:<user>`",
            "with the list as JSON (its own extension; Redis would answer WRONGTYPE on a sorted set),",
            "so on Redis the benchmark reads the same JSON text stored as a string under the parallel",
            "key `json:<user>`. Before measuring, the script checks on "
            f"{meta['checked']} users (the first, the last",
            "and random ones) that `ZREVRANGE <key> 0 9 WITHSCORES`, `ZREVRANGE <key> 0 -1 WITHSCORES`, `ZCARD` and",
            "`GET` give byte-identical replies on both servers, and that Redis holds exactly",
            f"{2 * meta['users']:,} keys.",
            "",
            f"Measurement. {meta['rounds']} redis-benchmark runs per row and server, recd and Redis back to",
            "back (which goes first alternates run by run); each number in the table is the median of",
            "that server's runs (rate and percentiles taken separately). Keys are drawn at random over",
            "all users:",
            "",
            "```sh",
            f"redis-benchmark -s <socket> -c <1|50> -n <N> -r {meta['users']} -P <1|16> --csv \\",
            "    ZREVRANGE bench:__rand_int__ 0 9 WITHSCORES",
            f"redis-benchmark -s <socket> -c <1|50> -n <N> -r {meta['users']} -P <1|16> --csv \\",
            "    GET bench:__rand_int__        # recd;  GET json:__rand_int__ on Redis",
            "```",
            "",
            f"with N = {n_unpiped:,} requests without pipelining and {n_piped:,} with `-P 16`. `-r` makes",
            "redis-benchmark replace `__rand_int__` by a random 12-digit number below the user count,",
            "anew for every request. redis-benchmark runs single-threaded (no `--threads`). Its latency",
            "is measured once per batch, from when it starts writing the batch (1 request, or 16 with",
            "`-P 16`) to the first read event of the replies, and recorded once for each request of",
            "the batch; parsing the replies is left out. It reports p50/p99 from an HDR histogram in",
            "milliseconds with 3 decimals. Both servers answer RESP2 (redis-benchmark's default).",
            "recd runs with its defaults: `serve_threads = 0`, one serving thread (an event loop)",
            "per core but one (on this 2-core machine: one), each connection on one of them;",
            "Redis 7.0 serves from one thread. " + pinned_text(meta["pinned"]),
            "",
            "Limits. A difference of a few per cent between two numbers is within the noise of a",
            "shared machine, medians or not. The fill read every list once before measuring, so",
            "recd serves from memory here: its read cache (`read_cache_mb`, default 1024 MiB, values",
            f"kept after a first read) holds the whole table ({meta['store_mb']:,} MiB of sled data on",
            "disk), as Redis holds it. A table bigger than the read cache is read through sled's",
            "B-tree for the rest; before the read cache, GET with 50 clients and `-P 16` ran at",
            "about 0.7 of Redis on this benchmark.",
            "<!-- bench-serving: end -->",
        ]
    )


def pinned_text(pinned: tuple[list[int], list[int]] | None) -> str:
    if pinned is None:
        return "The client and the server under test share the cores (not pinned)."
    client, servers = pinned
    return (
        f"CPUs are split so that the client does not take turns with the server it measures: "
        f"redis-benchmark runs on CPU {', '.join(map(str, client))} and both servers, every thread of "
        f"them, on CPU {', '.join(map(str, servers))} (`sched_setaffinity` after the fill; "
        "`--no-pin` leaves it to the scheduler). Each server alone is measured at a time."
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--requests", type=int, default=100_000, help="requests per row without pipelining")
    p.add_argument("--requests-pipelined", type=int, default=400_000, help="requests per row with -P 16")
    p.add_argument("--rounds", type=int, default=5, help="runs per row and server; the median is reported")
    p.add_argument("--keep", action="store_true", help="keep the work folder (store, logs)")
    p.add_argument("--no-doc", action="store_true", help="print the table only; leave docs/performance.md")
    p.add_argument("--no-hot-keys", action="store_true", help="skip the hot-key rows (recd-loadgen)")
    p.add_argument("--hot-requests", type=int, default=100_000, help="requests per hot-key run")
    p.add_argument("--dashboard-only", action="store_true",
                   help="only the rows of reads while the dashboard is polled, printed (docs/performance.md untouched)")
    p.add_argument("--no-pin", action="store_true",
                   help="leave CPU placement to the scheduler (default: client on one CPU, servers on the others)")
    args = p.parse_args()

    for path, hint in [(RECD, "cargo build --release --workspace --all-targets"), (PLUGIN, "cargo build --release --workspace --all-targets"), (LOADGEN, "cargo build --release --workspace --all-targets")]:
        if not path.is_file():
            raise Fail(f"{path} is missing: run `{hint}` (make bench-serving does)")
    for tool in ["redis-server", "redis-cli", "redis-benchmark"]:
        if shutil.which(tool) is None:
            raise Fail(f"{tool} is not installed (scripts/setup.sh installs redis-tools and redis-server)")

    m = machine()
    load_before = loadavg()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    base = ROOT / "target" / "bench-serving"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=base))
    log(f"work folder {work}; load average {load_before}")
    procs = Procs()
    ok = False
    t_start = time.monotonic()

    def on_term(signum, _frame):
        raise SystemExit(f"bench-serving: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    results = []
    try:
        recd_sock, _config, http_port = start_recd(procs, work, args.users, args.items, args.seed)
        redis_sock = start_redis(procs, work)
        fill_redis(recd_sock, redis_sock, args.users, args.items)
        checked = check_same(recd_sock, redis_sock, args.users, args.items)
        log(f"replies are byte-identical on {checked} sampled users")
        split = None if args.no_pin else cpu_split()
        client_cpus = split[0] if split else None
        if split:
            for name, proc in procs.started:
                pin(proc.pid, split[1])
            log(f"redis-benchmark on CPU {sorted(split[0])}, the servers on CPUs {sorted(split[1])}")

        commands = [
            ("ZREVRANGE <key> 0 9 WITHSCORES", ["ZREVRANGE", f"{TABLE}:__rand_int__", "0", "9", "WITHSCORES"],
             ["ZREVRANGE", f"{TABLE}:__rand_int__", "0", "9", "WITHSCORES"]),
            ("GET <key>", ["GET", f"{TABLE}:__rand_int__"], ["GET", "json:__rand_int__"]),
        ]
        i = 0
        for label, recd_cmd, redis_cmd in ([] if args.dashboard_only else commands):
            for clients in (1, 50):
                for pipeline in (1, PIPELINE):
                    n = args.requests if pipeline == 1 else args.requests_pipelined
                    row = {"label": label, "clients": clients, "pipeline": pipeline}
                    runs: dict[str, list[dict]] = {"recd": [], "redis": []}
                    for _ in range(args.rounds):
                        # Alternate who goes first, so drift in the machine's load
                        # (it is shared) falls on both servers alike.
                        order = [("recd", recd_sock, recd_cmd), ("redis", redis_sock, redis_cmd)]
                        if i % 2:
                            order.reverse()
                        i += 1
                        for who, sock, cmd in order:
                            res = benchmark(sock, clients, pipeline, n, args.users, cmd, client_cpus)
                            runs[who].append(res)
                            log(
                                f"{who:5} {label} -c {clients} -P {pipeline}: {fmt_rps(res['rps'])} req/s, "
                                f"p50 {res['p50']:.3f} ms, p99 {res['p99']:.3f} ms ({res['wall']:.1f}s)"
                            )
                            if res["stderr"]:
                                log(f"  redis-benchmark stderr ({who}): {res['stderr'][:500]}")
                    results.append(summarise(row, runs))
        hot = [] if args.no_hot_keys or args.dashboard_only else hot_key_rows(
            recd_sock, redis_sock, procs, args.users, args.hot_requests, args.rounds, split)
        dashboard = [] if args.no_hot_keys else dashboard_rows(
            recd_sock, http_port, args.users, args.hot_requests, args.rounds, split)
        for _, proc in procs.started:
            if proc.poll() is not None:
                raise Fail(f"a server exited during the benchmark (status {proc.returncode})")
        memory = measure_memory(procs, work, redis_sock)
        ok = True
    except Fail as e:
        print(f"bench-serving: FAILED: {e}", file=sys.stderr)
    finally:
        procs.stop_all()
        statuses = {name: proc.returncode for name, proc in procs.started}
        if ok and statuses.get("recd serve") not in (0, None):
            print(f"bench-serving: recd serve exited with status {statuses['recd serve']}", file=sys.stderr)
            print(tail(work / "recd.log"), file=sys.stderr)
            ok = False
        errors = [ln for ln in tail(work / "recd.log", 10_000).splitlines() if " ERROR " in ln or " WARN " in ln]
        if errors:
            log("recd logged warnings or errors:\n" + "\n".join(errors[:20]))
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work folder kept: {work}")
    if not ok:
        return 1

    run_time = time.monotonic() - t_start
    meta = {
        "date": date,
        "pinned": (sorted(split[0]), sorted(split[1])) if split else None,
        "users": args.users,
        "items": args.items,
        "requests": (args.requests, args.requests_pipelined),
        "checked": checked,
        "load_before": load_before,
        "load_after": loadavg(),
        "run_time": run_time,
        "rounds": args.rounds,
        "hot_requests": args.hot_requests,
        **memory,
    }
    print()
    print("\n".join(render_rows(results)))
    print()
    met = sum(1 for r in results if r["met"])
    print(f"targets (req/s ratio >= 1.0 and p99 <= Redis's) met in {met} of {len(results)} rows; run time {run_time:.0f}s")
    if hot:
        print()
        print("\n".join(render_hot_rows(hot)))
        print(f"hot-key targets met in {sum(1 for r in hot if r['met'])} of {len(hot)} rows")
        print()
        print("\n".join(render_dashboard_rows(dashboard)))
    if args.dashboard_only:
        print("\n".join(render_dashboard_rows(dashboard)))
        return 0
    if not args.no_doc:
        write_section(DOC, "bench-serving", render_doc(results, m, meta))
        if hot:
            write_section(DOC, "bench-hot-keys", render_hot_doc(hot, meta, dashboard))
        log(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Fail as e:
        print(f"bench-serving: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
