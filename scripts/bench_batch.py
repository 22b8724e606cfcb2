#!/usr/bin/env python3
"""Batch benchmarks for `make bench-batch`: recd's whole ranking job against the Python
pipeline a team would cron instead, recd's scoring stage against a tight ONNX Runtime
loop, and recd's peak memory as users grow. Writes its section of docs/performance.md.

What runs, all on this machine, in one run:

a) **End to end.** For each dataset (the retail demo data with the shipped model, MovieLens
   100K, the generated M workload) the same ranking job runs once through recd (`recd run`
   against a fresh `recd serve`: worker start, inputs, candidates, scoring, top k,
   publish and flush) and once as `scripts/python_pipeline.py` (pandas + onnxruntime +
   numpy argpartition + redis-py into a local redis-server), in alternating order. Both
   are timed from process start to exit. A sample of users is checked to get the same
   lists from both before any number counts.
   One more recd run per dataset times one client's reads of the served table while
   the run writes its next version, against the same reads with the daemon idle.
   Then the daemon's disk writes are counted for 20 s while it is idle.
b) **Scoring stage.** The worker times its ONNX Runtime calls (tensors in and out
   included) and keeps them in the run history; `python_pipeline.py --score-only` builds
   the very same batches first and then times nothing but `session.run` over them, with
   the same session options. Ratio = recd / loop. The control: the Python pipeline's own
   `session.run` time inside its whole runs in a), where its calls alternate with its work
   as recd's do.
c) **Memory.** Peak RSS (VmHWM) of the worker and of the daemon for the S, M and L
   workloads (`scripts/gen_workload.py`), MF model.
d) **GPU.** With `--gpu` (on a CUDA host with onnxruntime-gpu): the MLP ranker on CUDA vs
   CPU through recd, and vs a Python onnxruntime-gpu loop with I/O binding; then the L
   workload's whole job on CUDA with each model against its own scoring stage. Without it
   the report says the GPU rows are not measured (`--gpu --gpu-device cpu` runs d)'s steps
   on the CPU, to check this script on a machine without a GPU).

    make bench-batch                       # a, b, c on the sizes below
    python3 scripts/bench_batch.py --sizes S,M --no-doc   # quicker, print only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import Conn, Fail, Procs, loadavg, machine, pct, tail, wait_for_socket, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECD = ROOT / "target" / "release" / "recd"
ORT = ROOT / ".deps" / "py" / "onnxruntime" / "capi" / "libonnxruntime.so.1.31.1"
PYPATH = f"{ROOT / '.deps' / 'pytools'}:{ROOT / '.deps' / 'py'}"
ML_DIR = (ROOT / ".." / "shared" / "data" / "ml-100k").resolve()
WORK = ROOT / "target" / "bench-batch"
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- bench-batch: begin -->", "<!-- bench-batch: end -->"
# Targets (issue 22): the whole job against the Python pipeline, recd's scoring stage against
# ONNX Runtime's own loop, and on a GPU host the scoring stage against a Python
# onnxruntime-gpu loop with I/O binding and a large job against its own scoring stage.
E2E_TARGET = 4.5
SCORE_TARGET = 1.1
GPU_LOOP_TARGET = 1.0
LARGE_JOB_TARGET = 2.0


def log(msg: str) -> None:
    print(f"bench-batch: {msg}", file=sys.stderr, flush=True)


def py(argv: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": PYPATH}
    return subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, **kw)


# ---------------------------------------------------------------- datasets


def workload(size: str) -> Path:
    """The workload folder, generated unless it is there from this generator already."""
    out = WORK / "workloads" / size
    run = py([str(ROOT / "scripts" / "gen_workload.py"), "--size", size, "--out", str(out), "--reuse"])
    if run.returncode != 0:
        raise Fail(f"gen_workload {size} failed:\n{run.stderr}")
    return out


def demo_job() -> str:
    text = (ROOT / "jobs" / "ranking.toml").read_text()
    return text.replace('"data/', f'"{ROOT}/data/').replace('"models/', f'"{ROOT}/models/')


def movielens() -> Path:
    """MovieLens 100K, read in place, as a ranking workload with a seeded MF model (the
    weights do not change the work; training it is the quality report's business)."""
    out = WORK / "movielens"
    if (out / "ranking-mf.toml").is_file():
        return out
    if not (ML_DIR / "u.data").is_file():
        raise Fail(f"MovieLens 100K is missing: {ML_DIR / 'u.data'}")
    code = f"""
import sys, numpy as np, pandas as pd, onnx
sys.path.insert(0, {str(ROOT / 'scripts')!r})
import gen_workload as g
out = {str(out)!r}
import os; os.makedirs(out, exist_ok=True)
d = pd.read_csv({str(ML_DIR / 'u.data')!r}, sep="\\t", header=None, names=["user_id", "item_id", "rating", "ts"])
d["user_id"] = d.user_id.astype(str); d["item_id"] = d.item_id.astype(str)
d.to_parquet(out + "/interactions.parquet", index=False)
users = sorted(d.user_id.unique(), key=int); items = sorted(d.item_id.unique(), key=int)
pd.DataFrame({{"user_id": users, "index": range(len(users))}}).to_csv(out + "/users.csv", index=False)
pd.DataFrame({{"item_id": items, "index": range(len(items))}}).to_csv(out + "/items.csv", index=False)
rng = np.random.default_rng(7)
U = g.factors(rng, np.zeros(len(users), int), 1, 1.0); V = g.factors(rng, np.zeros(len(items), int), 1, 1.0)
onnx.save(g.mf_model(U, V, {{"dataset": "ml-100k"}}), out + "/mf.onnx")
from pathlib import Path
Path(out, "ranking-mf.toml").write_text(g.job(Path(out), "mf.onnx", None, "MovieLens 100K, every unseen movie"))
"""
    run = py(["-c", code])
    if run.returncode != 0:
        raise Fail(f"preparing MovieLens failed:\n{run.stderr}")
    return out


# ---------------------------------------------------------------- processes


class Recd:
    def __init__(self, procs: Procs, work: Path, job_text: str):
        work.mkdir(parents=True, exist_ok=True)
        (work / "jobs").mkdir(exist_ok=True)
        (work / "recd.toml").write_text(
            'data_dir = "data"\nsocket = "recd.sock"\nadmin_socket = "admin.sock"\njobs_dir = "jobs"\n'
            f'plugins_dir = "{RECD.parent}"\nonnxruntime = "{ORT}"\n'
        )
        (work / "jobs" / "ranking.toml").write_text(job_text)
        self.work, self.config = work, work / "recd.toml"
        self.proc = procs.start("recd serve", [str(RECD), "serve", "--config", str(self.config)], work / "recd.log")
        wait_for_socket(work / "recd.sock", self.proc, "recd serve", work / "recd.log")
        wait_for_socket(work / "admin.sock", self.proc, "recd serve (admin)", work / "recd.log")

    def cpu_seconds(self) -> float:
        """The daemon's CPU time so far (user + system)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def run(self) -> float:
        t0 = time.perf_counter()
        run = subprocess.run([str(RECD), "run", "ranking", "--config", str(self.config)], capture_output=True,
                             text=True)
        wall = time.perf_counter() - t0
        if run.returncode != 0:
            raise Fail(f"recd run failed:\n{run.stderr}\n{tail(self.work / 'recd.log')}")
        return wall

    def last_run(self) -> dict:
        conn = Conn(self.work / "admin.sock")
        text = conn.call("HISTORY", "ranking", "1")
        conn.close()
        return json.loads(text)[0]

    def written_bytes(self) -> int | None:
        """Bytes the daemon has written so far (its `write_bytes` in /proc: what it sent to
        the page cache for its files, recd.log included); None where the kernel does not say."""
        try:
            io = Path(f"/proc/{self.proc.pid}/io").read_text()
        except OSError:
            return None
        return int(next(ln.split()[1] for ln in io.splitlines() if ln.startswith("write_bytes:")))

    def peak_rss(self) -> int:
        return self.status_bytes("VmHWM:")

    def rss(self) -> int:
        return self.status_bytes("VmRSS:")

    def status_bytes(self, field: str) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith(field))) * 1024

    def allocated(self) -> int:
        """The bytes the daemon holds through jemalloc (INFO's allocator gauge)."""
        conn = Conn(self.work / "recd.sock")
        info = conn.call("INFO").decode()
        conn.close()
        line = next(ln for ln in info.splitlines() if ln.startswith("recd_allocator_allocated_bytes "))
        return int(float(line.split()[1]))


def start_redis(procs: Procs, work: Path) -> Path:
    sock = work / "redis.sock"
    proc = procs.start("redis-server", ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "",
                                        "--appendonly", "no", "--dir", str(work)], work / "redis.log")
    wait_for_socket(sock, proc, "redis-server", work / "redis.log")
    return sock


def python_pipeline(job: Path, redis_sock: Path, extra: list[str] | None = None) -> tuple[float, dict]:
    timings = job.parent / f"timings-{os.getpid()}.json"
    t0 = time.perf_counter()
    run = py([str(ROOT / "scripts" / "python_pipeline.py"), "--job", str(job), "--redis-socket", str(redis_sock),
              "--timings", str(timings), *(extra or [])])
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise Fail(f"python pipeline failed:\n{run.stderr}")
    got = json.loads(timings.read_text())
    timings.unlink()
    return wall, got


def same_lists(recd_sock: Path, redis_sock: Path, users: list[str], sample: int = 200) -> int:
    """Both sides hold the same top-10 for a sample of users (scores to 1e-4)."""
    pick = random.Random(1).sample(users, min(sample, len(users)))
    a, b = Conn(recd_sock), Conn(redis_sock)
    checked = 0
    for u in pick:
        got_a = a.call("ZREVRANGE", f"ranking:{u}", "0", "-1", "WITHSCORES")
        got_b = b.call("ZREVRANGE", f"ranking:{u}", "0", "-1", "WITHSCORES")
        items_a, items_b = got_a[0::2], got_b[0::2]
        scores_a = [float(s) for s in got_a[1::2]]
        scores_b = [float(s) for s in got_b[1::2]]
        if not items_a:
            raise Fail(f"user {u}: recd serves no list (ranking:{u})")
        if len(items_a) != len(items_b) or any(abs(x - y) > 1e-4 for x, y in zip(scores_a, scores_b)):
            raise Fail(f"user {u}: recd {got_a[:6]}... differs from the Python pipeline {got_b[:6]}...")
        # the same items wherever the scores are not tied
        for i, (x, y) in enumerate(zip(items_a, items_b)):
            tied = any(abs(scores_a[i] - scores_a[j]) < 1e-6 for j in range(len(scores_a)) if j != i)
            if x != y and not tied:
                raise Fail(f"user {u}: rank {i + 1} is {x!r} in recd and {y!r} in the Python pipeline")
        checked += 1
    a.close()
    b.close()
    return checked


def vocab_users(job_text: str) -> list[str]:
    path = next(ln.split("=", 1)[1].strip().strip('"') for ln in job_text.splitlines() if ln.startswith("users ="))
    return [ln.split(",")[0] for ln in Path(path).read_text().splitlines()[1:]]


# ---------------------------------------------------------------- the three benchmarks


def read_latencies(sock: Path, users: list[str], every: float, stop: threading.Event | None = None) -> list[float]:
    """Milliseconds per read of each user's top 10 from the served table, one client, one read
    at a time, the i-th at about `i * every` seconds from the first (in bursts: the client
    waits only once it is 2 ms ahead, as shorter sleeps overshoot; back to back when it cannot
    keep up), until the users run out or `stop` is set."""
    conn, out = Conn(sock), []
    start = time.perf_counter()
    for i, u in enumerate(users):
        ahead = start + i * every - time.perf_counter()
        if ahead > 0.002 and (stop.wait(ahead) if stop else time.sleep(ahead)):
            break
        t = time.perf_counter()
        got = conn.call("ZREVRANGE", f"ranking:{u}", "0", "9")
        out.append((time.perf_counter() - t) * 1e3)
        if not isinstance(got, list) or not got:
            raise Fail(f"user {u}: unexpected reply {got!r:.200}")
        if stop is not None and stop.is_set():
            break
    conn.close()
    return out


def latency_row(ms: list[float]) -> dict:
    return {"n": len(ms), "p50": pct(ms, 0.50), "p99": pct(ms, 0.99), "max": max(ms)}


def reads_during_run(recd: Recd, users: list[str], run_s: float) -> dict:
    """One client's read latency while a run writes the table's next version (reads of the
    version served until its publish), against the same reads with the daemon idle. Each
    list is read once, in a shuffled order (a first read misses the read cache and goes to
    sled, where a store writer could hold it up): half of the users during the run, paced
    over 1.25 times its median time so that they outlast it, the other half as paced, idle.
    Call it before anything else reads the current version."""
    if len(users) < 2:
        raise Fail("reads during a run need at least two users")
    order = users[:]
    random.Random(2).shuffle(order)
    during, idle = order[0::2], order[1::2]
    every = 1.25 * run_s / len(during)
    stop, got = threading.Event(), {}

    def read() -> None:
        try:
            got["ms"] = read_latencies(recd.work / "recd.sock", during, every, stop)
        except Exception as e:  # reported by this thread's caller below
            got["error"] = e

    reader = threading.Thread(target=read)
    reader.start()
    try:
        recd.run()
    finally:
        stop.set()
        reader.join()
    if "error" in got:
        raise Fail(f"reading during a run failed: {got['error']!r}")
    busy = got["ms"]
    calm = read_latencies(recd.work / "recd.sock", idle[: len(busy)], every)
    return {"during": latency_row(busy), "idle": latency_row(calm), "outlasted": len(busy) < len(during)}


# Seconds an idle daemon's disk writes are counted for, after a dataset's runs.
IDLE_SECONDS = 20.0


def idle_write_rate(recd: Recd) -> float | None:
    """MB/s the daemon writes while idle, after the runs (sled's flusher keeps cleaning its
    log while idle; how often it wakes sets how much it rewrites); None if not known."""
    before = recd.written_bytes()
    time.sleep(IDLE_SECONDS)
    after = recd.written_bytes()
    return None if before is None or after is None else (after - before) / IDLE_SECONDS / 1e6


# Where a run's time goes, as its history records it: the worker's stages, then the daemon's.
STAGES = ["read", "model_load", "plugin", "score", "emit", "collect", "store", "publish"]


def run_stages(record: dict) -> dict:
    """One run's stage seconds from its history record (0 where a stage was not recorded)."""
    worker, daemon = record.get("worker") or {}, record.get("stages") or {}
    return {k: float(worker.get(f"{k}_seconds", daemon.get(f"{k}_seconds", 0.0))) for k in STAGES}


def end_to_end(procs: Procs, name: str, job_text: str, rounds: int) -> dict:
    """`rounds` runs of each side, alternating who goes first; medians reported."""
    work = Path(tempfile.mkdtemp(prefix=f"e2e-{name.replace(':', '-')}-", dir=WORK))
    job = work / "ranking.toml"
    job.write_text(job_text)
    recd = Recd(procs, work / "recd", job_text)
    redis_sock = start_redis(procs, work)
    runs: dict[str, list] = {"recd": [], "python": [], "python_inside": [], "python_score": [], "recd_score": [],
                             "loop": [], "daemon_cpu": []}
    stage_runs: list[dict] = []
    for r in range(rounds):
        for side in (["python", "recd"] if r % 2 else ["recd", "python"]):
            if side == "recd":
                cpu0 = recd.cpu_seconds()
                runs["recd"].append(recd.run())
                runs["daemon_cpu"].append(recd.cpu_seconds() - cpu0)
                last = recd.last_run()
                runs["recd_score"].append(last["worker"]["score_seconds"])
                stage_runs.append(run_stages(last))
            else:
                wall, timings = python_pipeline(job, redis_sock)
                runs["python"].append(wall)
                runs["python_inside"].append(timings["total"])
                runs["python_score"].append(timings["score"])
            log(f"{name}: {side} done in {runs[side][-1]:.2f}s")
        # b) the tight loop over the same batches
        _, loop = python_pipeline(job, redis_sock, ["--score-only"])
        runs["loop"].append(loop["score"])
        if loop["rows"] != last["worker"]["score_rows"]:
            raise Fail(f"{name}: the loop scored {loop['rows']} pairs, recd {last['worker']['score_rows']}")
    # first: same_lists' reads would put some of the current version's lists in the read cache
    users = vocab_users(job_text)
    reads = reads_during_run(recd, users, statistics.median(runs["recd"]))
    d, i = reads["during"], reads["idle"]
    log(f"{name}: reads during a run p99 {d['p99']:.2f} ms, max {d['max']:.1f} ms; idle p99 {i['p99']:.2f} ms, "
        f"max {i['max']:.1f} ms" + ("" if reads["outlasted"] else "; the reads ran out before the run ended"))
    checked = same_lists(work / "recd" / "recd.sock", redis_sock, users)
    idle_writes = idle_write_rate(recd)
    med = {k: statistics.median(v) for k, v in runs.items()}
    stats = last["worker"]
    row = {
        "dataset": name, "users": last["users"], "checked": checked, "runs": runs,
        "recd_s": med["recd"], "python_s": med["python"], "ratio": med["python"] / med["recd"],
        "python_inside_s": med["python_inside"],
        "score": {"recd_s": med["recd_score"], "loop_s": med["loop"], "rows": stats["score_rows"],
                  "calls": stats["score_calls"], "ratio": med["recd_score"] / med["loop"],
                  "daemon_cpu": med["daemon_cpu"], "python_score_s": med["python_score"]},
        "worker_rss": stats["peak_rss_bytes"], "daemon_rss": recd.peak_rss(),
        "stages": {k: statistics.median(s[k] for s in stage_runs) for k in STAGES},
        "reads": reads,
        "idle_mb_s": idle_writes,
    }
    procs.stop_all()
    procs.started.clear()
    shutil.rmtree(work, ignore_errors=True)
    return row


def memory(procs: Procs, size: str) -> dict:
    wl = workload(size)
    info = json.loads((wl / "workload.json").read_text())
    work = Path(tempfile.mkdtemp(prefix=f"mem-{size}-", dir=WORK))
    recd = Recd(procs, work, (wl / "ranking-mf.toml").read_text())
    wall = recd.run()
    run = recd.last_run()
    row = {"size": size, "users": info["users"], "items": info["items"], "lines": info["lines"],
           "pairs": run["worker"]["score_rows"], "wall": wall, "worker_rss": run["worker"]["peak_rss_bytes"],
           "daemon_rss": recd.peak_rss(), "rows": run["rows"], "model_bytes": model_bytes(wl / "mf.onnx"),
           "stages": run_stages(run)}
    log(f"memory {size}: worker {row['worker_rss'] >> 20} MiB, daemon {row['daemon_rss'] >> 20} MiB, {wall:.1f}s")
    # A long-lived daemon: with the default retain_versions = 2 the third publish drops the
    # first version, which sled reads back to free; then what it holds once idle.
    for _ in range(LIVED_RUNS - 1):
        recd.run()
    # Read after a wait: the dropped version is dropped after the publish and its pages
    # freed within seconds, on threads of their own (the peak must include that drop), and
    # the allocator returns freed pages only after its decay time.
    time.sleep(IDLE_AFTER_S)
    row.update(lived_peak=recd.peak_rss(), lived_allocated=recd.allocated(), lived_idle_rss=recd.rss())
    log(f"memory {size}: daemon after {LIVED_RUNS} runs: peak {row['lived_peak'] >> 20} MiB; {IDLE_AFTER_S} s later "
        f"{row['lived_allocated'] >> 20} MiB allocated, RSS {row['lived_idle_rss'] >> 20} MiB")
    procs.stop_all()
    procs.started.clear()
    shutil.rmtree(work, ignore_errors=True)
    return row


# c)'s long-lived daemon: runs per workload (3 or more, so retention drops a version), and
# the idle wait before its memory is read (jemalloc's background threads give freed pages
# back to the system some 10 s after they are freed).
LIVED_RUNS = 3
IDLE_AFTER_S = 30


def model_bytes(model: Path) -> int:
    """The model's size on disk: the graph and its external weights, if any."""
    data = model.with_name(model.name + ".data")
    return model.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def gpu(procs: Procs, size: str, large: str, accel: str = "cuda") -> dict:
    """d) The MLP ranker through recd on CUDA and on the CPU, and a Python onnxruntime-gpu
    loop with I/O binding over the same batches; then the large workload's whole job on
    CUDA with each model, against its own scoring stage. The CUDA runs are strict: they
    fail rather than fall back, and the history must say they ran on CUDA. `accel` "cpu"
    runs the same steps without a GPU, to check this script (the report says so)."""
    wl = workload(size)
    base = (wl / "ranking-mlp.toml").read_text()
    row = {"size": size, "device": accel}
    for side, device in (("accel", accel), ("cpu", "cpu")):
        text = base.replace('device = "cpu"', f'device = "{device}"')
        work = Path(tempfile.mkdtemp(prefix=f"gpu-{device}-", dir=WORK))
        recd = Recd(procs, work, text)
        recd.run()
        run = recd.last_run()
        if run["provider"] != device:
            raise Fail(f"device = {device!r} ran on {run['provider']!r}")
        w = run["worker"]
        row[side] = {"rows": w["score_rows"], "seconds": w["score_seconds"],
                     "rows_per_s": w["score_rows"] / w["score_seconds"]}
        log(f"gpu: recd {device}: {row[side]['rows_per_s']:,.0f} pairs/s")
        procs.stop_all()
        procs.started.clear()
        (work / "ranking.toml").write_text(text)
        if side == "accel":
            loop = py([str(ROOT / "scripts" / "python_pipeline.py"), "--job", str(work / "ranking.toml"),
                       "--redis-socket", "-", "--score-only", "--device", "cuda", "--timings",
                       str(work / "loop.json")])
            if loop.returncode == 0:
                got = json.loads((work / "loop.json").read_text())
                row["python_cuda"] = {"rows": got["rows"], "seconds": got["score"],
                                      "rows_per_s": got["rows"] / got["score"]}
            else:
                row["python_cuda_error"] = loop.stderr.strip().splitlines()[-1] if loop.stderr.strip() else "failed"
                log(f"gpu: the Python GPU loop did not run: {row['python_cuda_error']}")
        shutil.rmtree(work, ignore_errors=True)
    row["large"] = [large_job(procs, large, model, accel) for model in ("mf", "mlp")]
    return row


def large_job(procs: Procs, size: str, model: str, device: str) -> dict:
    """One whole `recd run` of workload `size` with `model` on `device`: wall time, the
    scoring stage and where the rest went."""
    text = (workload(size) / f"ranking-{model}.toml").read_text().replace('device = "cpu"', f'device = "{device}"')
    work = Path(tempfile.mkdtemp(prefix=f"gpu-large-{model}-", dir=WORK))
    recd = Recd(procs, work, text)
    wall = recd.run()
    run = recd.last_run()
    if run["provider"] != device:
        raise Fail(f"device = {device!r} ran on {run['provider']!r}")
    w = run["worker"]
    out = {"size": size, "model": model, "wall": wall, "score": w["score_seconds"], "rows": w["score_rows"],
           "stages": run_stages(run), "worker_rss": w["peak_rss_bytes"], "daemon_rss": recd.peak_rss()}
    log(f"gpu: {size} {model} on {device}: whole job {wall:.2f}s, scoring {out['score']:.2f}s")
    procs.stop_all()
    procs.started.clear()
    shutil.rmtree(work, ignore_errors=True)
    return out


def memory_verdict(mem: list[dict]) -> list[str]:
    """Targets: flat in the number of users, judged on what the worker holds beyond the
    model's own weights (at most 1.5x from the smallest to the largest workload), and the
    largest under 2 GiB. The weights are the model's: a factor model has a row per user,
    and any worker that scores it must hold them."""
    if len(mem) < 2:
        return ["Targets: flat in the number of users, L under 2 GiB (not enough sizes run to judge)."]
    small, large = mem[0], mem[-1]
    beyond = [r["worker_rss"] - r["model_bytes"] for r in (small, large)]
    growth = beyond[1] / beyond[0]
    per_user = (beyond[1] - beyond[0]) / (large["users"] - small["users"])
    flat = "met" if growth <= 1.5 else "**NOT met**"
    under = "met" if max(large["worker_rss"], large["daemon_rss"], large["lived_peak"]) < 2 << 30 else "**NOT met**"
    held = 4 * (large["lines"] + large["users"])
    return [
        f"Targets: flat in the number of users: {flat}. Beyond the model's weights the worker's peak goes "
        f"from {mib(beyond[0])} MiB at {small['size']} to {mib(beyond[1])} MiB at {large['size']} "
        f"({growth:.2f}×, {per_user:.0f} bytes per user more); with them, from {mib(small['worker_rss'])} "
        f"to {mib(large['worker_rss'])} MiB. {large['size']} under 2 GiB: {under}.",
        "",
        "- The weights grow with users by the model's design (32 floats per user in a factor model: "
        f"{mib(large['model_bytes'])} MiB at {large['size']}). The workloads store them as ONNX external "
        "data, which ONNX Runtime maps from the file; weights inside the `.onnx` file are parsed and "
        "copied, so they are held twice while the model loads.",
        "- What else grows is the user vocabulary, about 20 bytes per id, which maps each "
        "interaction's user to the model's row.",
        "- The workloads' interactions are sorted by user, as an export by user gives them, so the "
        "ranking plugin reads them one user at a time (a first pass checks the grouping and counts "
        "buyers) and holds nobody's purchases beyond their turn. In any other order it holds every "
        f"user's purchases at once, 4 bytes per line and per user: {mib(held)} MiB more at {large['size']}.",
        "- The daemon's peak is its store: sled's page cache (`store_cache_mb`, 256 MiB by default) "
        "and sled's own bookkeeping while a publish writes every user's list. The rows are checked "
        "and encoded on the thread that collects them and written by a store writer thread beside "
        "it, for a whole job about a quarter faster than with one thread doing both. recd allocates "
        "through jemalloc: docs/internals.md, \"Memory allocator\", compares it with glibc's malloc.",
        f"- A daemon that lives on ({LIVED_RUNS} runs): from the third publish on, retention drops a version, and "
        "sled reads a dropped version's pages back to free them, so the peak over those runs holds one "
        f"version more. {IDLE_AFTER_S} s later, what it allocates is sled's page cache and bookkeeping for "
        "the versions kept; its RSS adds what jemalloc has not given back to the system.",
    ]


def gpu_lines(g: dict | None) -> list[str]:
    if g is None:
        return [
            "Not measured in this run: this machine has no GPU. `python3 scripts/bench_batch.py --gpu` on",
            "a CUDA host (ONNX Runtime's CUDA build through `ORT_DYLIB_PATH`; `../shared/tools/gpu/` packs",
            "it for a host without network; the Python loop needs the `onnxruntime-gpu` module) runs the",
            "MLP ranker on CUDA vs CPU through recd and vs a Python onnxruntime-gpu loop with I/O",
            f"binding (target: recd ≥ {GPU_LOOP_TARGET:g}× the loop's pairs/s), then the L workload's whole job",
            f"on CUDA with each model (target: ≤ {LARGE_JOB_TARGET:g}× its own scoring stage).",
        ]
    acc, cpu, dev = g["accel"], g["cpu"], "CUDA"
    lines = []
    if g["device"] == "cpu":
        dev = "CPU standing in for CUDA"
        lines += ["**A check of this script without a GPU** (`--gpu-device cpu`): the rows marked \"CPU standing",
                  "in for CUDA\" ran on the CPU. These are not GPU figures.", ""]
    x_cpu = acc["rows_per_s"] / cpu["rows_per_s"]
    lines += [
        f"MLP ranker (2 × 256 hidden) on workload {g['size']}: pairs per second in the scoring stage.",
        "",
        "| run | pairs | scoring s | pairs/s | ratio | target |",
        "|---|--:|--:|--:|--:|---|",
        f"| recd, CPU | {cpu['rows']:,} | {cpu['seconds']:.2f} | {cpu['rows_per_s']:,.0f} | | |",
        f"| recd, {dev} | {acc['rows']:,} | {acc['seconds']:.2f} | {acc['rows_per_s']:,.0f} | {x_cpu:.1f}× CPU | |",
    ]
    if "python_cuda" in g:
        p = g["python_cuda"]
        x_py = acc["rows_per_s"] / p["rows_per_s"]
        verdict = "met" if x_py >= GPU_LOOP_TARGET else "**NOT met**"
        lines.append(
            f"| Python onnxruntime-gpu, I/O binding | {p['rows']:,} | {p['seconds']:.2f} | {p['rows_per_s']:,.0f} "
            f"| recd {x_py:.2f}× | ≥ {GPU_LOOP_TARGET:g}×: {verdict} |"
        )
    else:
        lines.append(f"| Python onnxruntime-gpu | | | | | not run: {g.get('python_cuda_error', '?')} |")
    lines += [
        "",
        f"Whole jobs on {dev}: the `recd run` wall time against the run's own scoring stage, and where the rest went",
        "(stage seconds from the run's history, as above).",
        "",
        "| workload | model | pairs | whole job s | scoring s | whole / scoring | target | "
        + " | ".join(k.replace("_", " ") for k in STAGES) + " | worker peak MiB | daemon peak MiB |",
        "|---|---|--:|--:|--:|--:|---|" + "--:|" * (len(STAGES) + 2),
    ]
    for r in g.get("large", []):
        x = r["wall"] / r["score"]
        verdict = "met" if x <= LARGE_JOB_TARGET else "**NOT met**"
        lines.append(
            f"| {r['size']} | {r['model']} | {r['rows']:,} | {r['wall']:.2f} | {r['score']:.2f} | {x:.1f} "
            f"| ≤ {LARGE_JOB_TARGET:g}: {verdict} | " + " | ".join(f"{r['stages'][k]:.2f}" for k in STAGES)
            + f" | {mib(r['worker_rss'])} | {mib(r['daemon_rss'])} |"
        )
    return lines


# ---------------------------------------------------------------- report


def mib(b: int) -> str:
    return f"{b / 2**20:,.0f}"


def e2e_verdict(r: dict) -> str:
    """The whole-job target, where the model lets any engine reach it: a job cannot take
    less than its model's own ONNX Runtime loop, so Python / loop is the best ratio there
    is. Where that ceiling is under the target the model bounds both sides (the MLP, or a
    factor model with many factors and every unseen item a candidate); the row says so
    and by how much, rather than judge a ratio no engine could give."""
    ceiling = r["python_s"] / r["score"]["loop_s"]
    if ceiling < E2E_TARGET:
        share = r["score"]["loop_s"] / r["python_s"]
        return (f"out of reach: the model's own loop is {share:.0%} of the Python pipeline "
                f"(best possible {ceiling:.1f}×); recd at {r['ratio'] / ceiling:.0%} of that")
    return "met" if r["ratio"] >= E2E_TARGET else "**NOT met**"


def render(e2e: list[dict], mem: list[dict], g: dict | None, m: dict, meta: dict) -> str:
    lines = [
        BEGIN,
        "## Batch jobs: recd vs the Python pipeline and ONNX Runtime's own loop",
        "",
        "Generated by `make bench-batch` (`scripts/bench_batch.py`): do not edit by hand, run it",
        f"again. Result of {meta['date']}, on the machine described below (load average before:",
        f"{meta['load_before']}; after: {meta['load_after']}; whole run {meta['run_time']:.0f} s). Each time is the",
        f"median of {meta['rounds']} runs per side.",
        "",
        "### a) Whole job: recd vs the Python pipeline",
        "",
        f"| dataset | users | pairs scored | recd s | Python s | Python / recd | target ≥ {E2E_TARGET:g} | Python s, imports left out | lists checked |",
        "|---|--:|--:|--:|--:|--:|---|--:|--:|",
    ]
    for r in e2e:
        target = e2e_verdict(r)
        lines.append(
            f"| {r['dataset']} | {r['users']:,} | {r['score']['rows']:,} | {r['recd_s']:.2f} | {r['python_s']:.2f} "
            f"| {r['ratio']:.2f} | {target} | {r['python_inside_s']:.2f} | {r['checked']} |"
        )
    lines += [
        "",
        "### b) Scoring stage: recd vs a tight ONNX Runtime loop on the same batches",
        "",
        f"| dataset | model calls | pairs | recd scoring s | loop s | recd / loop | target ≤ {SCORE_TARGET:g} | daemon CPU s in the run | Python pipeline's calls s | recd / those |",
        "|---|--:|--:|--:|--:|--:|---|--:|--:|--:|",
    ]
    for r in e2e:
        s = r["score"]
        lines.append(
            f"| {r['dataset']} | {s['calls']:,} | {s['rows']:,} | {s['recd_s']:.2f} | {s['loop_s']:.2f} "
            f"| {s['ratio']:.2f} | {'met' if s['ratio'] <= SCORE_TARGET else '**NOT met**'} | {s['daemon_cpu']:.2f} "
            f"| {s['python_score_s']:.2f} | {s['recd_s'] / s['python_score_s']:.2f} |"
        )
    lines += [
        "",
        "recd's model calls alternate with the plugin's own work on the same thread (building the",
        "next batch, keeping each user's top k), while the daemon stores the rows already scored",
        "(the daemon's CPU in the run, most of it sled inserts); the loop makes its calls back to",
        "back on batches built beforehand. Between two calls ONNX Runtime's other thread sleeps (no",
        "spinning, on both sides) and each call wakes it, which costs more after a pause than in a",
        "tight loop, and more on some VMs than on others. The last two columns are the control: the",
        "Python pipeline's own calls, timed inside its whole runs in a), where they alternate with",
        "its own top k and Redis writes as recd's do. The target is judged against the tight loop.",
    ]
    lines += [
        "",
        "### Where recd's time goes (stage medians, seconds)",
        "",
        "From each run's history: the worker's stages (inputs read, model load, the plugin's own",
        "work, scoring, emitting rows), then the daemon's (checking rows and writing them, which",
        "run beside the worker as its rows arrive, and publishing, after it ends). `rest` is the",
        "whole job's wall time less the worker's stages and the publish (process starts, the",
        "client, the daemon's last rows).",
        "",
        "| dataset | recd s | read | model load | plugin | score | emit | collect | store | publish | rest |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in e2e:
        st = r["stages"]
        rest = r["recd_s"] - sum(st[k] for k in STAGES if k not in ("collect", "store"))
        lines.append(f"| {r['dataset']} | {r['recd_s']:.2f} | " + " | ".join(f"{st[k]:.2f}" for k in STAGES)
                     + f" | {rest:.2f} |")
    lines += [
        "",
        "### Reads while a job writes (milliseconds per read)",
        "",
        "One more recd run per dataset, while one client reads users' top 10 from the version",
        "served until the run publishes, one read at a time, each list once (a first read misses",
        "the read cache and reads sled), in a shuffled order, paced to last 1.25 times the run's",
        "median time (back to back where the client cannot keep up), until the run ends; then",
        "as many reads of other users, paced the same, with the daemon idle. A store whose",
        "writers held readers up would show as a p99 or max far above the idle columns; the",
        "reads during the run also share the cores with the worker's scoring, so part of any",
        "gap is CPU. The client's own time is included (a Python client).",
        "",
        "| dataset | reads during the run | p50 | p99 | max | reads, daemon idle | p50 | p99 | max |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in e2e:
        d, i = r["reads"]["during"], r["reads"]["idle"]
        ran_out = "" if r["reads"]["outlasted"] else " (the reads ran out before the run ended)"
        lines.append(f"| {r['dataset']}{ran_out} | {d['n']:,} | {d['p50']:.3f} | {d['p99']:.2f} | {d['max']:.1f} "
                     f"| {i['n']:,} | {i['p50']:.3f} | {i['p99']:.2f} | {i['max']:.1f} |")
    lines += [
        "",
        "### Disk writes while idle (MB/s)",
        "",
        f"What the daemon writes in {IDLE_SECONDS:.0f} s while idle, from a few seconds after each dataset's last",
        "run (its `write_bytes` in /proc, its log included): sled's flusher cleans its log each",
        "time it wakes. When it woke every 0.5 s (sled's default), an idle daemon wrote about",
        "1.9 MB/s after the M runs (measured when that changed).",
        "",
        "| dataset | idle writes, MB/s |",
        "|---|--:|",
    ]
    for r in e2e:
        rate = r["idle_mb_s"]
        lines.append(f"| {r['dataset']} | {'n/a' if rate is None else f'{rate:.2f}'} |")
    lines += [
        "",
        "### c) Peak memory as users grow (factor model, 500 popular candidates per user)",
        "",
        "| workload | users | items | interaction lines | pairs scored | run s | model MiB | worker peak MiB "
        "| worker peak beyond the model MiB | daemon peak MiB "
        f"| daemon peak over {LIVED_RUNS} runs MiB | {IDLE_AFTER_S} s later: daemon allocated MiB | {IDLE_AFTER_S} s later: daemon RSS MiB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in mem:
        lines.append(
            f"| {r['size']} | {r['users']:,} | {r['items']:,} | {r['lines']:,} | {r['pairs']:,} | {r['wall']:.1f} "
            f"| {mib(r['model_bytes'])} | {mib(r['worker_rss'])} | {mib(r['worker_rss'] - r['model_bytes'])} "
            f"| {mib(r['daemon_rss'])} | {mib(r['lived_peak'])} | {mib(r['lived_allocated'])} | {mib(r['lived_idle_rss'])} |"
        )
    if mem:
        lines += [
            "",
            "Where those runs' time went (one run each, stage seconds as above):",
            "",
            "| workload | run s | " + " | ".join(k.replace("_", " ") for k in STAGES) + " | rest |",
            "|---|--:|" + "--:|" * (len(STAGES) + 1),
        ]
        for r in mem:
            st = r["stages"]
            rest = r["wall"] - sum(st[k] for k in STAGES if k not in ("collect", "store"))
            lines.append(f"| {r['size']} | {r['wall']:.2f} | " + " | ".join(f"{st[k]:.2f}" for k in STAGES)
                         + f" | {rest:.2f} |")
    lines += [
        "",
        *memory_verdict(mem),
        "",
        "### d) GPU",
        "",
        *gpu_lines(g),
        "",
        "### Machine and method",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; RAM {m['ram']}; {m['kernel']}",
        f"- recd: commit `{m['commit']}`, release build; ONNX Runtime 1.31.1 (PyPI `onnxruntime`) on",
        "  both sides; the Python pipeline: Python " + sys.version.split()[0] + ", pandas, numpy, onnxruntime and",
        f"  redis-py 6.4.0, writing into `{m['redis']}`.",
        "- Both sides score with graph optimisation on, as many intra-op threads as cores and no",
        "  spinning, in batches of the same size (the ranking plugin's rule when the job sets no",
        "  `batch_pairs`: an eighth of the run's pairs, 4,096 to 65,536), users in model-index",
        "  order. Times are wall clock from process start to exit: for recd the `recd run` command",
        "  against a running daemon (a worker process, then publish and flush), for Python the",
        "  interpreter, its imports and the script.",
        "- Datasets: retail = the demo data with the shipped model (`jobs/ranking.toml`: EASE^R and",
        "  decayed popularity exported as a 128-factor dot product, every unseen item a candidate); MovieLens 100K read in place, every unseen movie a candidate,",
        "  a seeded 32-factor model; M and S = `scripts/gen_workload.py --size M|S` (seed 42), the 500",
        "  most-bought items minus the user's own, with the 32-factor model or (`S:mlp`) the MLP",
        "  ranker. Before a time counts, 200 sampled users' lists are compared (same items, scores",
        "  within 1e-4).",
        "- The scoring stage of recd is the worker's own timing of its ONNX Runtime calls, Arrow",
        "  columns to tensors and back included, in the same runs as a); the loop builds the same",
        "  batches first and times `session.run` alone, with nothing else running.",
        "- Peak memory: the worker's VmHWM (reported by the worker at the end of its run) and the",
        "  daemon's VmHWM over its life (it starts fresh for each workload), after the first run and",
        f"  {IDLE_AFTER_S} s after {LIVED_RUNS} runs (the version retention lets go is dropped after the publish,",
        "  on a thread of its own), with jemalloc's allocated bytes (INFO) and the daemon's VmRSS then.",
        END,
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="S,M,L", help="workloads for the memory rows")
    p.add_argument("--datasets", default="retail,movielens,M,S:mlp",
                   help="datasets for the end-to-end rows: retail, movielens, or a workload size "
                        "with an optional model (M, S:mlp)")
    p.add_argument("--rounds", type=int, default=5, help="runs per side and dataset; medians are reported")
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--gpu", action="store_true", help="also d): needs a CUDA GPU and ONNX Runtime's CUDA build")
    p.add_argument("--gpu-size", default="M", help="workload for the GPU scoring rows")
    p.add_argument("--gpu-large", default="L", help="workload for the GPU whole-job rows")
    p.add_argument("--gpu-device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: run d) without a GPU, to check this script (the report says so)")
    args = p.parse_args()
    for path in [RECD, ORT]:
        if not path.exists():
            raise Fail(f"{path} is missing: run `make setup`")
    WORK.mkdir(parents=True, exist_ok=True)
    m, load_before, t0 = machine(), loadavg(), time.monotonic()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    procs = Procs()
    e2e, mem, g = [], [], None
    try:
        for i, name in enumerate(filter(None, args.datasets.split(","))):
            if name == "retail":
                text = demo_job()
            elif name == "movielens":
                text = (movielens() / "ranking-mf.toml").read_text()
            else:
                size, _, model = name.partition(":")
                text = (workload(size) / f"ranking-{model or 'mf'}.toml").read_text()
            row = end_to_end(procs, name, text, args.rounds)
            log(f"{name}: recd {row['recd_s']:.2f}s, python {row['python_s']:.2f}s, x{row['ratio']:.2f}; "
                f"scoring recd {row['score']['recd_s']:.2f}s vs loop {row['score']['loop_s']:.2f}s")
            e2e.append(row)
        for size in filter(None, args.sizes.split(",")):
            mem.append(memory(procs, size))
        if args.gpu:
            g = gpu(procs, args.gpu_size, args.gpu_large, args.gpu_device)
    finally:
        procs.stop_all()
    meta = {"date": date, "load_before": load_before, "load_after": loadavg(), "run_time": time.monotonic() - t0,
            "rounds": args.rounds}
    section = render(e2e, mem, g, m, meta)
    print(section)
    if not args.no_doc:
        write_section(DOC, "bench-batch", section)
        log(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Fail as e:
        print(f"bench-batch: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
