#!/usr/bin/env python3
"""What a publish gate costs: the same synthetic table published by a job without a gate
and by one with every list check (users ratio, changed share, score PSI, a holdout),
side by side in one daemon, alternating, the median of the rounds after the first (the
first version has nothing to compare with).

    make bench-gate                              # 1,000,000 users x 10 items, 3 rounds
    python3 scripts/bench_gate.py --users 200000 --no-doc   # quicker, print only

Each round publishes a new table (a new seed), so every list changes and every check does
its whole work; the limits are set so that every version passes (a held version would
not be the current one the next round compares with). The holdout is one user in ten,
each with one item. Work files in target/bench-gate/.
"""

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import Conn, Fail, Procs, loadavg, machine, tail, wait_for_socket, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECD = ROOT / "target" / "release" / "recd"
ORT = ROOT / ".deps" / "py" / "onnxruntime" / "capi" / "libonnxruntime.so.1.31.1"
WORK = ROOT / "target" / "bench-gate"
DOC = ROOT / "docs" / "performance.md"
GATE = """
[gate]
min_users_ratio = 0.5
max_changed_share = 1.0
max_score_psi = 100.0
holdout = "holdout.csv"
metric = "ndcg@10"
max_metric_drop = 1.0
"""


def log(msg: str) -> None:
    print(f"bench-gate: {msg}", file=sys.stderr, flush=True)


def job(users: int, items: int, seed: int, gated: bool) -> str:
    text = f'plugin = "synthetic"\n[params]\nusers = {users}\nitems = {items}\ncatalogue = 10000\nseed = {seed}\n'
    return text + (GATE if gated else "")


def holdout(path: Path, users: int) -> int:
    rng = random.Random(7)
    rows = [f"{u:012},item-{rng.randrange(10000)}" for u in range(0, users, 10)]
    path.write_text("user_id,item_id\n" + "\n".join(rows) + "\n")
    return len(rows)


class Daemon:
    def __init__(self, procs: Procs, work: Path):
        self.work, self.config = work, work / "recd.toml"
        (work / "recd.toml").write_text(
            'data_dir = "data"\nsocket = "recd.sock"\nadmin_socket = "admin.sock"\njobs_dir = "jobs"\n'
            f'plugins_dir = "{RECD.parent}"\nonnxruntime = "{ORT}"\n'
        )
        self.proc = procs.start("recd serve", [str(RECD), "serve", "--config", str(self.config)], work / "recd.log")
        wait_for_socket(work / "admin.sock", self.proc, "recd serve (admin)", work / "recd.log")

    def cli(self, *args: str) -> str:
        run = subprocess.run([str(RECD), *args, "--config", str(self.config)], capture_output=True, text=True)
        if run.returncode != 0:
            raise Fail(f"recd {' '.join(args)} failed:\n{run.stderr}\n{tail(self.work / 'recd.log')}")
        return run.stdout

    def run(self, name: str) -> dict:
        t0 = time.perf_counter()
        self.cli("run", name)
        wall = time.perf_counter() - t0
        conn = Conn(self.work / "admin.sock")
        record = json.loads(conn.call("HISTORY", name, "1"))[0]
        conn.close()
        return {"wall": wall, "publish": float(record["stages"]["publish_seconds"]), "gate": record.get("gate")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--items", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3, help="rounds after the first; medians are reported")
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args()
    for path in [RECD, ORT]:
        if not path.exists():
            raise Fail(f"{path} is missing: run `make setup` and `cargo build --release --workspace --all-targets`")
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "jobs").mkdir(parents=True)
    m, load_before, t0 = machine(), loadavg(), time.monotonic()
    holdout_users = holdout(WORK / "holdout.csv", args.users)
    procs = Procs()
    runs: dict[str, list[dict]] = {"plain": [], "gated": []}
    try:
        d = Daemon(procs, WORK)
        for r in range(args.rounds + 1):
            for name in (["plain", "gated"] if r % 2 == 0 else ["gated", "plain"]):
                (WORK / "jobs" / f"{name}.toml").write_text(job(args.users, args.items, r + 1, name == "gated"))
            d.cli("reload")
            for name in (["plain", "gated"] if r % 2 == 0 else ["gated", "plain"]):
                got = d.run(name)
                log(f"round {r} {name}: run {got['wall']:.2f}s, publish {got['publish']:.2f}s")
                if r > 0:
                    runs[name].append(got)
    finally:
        procs.stop_all()
    med = {n: {k: statistics.median(x[k] for x in rs) for k in ("wall", "publish")} for n, rs in runs.items()}
    g = runs["gated"][-1]["gate"] or {}
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = args.users * args.items
    section = "\n".join([
        "<!-- bench-gate: begin -->",
        "## Publish gates",
        "",
        "Generated by `make bench-gate` (`scripts/bench_gate.py`): do not edit by hand.",
        "",
        f"A synthetic table of {args.users:,} users x {args.items} items ({rows:,} rows), published by a job",
        "without a gate and by one with `min_users_ratio`, `max_changed_share`, `max_score_psi` and a",
        f"holdout of {holdout_users:,} users (`ndcg@10`), alternating in one daemon; every round a new seed,",
        f"so every list changes. Median of {args.rounds} rounds after the first; `publish` is the daemon's",
        "publish stage, which holds the gate's scans.",
        "",
        "| job | whole run s | publish s |",
        "|---|--:|--:|",
        f"| no gate | {med['plain']['wall']:.2f} | {med['plain']['publish']:.2f} |",
        f"| every check | {med['gated']['wall']:.2f} | {med['gated']['publish']:.2f} |",
        "",
        f"The gate's checks cost {med['gated']['publish'] - med['plain']['publish']:.2f} s "
        f"({(med['gated']['wall'] / med['plain']['wall'] - 1) * 100:+.0f}% of the whole run). Last gated run "
        f"measured: changed share {g.get('changed_share', 0):.3f}, score PSI {g.get('score_psi', 0):.4f}, "
        f"holdout {(g.get('holdout') or {}).get('metric', '?')} {(g.get('holdout') or {}).get('value', 0):.4f}.",
        "",
        f"Run {date} on {m['cpu']}, {m['cores']} cores; load {load_before} before, {loadavg()} after; "
        f"{time.monotonic() - t0:.0f} s.",
        "<!-- bench-gate: end -->",
    ])
    print(section)
    if not args.no_doc:
        write_section(DOC, "bench-gate", section)
        log(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Fail as e:
        print(f"bench-gate: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
