#!/usr/bin/env python3
"""Serving fairness benchmark: how long a small read waits while other clients read huge
lists, on recd and on redis-server holding the same lists.

Run with ``make bench-fairness`` (it builds the workspace first), or, once built:

    python3 scripts/bench_fairness.py [--big-items N] [--heavy N] [--seconds S] [--no-redis] [--no-doc]

Python standard library only (helpers from ``bench_serving.py``). The script:

1. starts ``target/release/recd serve`` in ``target/bench-fairness/`` with one job, the
   ``synthetic`` test plugin making 10,000 users with 10 items each and one user ``big-0``
   with ``--big-items`` items (default 5,000,000), and runs it;
2. unless ``--no-redis``, loads the same ``big-0`` list and a sample of the small lists
   into a ``redis-server`` on a Unix socket (ZADD in batches);
3. for each server and each load (none; ``--heavy`` clients, default 4, each reading
   ``ZREVRANGE big 0 -1`` without pause; the same with ``GET`` on recd, whose GET gives
   the list as JSON), one probe client reads ``ZREVRANGE <small user> 0 9 WITHSCORES``
   for ``--seconds`` (default 10) and times every reply;
4. prints p50, p99, p99.9 and the maximum of the probe's latencies, and how many huge
   replies the heavy clients got, and writes the table to ``docs/performance.md``.

The heavy clients read the reply bytes and drop them: they know the reply's length from
a first full read, so they never parse 5 million entries in Python (which would make the
clients, not the server, the bottleneck on a 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_serving as bs  # noqa: E402

ROOT = bs.ROOT
WORK = ROOT / "target" / "bench-fairness"
SMALL_USERS = 10_000


def log(msg: str) -> None:
    print(f"bench-fairness: {msg}", flush=True)


def start_recd(procs: bs.Procs, big_items: int) -> Path:
    (WORK / "jobs").mkdir(parents=True)
    (WORK / "recd.toml").write_text(
        'data_dir = "data"\nsocket = "recd.sock"\nadmin_socket = "admin.sock"\njobs_dir = "jobs"\n'
        f'plugins_dir = "{bs.RECD.parent}"\nonnxruntime = "{bs.ORT}"\n'
    )
    (WORK / "jobs" / "fair.toml").write_text(
        'plugin = "synthetic"\n'
        f"max_items_per_user = {big_items}\n"
        "timeout_seconds = 3600\n"
        f"[params]\nusers = {SMALL_USERS}\nitems = 10\nbig_users = 1\nbig_items = {big_items}\n"
    )
    config = WORK / "recd.toml"
    proc = procs.start("recd serve", [str(bs.RECD), "serve", "--config", str(config)], WORK / "recd.log",
                       env={**os.environ, "RECD_LOG": "info"})
    bs.wait_for_socket(WORK / "recd.sock", proc, "recd serve", WORK / "recd.log")
    bs.wait_for_socket(WORK / "admin.sock", proc, "recd serve", WORK / "recd.log")
    t0 = time.monotonic()
    run = bs.subprocess.run([str(bs.RECD), "run", "fair", "--config", str(config)], capture_output=True, text=True)
    if run.returncode != 0:
        raise bs.Fail(f"recd run fair failed:\n{run.stderr}{run.stdout}\n{bs.tail(WORK / 'recd.log')}")
    log(f"{run.stdout.strip()} [{time.monotonic() - t0:.1f}s]")
    return WORK / "recd.sock"


def load_redis(procs: bs.Procs, recd_sock: Path, big_items: int) -> Path:
    """The same lists in redis-server: big-0 built from its known content, and the small
    users the probe reads copied from recd."""
    sock = bs.start_redis(procs, WORK)
    conn = bs.Conn(sock, timeout=600)
    batch = 100_000
    for start in range(0, big_items, batch):
        args = [b"ZADD", b"fair:big-0"]
        for item in range(start, min(start + batch, big_items)):
            args += [str(big_items - item).encode(), b"big-item-%d" % item]
        conn.send([args])
        reply = conn.reply()
        if isinstance(reply, tuple):
            raise bs.Fail(f"redis ZADD: {reply[1]}")
    recd = bs.Conn(recd_sock)
    for user in probe_users():
        flat = recd.call("ZREVRANGE", f"fair:{user}", "0", "-1", "WITHSCORES")
        args = [b"ZADD", f"fair:{user}".encode()]
        for member, score in zip(flat[0::2], flat[1::2]):
            args += [score, member]
        conn.send([args])
        conn.reply()
    recd.close()
    n = conn.call("ZCARD", "fair:big-0")
    if n != big_items:
        raise bs.Fail(f"redis holds {n} items for big-0, not {big_items}")
    conn.close()
    log(f"redis-server holds the same lists ({big_items:,} items in big-0)")
    return sock


def probe_users() -> list[str]:
    return [f"{u:012d}" for u in range(0, SMALL_USERS, 97)]


def reply_length(sock_path: Path, request: bytes) -> int:
    """Bytes of the whole reply to `request`: read until the server has been silent for a
    second (parsing millions of entries in Python would take longer than the reads)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(sock_path))
    s.sendall(request)
    s.settimeout(300.0)  # the first bytes may take long (a server that encodes it all first)
    buf = bytearray(1 << 22)
    n = s.recv_into(buf)
    s.settimeout(1.0)
    try:
        while True:
            got = s.recv_into(buf)
            if got == 0:
                break
            n += got
    except socket.timeout:
        pass
    s.close()
    if n == 0:
        raise bs.Fail("no reply to the heavy request")
    return n


class Heavy(threading.Thread):
    """Sends `request` again as soon as its reply (`length` bytes) is read; drops the bytes."""

    def __init__(self, sock_path: Path, request: bytes, length: int, stop: threading.Event):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(sock_path))
        self.request, self.length, self.stop = request, length, stop
        self.replies = 0
        self.buf = bytearray(1 << 22)

    def run(self) -> None:
        view = memoryview(self.buf)
        while not self.stop.is_set():
            self.sock.sendall(self.request)
            left = self.length
            while left > 0:
                n = self.sock.recv_into(view, min(left, len(self.buf)))
                if n == 0:
                    return
                left -= n
            self.replies += 1
        self.sock.close()


def probe(sock_path: Path, seconds: float) -> list[float]:
    """Latencies (ms) of top-10 reads of small users, one at a time, for `seconds`."""
    users = probe_users()
    requests = [[b"ZREVRANGE", f"fair:{u}".encode(), b"0", b"9", b"WITHSCORES"] for u in users]
    conn = bs.Conn(sock_path)
    out: list[float] = []
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        t0 = time.perf_counter_ns()
        conn.send([requests[i % len(requests)]])
        reply = conn.reply()
        out.append((time.perf_counter_ns() - t0) / 1e6)
        if not isinstance(reply, list) or len(reply) != 20:
            raise bs.Fail(f"unexpected probe reply {reply!r:.200}")
        i += 1
    conn.close()
    return out


def measure(name: str, sock_path: Path, heavy_request: bytes | None, heavy: int, seconds: float) -> dict:
    stop = threading.Event()
    threads: list[Heavy] = []
    if heavy_request is not None:
        length = reply_length(sock_path, heavy_request)
        threads = [Heavy(sock_path, heavy_request, length, stop) for _ in range(heavy)]
        for t in threads:
            t.start()
        time.sleep(0.5)
    lat = probe(sock_path, seconds)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    row = {
        "case": name,
        "reads": len(lat),
        "p50": bs.pct(lat, 0.50),
        "p99": bs.pct(lat, 0.99),
        "p999": bs.pct(lat, 0.999),
        "max": max(lat),
        "heavy": sum(t.replies for t in threads),
    }
    log(f"{name}: {row['reads']} probe reads, p50 {row['p50']:.2f} ms, p99 {row['p99']:.2f} ms, "
        f"p99.9 {row['p999']:.2f} ms, max {row['max']:.1f} ms; {row['heavy']} huge replies")
    return row


def render(rows: list[dict], meta: dict, m: dict) -> str:
    lines = [
        "<!-- bench-fairness: begin -->",
        "## Serving fairness: small reads beside huge replies (`make bench-fairness`)",
        "",
        f"Measured {meta['when']} on {m['cpu']} ({m['cores']} cores, {m['ram']}), {m['kernel']}; "
        f"recd at {m['commit']}, {m['redis']}. One probe client reads `ZREVRANGE <user> 0 9 WITHSCORES` "
        f"(10-item lists) one request at a time for {meta['seconds']:g} s while {meta['heavy']} clients read "
        f"a {meta['big_items']:,}-item list whole without pause (`scripts/bench_fairness.py`). "
        "Latency is the probe's, request sent to reply read, in milliseconds.",
        "",
        "| server | heavy clients read | probe reads | p50 | p99 | p99.9 | max | huge replies |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['probe_load']} | {r['reads']:,} | {r['p50']:.2f} | {r['p99']:.2f} | "
                     f"{r['p999']:.2f} | {r['max']:.1f} | {r['heavy']} |")
    lines += ["", "<!-- bench-fairness: end -->"]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big-items", type=int, default=5_000_000)
    ap.add_argument("--heavy", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args()
    if WORK.exists():
        shutil.rmtree(WORK)
    procs = bs.Procs()
    rows = []
    try:
        recd = start_recd(procs, args.big_items)
        zrange = bs.encode([b"ZREVRANGE", b"fair:big-0", b"0", b"-1", b"WITHSCORES"])
        cases = [("recd", recd, None, "nothing"), ("recd", recd, zrange, "ZREVRANGE big 0 -1 WITHSCORES"),
                 ("recd", recd, bs.encode([b"GET", b"fair:big-0"]), "GET big (JSON)")]
        if not args.no_redis:
            redis = load_redis(procs, recd, args.big_items)
            cases += [("redis-server", redis, None, "nothing"), ("redis-server", redis, zrange, "ZREVRANGE big 0 -1 WITHSCORES")]
        for server, sock, request, load in cases:
            row = measure(f"{server}, heavy: {load}", sock, request, args.heavy if request else 0, args.seconds)
            row.update(case=server, probe_load=load if request is None else f"{args.heavy} × {load}")
            rows.append(row)
    except bs.Fail as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        procs.stop_all()
    meta = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "seconds": args.seconds,
            "heavy": args.heavy, "big_items": args.big_items}
    section = render(rows, meta, bs.machine())
    print(section)
    if not args.no_doc:
        bs.write_section(bs.DOC, "bench-fairness", section)
        log(f"wrote {bs.DOC.relative_to(ROOT)}")
    shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
