#!/usr/bin/env python3
"""Synthetic but realistic recommendation workloads for the batch benchmarks, seeded and
reproducible: the same size and seed give the same bytes.

    PYTHONPATH=.deps/pytools python3 scripts/gen_workload.py --size M --out target/workloads/M
    ... --reuse     # leave a folder this generator already wrote for that size and seed

Sizes (users x items, candidates per user):

    S:    10,000 users x  5,000 items, 500 candidates
    M:   100,000 users x 20,000 items, 500 candidates
    L: 1,000,000 users x 50,000 items, 500 candidates

What is in a workload folder:

- ``interactions.parquet``: user_id, item_id (utf8), timestamp (ms since the epoch),
  quantity (int32), sorted by user then time, as an export by user gives them (the ranking
  plugin then reads them one user at a time). Users' activity is skewed (log-normal, a few very active users, a
  long tail with one or two lines); item popularity follows a power law (Zipf, exponent
  1.05) mixed with each user segment's taste for a few item categories; each user's lines
  fall after a start date inside the year, bunched towards it.
- ``users.csv`` (user_id, index, segment) and ``items.csv`` (item_id, index, category):
  the models' vocabularies.
- ``mf.onnx`` (weights in ``mf.onnx.data``, likewise for the MLP): a 32-factor dot-product model, the graph of ``models/ranking/mf.onnx`` (inputs
  ``user``, ``item``; output ``score``); factors are segment and category centres plus
  noise, so scores carry the same taste structure as the interactions.
- ``mlp.onnx``: the heavier benchmark ranker: user and item embeddings (32 each),
  concatenated, two hidden layers of 256 (ReLU) and a sigmoid score. Seeded weights
  (He initialisation over the same embeddings): a model for measuring speed, not quality.
- ``ranking-mf.toml``, ``ranking-mlp.toml``: ranking jobs over the workload
  (``candidates = "popular"`` with the workload's pool, k = 10), with absolute paths.
- ``workload.json``: size, seed, counts and the generator's parameters.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SIZES = {
    "S": {"users": 10_000, "items": 5_000, "candidates": 500},
    "M": {"users": 100_000, "items": 20_000, "candidates": 500},
    "L": {"users": 1_000_000, "items": 50_000, "candidates": 500},
}
SEGMENTS = 8
CATEGORIES = 24
FACTORS = 32
HIDDEN = 256
ZIPF = 1.05
MEAN_LINES = 12.0  # mean interaction lines per user
TASTE = 0.6  # share of a user's lines drawn from their segment's favourite categories
YEAR_MS = 365 * 24 * 3600 * 1000
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
OPSET = 17
# Bumped when what a workload folder holds changes; the benchmarks regenerate older ones.
GENERATOR = 2
IR_VERSION = 8


def log(msg: str) -> None:
    print(f"gen-workload: {msg}", file=sys.stderr, flush=True)


def item_popularity(rng: np.random.Generator, n_items: int) -> np.ndarray:
    """Zipf weights over a random permutation, so popularity is not the item index."""
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    weights = ranks ** -ZIPF
    return weights[rng.permutation(n_items)] / weights.sum()


def lines_per_user(rng: np.random.Generator, n_users: int) -> np.ndarray:
    """Log-normal activity with the given mean, at least one line each."""
    sigma = 1.1
    mu = np.log(MEAN_LINES) - sigma**2 / 2
    return np.maximum(1, np.rint(rng.lognormal(mu, sigma, n_users))).astype(np.int64)


def interactions(rng, n_users, n_items, segment, category, popularity):
    counts = lines_per_user(rng, n_users)
    users = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    n = len(users)
    # Each segment likes three categories; its taste distribution is popularity restricted
    # to them. A line is drawn from the taste or from global popularity.
    likes = np.stack([rng.choice(CATEGORIES, 3, replace=False) for _ in range(SEGMENTS)])
    items = np.empty(n, dtype=np.int64)
    from_taste = rng.random(n) < TASTE
    line_segment = segment[users]
    glob = ~from_taste
    items[glob] = rng.choice(n_items, glob.sum(), p=popularity)
    for s in range(SEGMENTS):
        mask = from_taste & (line_segment == s)
        p = popularity * np.isin(category, likes[s])
        items[mask] = rng.choice(n_items, mask.sum(), p=p / p.sum())
    # Timestamps: each user starts somewhere in the year, lines bunch after the start.
    start = rng.integers(0, YEAR_MS // 2, n_users)
    offset = np.minimum(rng.exponential(YEAR_MS / 6, n), YEAR_MS // 2 - 1).astype(np.int64)
    ts = START_MS + start[users] + offset
    qty = np.minimum(1 + rng.geometric(0.5, n) - 1, 24).astype(np.int32)
    order = np.lexsort((ts, users))
    return users[order], items[order], ts[order], qty[order]


def ids(prefix: str, n: int) -> np.ndarray:
    width = len(str(n - 1))
    return np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), width))


def factors(rng, groups: np.ndarray, n_groups: int, scale: np.ndarray | float) -> np.ndarray:
    centres = rng.normal(0, 1 / np.sqrt(FACTORS), (n_groups, FACTORS))
    noise = rng.normal(0, 0.5 / np.sqrt(FACTORS), (len(groups), FACTORS))
    return ((centres[groups] + noise) * np.asarray(scale).reshape(-1, 1)).astype(np.float32)


def mf_model(U: np.ndarray, V: np.ndarray, meta: dict):
    from onnx import helper, numpy_helper

    nodes = [
        helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([1], np.int64), "axes_v")),
        helper.make_node("Gather", ["user_factors", "user"], ["u"], axis=0),
        helper.make_node("Gather", ["item_factors", "item"], ["i"], axis=0),
        helper.make_node("Mul", ["u", "i"], ["prod"]),
        helper.make_node("ReduceSum", ["prod", "axes"], ["score"], keepdims=0),
    ]
    inits = [numpy_helper.from_array(U, "user_factors"), numpy_helper.from_array(V, "item_factors")]
    return finish("recd_workload_mf", nodes, inits, meta)


def mlp_model(U: np.ndarray, V: np.ndarray, rng, meta: dict):
    """score = sigmoid(w3 . relu(W2 relu(W1 [u; i] + b1) + b2) + b3)."""
    from onnx import helper, numpy_helper

    def he(n_in, n_out):
        return rng.normal(0, np.sqrt(2 / n_in), (n_in, n_out)).astype(np.float32)

    W1, W2, W3 = he(2 * FACTORS, HIDDEN), he(HIDDEN, HIDDEN), he(HIDDEN, 1)
    b1 = np.full(HIDDEN, 0.01, np.float32)
    b2 = np.full(HIDDEN, 0.01, np.float32)
    b3 = np.zeros(1, np.float32)
    nodes = [
        helper.make_node("Gather", ["user_emb", "user"], ["u"], axis=0),
        helper.make_node("Gather", ["item_emb", "item"], ["i"], axis=0),
        helper.make_node("Concat", ["u", "i"], ["x"], axis=1),
        helper.make_node("Gemm", ["x", "W1", "b1"], ["h1_pre"]),
        helper.make_node("Relu", ["h1_pre"], ["h1"]),
        helper.make_node("Gemm", ["h1", "W2", "b2"], ["h2_pre"]),
        helper.make_node("Relu", ["h2_pre"], ["h2"]),
        helper.make_node("Gemm", ["h2", "W3", "b3"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
        helper.make_node("Flatten", ["prob"], ["prob2d"], axis=0),
        helper.make_node("Squeeze", ["prob2d", "squeeze_axes"], ["score"]),
        helper.make_node(
            "Constant", [], ["squeeze_axes"], value=numpy_helper.from_array(np.array([0], np.int64), "sq_v")
        ),
    ]
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in [(U, "user_emb"), (V, "item_emb"), (W1, "W1"), (b1, "b1"), (W2, "W2"), (b2, "b2"), (W3, "W3"),
                     (b3, "b3")]
    ]
    # Constant first: ONNX wants nodes in topological order.
    nodes.insert(0, nodes.pop())
    return finish("recd_workload_mlp", nodes, inits, meta)


def finish(name, nodes, inits, meta):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        name,
        inputs=[
            helper.make_tensor_value_info("user", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("item", TensorProto.INT64, ["N"]),
        ],
        outputs=[helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="recd/scripts/gen_workload.py")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {k: str(v) for k, v in meta.items()})
    onnx.checker.check_model(model, full_check=True)
    return model


def save_model(model, path: Path) -> None:
    """Writes the weights beside the graph, as external data (`<name>.onnx.data`), the way
    exporters write big models: ONNX Runtime then maps that file instead of parsing the
    weights into its protobuf and copying them out again, which at L (128 MiB of user
    factors) doubled the worker's peak while the model loaded."""
    import onnx

    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=1024)


def job(out: Path, model: str, pool: int | None, what: str) -> str:
    """A ranking job over the workload in `out`: the `pool` most-bought items as each
    user's candidates, or with no pool every unseen item."""
    candidates = f'"popular"\npopular_pool = {pool}' if pool else '"unseen"'
    return f"""# generated by scripts/gen_workload.py: {what}
description = "benchmark ranking over {out.name}: {what}"
plugin = "ranking"
model = "{out / model}"
device = "cpu"
max_items_per_user = 10

[inputs]
interactions = "{out / 'interactions.parquet'}"
users = "{out / 'users.csv'}"
items = "{out / 'items.csv'}"

[params]
k = 10
candidates = {candidates}
"""


def generate(size: str, seed: int, out: Path) -> dict:
    import onnx

    spec = SIZES[size]
    n_users, n_items = spec["users"], spec["items"]
    rng = np.random.default_rng(seed)
    t0 = time.monotonic()
    segment = rng.integers(0, SEGMENTS, n_users)
    category = rng.integers(0, CATEGORIES, n_items)
    popularity = item_popularity(rng, n_items)
    users, items, ts, qty = interactions(rng, n_users, n_items, segment, category, popularity)
    log(f"{size}: {len(users):,} interaction lines for {n_users:,} users x {n_items:,} items "
        f"({time.monotonic() - t0:.1f}s)")

    out.mkdir(parents=True, exist_ok=True)
    user_ids, item_ids = ids("u", n_users), ids("i", n_items)
    table = pa.table({
        "user_id": pa.array(user_ids[users]),
        "item_id": pa.array(item_ids[items]),
        "timestamp": pa.array(ts, pa.int64()),
        "quantity": pa.array(qty, pa.int32()),
    })
    pq.write_table(table, out / "interactions.parquet", compression="zstd", row_group_size=1 << 20)
    with open(out / "users.csv", "w") as f:
        f.write("user_id,index,segment\n")
        f.writelines(f"{u},{i},{s}\n" for i, (u, s) in enumerate(zip(user_ids.tolist(), segment.tolist())))
    with open(out / "items.csv", "w") as f:
        f.write("item_id,index,category\n")
        f.writelines(f"{it},{i},{c}\n" for i, (it, c) in enumerate(zip(item_ids.tolist(), category.tolist())))

    # Item factor length grows with popularity, as trained factors' do.
    pop_scale = 0.5 + (popularity / popularity.max()) ** 0.25
    U = factors(rng, segment, SEGMENTS, 1.0)
    V = factors(rng, category, CATEGORIES, pop_scale)
    meta = {"workload": size, "seed": seed, "factors": FACTORS}
    save_model(mf_model(U, V, meta), out / "mf.onnx")
    save_model(mlp_model(U, V, rng, {**meta, "hidden": f"{HIDDEN}x{HIDDEN}"}), out / "mlp.onnx")
    pool = spec["candidates"]
    (out / "ranking-mf.toml").write_text(job(out, "mf.onnx", pool, "32-factor dot product"))
    (out / "ranking-mlp.toml").write_text(job(out, "mlp.onnx", pool, f"MLP {HIDDEN}x{HIDDEN} over embeddings"))
    info = {
        "generator": GENERATOR, "size": size, "seed": seed, "users": n_users, "items": n_items, "candidates": pool,
        "lines": int(len(users)), "segments": SEGMENTS, "categories": CATEGORIES, "zipf": ZIPF,
        "mean_lines": MEAN_LINES, "taste": TASTE, "factors": FACTORS, "hidden": HIDDEN,
    }
    (out / "workload.json").write_text(json.dumps(info, indent=2) + "\n")
    log(f"{size}: wrote {out} ({time.monotonic() - t0:.1f}s)")
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), required=True)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--reuse", action="store_true",
                   help="keep a folder this generator already wrote for the same size and seed")
    args = p.parse_args(argv)
    out = args.out.resolve()
    if args.reuse and (out / "workload.json").is_file():
        info = json.loads((out / "workload.json").read_text())
        if (info.get("generator"), info.get("size"), info.get("seed")) == (GENERATOR, args.size, args.seed):
            return 0
    generate(args.size, args.seed, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
