#!/usr/bin/env python3
"""Train the ranking model and export it to ONNX, choosing its family by validation.

Families (numpy, float64 while training, exported as float32):
* ``popularity``: each item's non-cancelled lines, each weighted 0.5^(age / half-life);
* ``als``: implicit ALS (Hu, Koren, Volinsky, ICDM 2008), 32 factors, confidence
  1 + alpha * log1p(invoices);
* ``ease``: EASE^R (Steck, WWW 2019), the item-item matrix B = I - P / diag(P),
  P = (X^T X + lambda I)^-1, over user rows X whose positives weigh 0.5^(age of the last
  purchase / half-life) (or 1);
* ``ease+popularity``: each user's EASE^R scores standardised, plus a weight times the
  standardised decayed popularity.

Selection: every setting is scored by nDCG@10 on two validation windows cut from the data
read (the latest 15% of its lines by time from the day of their 85% quantile, then the
15% before that, each learning only from the lines before it; ``--validation-cutoff``
moves the first). The setting with the best mean is retrained on everything read and
exported. With ``--cutoff DATE`` nothing at or after DATE is read, so a report can judge
the model on what follows.

Data: ``--data`` takes any interactions file, Parquet or CSV, with a user, an item and a
time column (``user_id``, ``item_id``, ``ts`` unless ``--user-column``, ``--item-column``,
``--time-column`` name others). Ids may be strings or integers (a CSV's are read as text,
so ``017850`` keeps its zero). The time may be a timestamp of any unit, naive (taken as
UTC) or with a time zone, ISO text, or epoch seconds or milliseconds (``--time-unit``;
``auto`` takes numbers above 10^11 as milliseconds). Optionally ``cancelled`` (bool; absent
= nothing cancelled), ``quantity`` (absent = +1 per line, -1 per cancelled line) and
``invoice`` (absent = every line its own event). A (user, item) pair is positive when its
net quantity is above 0; only users and items with a positive are in the vocabularies. A
user's lists never hold an item of one of their non-cancelled lines.

Outputs (``--out DIR``, required: the shipped model is ``--out models/ranking``):
* ``mf.onnx`` -- inputs ``user`` int64 [N], ``item`` int64 [N] (model indices); output
  ``score`` float32 [N] = dot(user_factors[user], item_factors[item]). EASE^R's item-item
  matrix is exported as its rank-128 factorisation (127 for the blend, whose popularity is
  one more column); factors are padded with zero columns to a multiple of 32, so ONNX
  Runtime gives the same bits whatever the batch;
* ``users.csv`` -- ``user_id,index``; ``items.csv`` -- ``item_id,index``;
* ``item_factors.parquet`` -- ``item_id`` (utf8), ``embedding`` (fixed_size_list<float32,
  d>): item embeddings for similarity (embedding diversity): ALS's item factors, or for
  EASE^R each item's column of the rank-128 matrix (singular vectors scaled by their
  singular values);
* ``metrics.json`` -- the training data's size (lines, users, items, positive pairs) and,
  unless ``--no-validation``, the chosen setting's mean validation nDCG@10: what recd's model
  registry records when a command job runs this script (``produces = "registry:<name>"``);
* ``README.md`` -- the model card with the validation table (demo data only).

Deterministic: fixed seed, single-threaded BLAS.

Usage (``--help`` works without the packages; ``scripts/setup.sh --tests`` installs them
into .deps/pytools):
    PYTHONPATH=.deps/pytools python3 scripts/train_ranking.py --out models/ranking   # the shipped model
    PYTHONPATH=.deps/pytools python3 scripts/train_ranking.py --data FILE --cutoff DATE --out DIR
    PYTHONPATH=.deps/pytools python3 scripts/train_ranking.py --data ratings.csv --user-column userId \
        --item-column movieId --time-column timestamp --out DIR
    python3 scripts/train_ranking.py --help
"""

from __future__ import annotations

import os

# Determinism and a light CPU footprint: single-threaded BLAS.
for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
DEFAULT_DATA = os.path.join(ROOT, "data", "demo", "retail.parquet")
DEFAULT_OUT = os.path.join(ROOT, "models", "ranking")
# Milliseconds since 1970 pass 10^11 in March 1973; seconds reach it in the year 5138.
EPOCH_MS_ABOVE = 10**11

FACTORS = 32
ITERATIONS = 15
SEED = 20080101
K = 10
# The families and the settings validation tries (module docstring).
FAMILIES = ("popularity", "als", "ease", "ease+popularity")
POP_HALF_LIVES = (3.0, 7.0, 30.0)
ALS_CONFIGS = ((10.0, 1.0), (40.0, 1.0))
ROW_HALF_LIVES = (15.0, 60.0, None)
LAMBDAS = (30.0, 100.0, 300.0, 1000.0)
BLEND_WEIGHTS = (0.5, 1.0, 2.0)
VALIDATION_SHARE = 0.85
VALIDATION_WINDOWS = 2
EXPORT_RANK = 128
OPSET = 17
IR_VERSION = 8


# --------------------------------------------------------------------------- data


REQUIRED = ("user_id", "item_id", "ts")
OPTIONAL = ("invoice", "quantity", "cancelled")


def read_table(path: str, columns: dict[str, str]):
    """The file's columns named in `columns` (its name -> ours), renamed to ours: Parquet,
    an Arrow IPC file (.arrow, .ipc), or CSV with the id columns read as text."""
    if path.lower().endswith(".csv"):
        import pyarrow.csv as pv
        import csv
        with open(path, newline="", encoding="utf-8-sig") as f:
            names = set(next(csv.reader(f), []))
        ids = {c: pa.string() for c in (columns_of(columns, "user_id"), columns_of(columns, "item_id")) if c in names}
        t = pv.read_csv(path, convert_options=pv.ConvertOptions(column_types=ids,
                                                               include_columns=[c for c in columns if c in names]))
    elif path.lower().endswith((".arrow", ".ipc")):
        import pyarrow.ipc as ipc
        with pa.memory_map(path) as source:
            t = ipc.open_file(source).read_all()
        names = set(t.schema.names)
        t = t.select([c for c in columns if c in names])
    else:
        names = set(pq.read_schema(path).names)
        t = pq.read_table(path, columns=[c for c in columns if c in names])
    missing = [theirs for theirs, ours in columns.items() if ours in REQUIRED and theirs not in names]
    if missing:
        raise SystemExit(f"{path}: no column {', '.join(missing)} (columns: {', '.join(sorted(names))}); "
                         "--user-column, --item-column and --time-column name the file's own")
    return t.rename_columns([columns[c] for c in t.column_names])


def columns_of(columns: dict[str, str], ours: str) -> str:
    """The file's name of our column `ours`."""
    return next(theirs for theirs, o in columns.items() if o == ours)


def epoch(values, unit: str, path: str, name: str):
    """Integer or float epoch times as timestamp[s]: `unit` s, ms, or auto (by magnitude)."""
    v = values.cast(pa.float64()).to_numpy(zero_copy_only=False)
    if unit == "auto":
        large = np.abs(v[~np.isnan(v)]) > EPOCH_MS_ABOVE
        if large.any() and not large.all():
            raise SystemExit(f"{path}: column {name} mixes epoch seconds and milliseconds (values on both sides "
                             f"of {EPOCH_MS_ABOVE}); --time-unit says which")
        unit = "ms" if large.any() else "s"
        print(f"{name}: epoch {'milliseconds' if unit == 'ms' else 'seconds'} (by magnitude; --time-unit sets it)")
    seconds = v / 1000.0 if unit == "ms" else v
    return pa.array(pd.to_datetime(seconds, unit="s").astype("datetime64[s]"), type=pa.timestamp("s"))


def to_utc_seconds(col, unit: str, path: str, name: str):
    """A time column as naive UTC timestamp[s]: timestamps of any unit (naive ones taken as
    UTC, zoned ones converted), ISO text, or epoch numbers."""
    typ = col.type
    if pa.types.is_timestamp(typ):
        if typ.tz is not None:
            col = col.cast(pa.timestamp(typ.unit, tz="UTC")).cast(pa.timestamp(typ.unit))
        return col.cast(pa.timestamp("s"), safe=False)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return epoch(col, unit, path, name)
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        parsed = pd.to_datetime(col.to_pandas(), utc=True, errors="coerce", format="mixed")
        bad = int(parsed.isna().sum() - col.null_count)
        if bad:
            raise SystemExit(f"{path}: column {name}: {bad} value(s) are not times")
        return pa.array(parsed.dt.tz_localize(None).astype("datetime64[s]"), type=pa.timestamp("s"))
    raise SystemExit(f"{path}: column {name} must hold times (a timestamp, ISO text or epoch numbers), found {typ}")


def load(path: str, names: dict[str, str] | None = None, time_unit: str = "auto") -> pd.DataFrame:
    """Read an interactions file into columns invoice, user_id, item_id, quantity, ts, cancelled.

    `names` maps our column names to the file's (default: the same). Required: the user
    and item ids (text, dictionary of text, or integers) and the time (see
    `to_utc_seconds`). Optional, with the defaults used when absent: cancelled (bool, all
    false), quantity (+1 per line, -1 per cancelled line), invoice (every line its own
    invoice). Rows with a null user, item or time are dropped; a null cancelled counts as
    false.
    """
    names = {c: c for c in OPTIONAL + REQUIRED} | (names or {})
    t = read_table(path, {theirs: ours for ours, theirs in names.items()})
    for c in ("user_id", "item_id"):
        typ = t.schema.field(c).type
        if pa.types.is_dictionary(typ):
            typ = typ.value_type
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_integer(typ)):
            raise SystemExit(f"{path}: column {names[c]} must hold text or integer ids, found {t.schema.field(c).type}")
        t = t.set_column(t.schema.get_field_index(c), c, t.column(c).cast(pa.string()))
    ts = to_utc_seconds(t.column("ts").combine_chunks(), time_unit, path, names["ts"])
    t = t.set_column(t.schema.get_field_index("ts"), "ts", ts)
    df = t.to_pandas()
    df["ts"] = df["ts"].astype("datetime64[s]")
    n0 = len(df)
    df = df.dropna(subset=list(REQUIRED))
    if len(df) < n0:
        print(f"dropped {n0 - len(df):,} lines with a null user_id, item_id or ts")
    if "cancelled" in df:
        df["cancelled"] = df["cancelled"].fillna(False).astype(bool)
    else:
        df["cancelled"] = False
    if "quantity" not in df:
        df["quantity"] = np.where(df["cancelled"].to_numpy(), -1, 1).astype(np.int64)
    if "invoice" not in df:
        df["invoice"] = np.arange(len(df), dtype=np.int64)
    return df.reset_index(drop=True)[["invoice", "user_id", "item_id", "quantity", "ts", "cancelled"]]


def interactions(df: pd.DataFrame) -> pd.DataFrame:
    """(user_id, item_id, n_invoices) for positive pairs (net quantity > 0)."""
    net = df.groupby(["user_id", "item_id"], sort=False)["quantity"].sum()
    bought = df[~df["cancelled"]]
    ninv = bought.groupby(["user_id", "item_id"], sort=False)["invoice"].nunique()
    pairs = pd.concat([net.rename("net"), ninv.rename("n")], axis=1).fillna({"n": 0})
    pairs = pairs[(pairs["net"] > 0) & (pairs["n"] > 0)].reset_index()
    return pairs[["user_id", "item_id", "n"]]


def sort_user_ids(ids) -> np.ndarray:
    """Sort user ids numerically (they are integer strings like '17850')."""
    ids = np.asarray(sorted(set(ids), key=lambda s: (len(s), s)), dtype=object)
    return ids


class Matrix:
    """CSR (by user) and CSC-as-CSR (by item) confidence matrices."""

    def __init__(self, pairs: pd.DataFrame, alpha: float, users=None, items=None):
        self.users = sort_user_ids(pairs["user_id"]) if users is None else users
        self.items = np.asarray(sorted(set(pairs["item_id"])), dtype=object) if items is None else items
        uidx = pd.Index(self.users)
        iidx = pd.Index(self.items)
        u = uidx.get_indexer(pairs["user_id"])
        i = iidx.get_indexer(pairs["item_id"])
        assert (u >= 0).all() and (i >= 0).all()
        c = 1.0 + alpha * np.log1p(pairs["n"].to_numpy(dtype=np.float64))
        self.n_users, self.n_items = len(self.users), len(self.items)
        self.by_user = _csr(u, i, c, self.n_users)
        self.by_item = _csr(i, u, c, self.n_items)
        self.nnz = len(c)


def _csr(rows, cols, vals, n_rows):
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.add.at(indptr, rows + 1, 1)
    return np.cumsum(indptr), cols.astype(np.int64), vals


# --------------------------------------------------------------------------- ALS


def _half_step(csr, Y: np.ndarray, reg: float) -> np.ndarray:
    """Solve for every row x_u given the fixed other-side factors Y."""
    indptr, indices, conf = csr
    n, f = len(indptr) - 1, Y.shape[1]
    YtY = Y.T @ Y
    A = np.empty((n, f, f))
    b = np.empty((n, f))
    eye = reg * np.eye(f)
    for u in range(n):
        s, e = indptr[u], indptr[u + 1]
        Yu = Y[indices[s:e]]
        c = conf[s:e]
        A[u] = YtY + (Yu.T * (c - 1.0)) @ Yu + eye
        b[u] = Yu.T @ c
    return np.linalg.solve(A, b[..., None])[..., 0]


def train_als(m: Matrix, alpha_label: float, reg: float, factors: int = FACTORS,
              iterations: int = ITERATIONS, seed: int = SEED, verbose: bool = False):
    rng = np.random.default_rng(seed)
    X = rng.normal(0.0, 0.01, size=(m.n_users, factors))
    Y = rng.normal(0.0, 0.01, size=(m.n_items, factors))
    for it in range(iterations):
        X = _half_step(m.by_user, Y, reg)
        Y = _half_step(m.by_item, X, reg)
        if verbose:
            print(f"    iter {it + 1:2d}/{iterations}  |X|={np.linalg.norm(X):.2f} |Y|={np.linalg.norm(Y):.2f}")
    return X, Y


# --------------------------------------------------------------------------- model families


def ease(X: np.ndarray, lam: float) -> np.ndarray:
    """EASE^R (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): the
    item-item matrix B with a zero diagonal that best rebuilds X from X @ B under an L2
    penalty lam: B = I - P diagMat(1 / diag(P)), P = (X^T X + lam I)^-1."""
    G = X.T @ X
    G[np.diag_indices_from(G)] += lam
    P = np.linalg.inv(G)
    B = P / (-np.diag(P))
    B[np.diag_indices_from(B)] = 0.0
    return B


def zscore(v: np.ndarray, axis=None) -> np.ndarray:
    m = v.mean(axis=axis, keepdims=axis is not None)
    sd = v.std(axis=axis, keepdims=axis is not None) + 1e-12
    return (v - m) / sd


class Interactions:
    """What the model families learn from, over one span of lines: the vocabularies (users
    and items with a positive pair), binary rows X, each positive pair's last purchase time,
    per-line popularity input, and what each user already had (any non-cancelled line)."""

    def __init__(self, df: pd.DataFrame):
        self.pairs = interactions(df)
        if len(self.pairs) == 0:
            raise SystemExit("no positive (user, item) pair to train on")
        self.base = Matrix(self.pairs, alpha=1.0)
        self.users, self.items = self.base.users, self.base.items
        self.uidx, self.iidx = pd.Index(self.users), pd.Index(self.items)
        bought = df[~df["cancelled"]]
        self.newest = bought["ts"].max() if len(bought) else df["ts"].max()
        last = bought.groupby(["user_id", "item_id"], sort=False)["ts"].max().reset_index()
        u, i = self.uidx.get_indexer(last["user_id"]), self.iidx.get_indexer(last["item_id"])
        keep = (u >= 0) & (i >= 0)
        pos = self.pairs.set_index(["user_id", "item_id"]).index
        is_pos = pd.MultiIndex.from_arrays([last["user_id"], last["item_id"]]).isin(pos)
        keep &= is_pos
        self.pos_u, self.pos_i = u[keep], i[keep]
        self.pos_age_days = ((self.newest - last["ts"][keep]).dt.total_seconds() / 86400.0).to_numpy()
        self.X = np.zeros((len(self.users), len(self.items)))
        self.X[self.pos_u, self.pos_i] = 1.0
        bi = self.iidx.get_indexer(bought["item_id"])
        ages = ((self.newest - bought["ts"]).dt.total_seconds() / 86400.0).to_numpy()
        self.line_item, self.line_age_days = bi[bi >= 0], ages[bi >= 0]
        self.had = bought.groupby("user_id")["item_id"].agg(set).to_dict()

    def decayed_rows(self, half_life_days):
        """X with each positive weighted by 0.5^(age / half-life) of its last purchase (age
        from the newest line); None: plain 0/1 rows."""
        if half_life_days is None:
            return self.X
        Xd = np.zeros_like(self.X)
        Xd[self.pos_u, self.pos_i] = 0.5 ** (self.pos_age_days / half_life_days)
        return Xd

    def popularity(self, half_life_days: float) -> np.ndarray:
        """Per item, the sum over its non-cancelled lines of 0.5^(age / half-life): the
        time-decayed popularity the cold-start plugin computes."""
        p = np.zeros(len(self.items))
        np.add.at(p, self.line_item, 0.5 ** (self.line_age_days / half_life_days))
        return p


class Window:
    """One validation window: learn from the lines before `cut`, judge on the non-cancelled
    lines from `cut` to `end` by users the model knows. A user's relevant items are those new
    to them (as `recd eval` counts them: unknown items count, and cannot be hit)."""

    def __init__(self, df: pd.DataFrame, cut: pd.Timestamp, end: pd.Timestamp):
        self.cut, self.end = cut, end
        self.data = Interactions(df[df["ts"] < cut])
        after = df[(df["ts"] >= cut) & (df["ts"] < end) & ~df["cancelled"]]
        rel = after.groupby("user_id")["item_id"].agg(set).to_dict()
        d = self.data
        self.rows, self.rel, self.seen = [], [], []
        for user in sorted(rel, key=lambda s: (len(s), s)):
            r = d.uidx.get_indexer([user])[0]
            new = rel[user] - d.had.get(user, set())
            if r < 0 or not new:
                continue
            self.rows.append(r)
            self.rel.append(new)
            had = d.iidx.get_indexer(list(d.had.get(user, set())))
            self.seen.append(had[had >= 0])
        self.rows = np.asarray(self.rows, dtype=np.int64)
        if len(self.rows) == 0:
            raise SystemExit(f"validation window {fmt_ts(cut)} .. {fmt_ts(end)}: no known user with a new item; "
                             "pass --validation-cutoff DATE inside the data, or --family to skip the selection")

    def ndcg(self, scores: np.ndarray) -> float:
        """Mean nDCG@K over the window's users; `scores` has one row per user of the window
        (or one row for all)."""
        disc = 1.0 / np.log2(np.arange(2, K + 2))
        total = 0.0
        for k, (rel, seen) in enumerate(zip(self.rel, self.seen)):
            s = np.array(scores[k] if scores.shape[0] > 1 else scores[0], dtype=np.float64)
            s[seen] = -np.inf
            top = np.argpartition(-s, K)[:K]
            top = top[np.argsort(-s[top], kind="stable")]
            hits = np.array([self.data.items[t] in rel for t in top], dtype=np.float64)
            total += float((hits * disc).sum() / disc[: min(len(rel), K)].sum())
        return total / len(self.rows)


def candidates(family: str):
    """The settings tried for `family` (see the module docstring)."""
    if family == "popularity":
        return [{"family": family, "pop_half_life": h} for h in POP_HALF_LIVES]
    if family == "als":
        return [{"family": family, "alpha": a, "reg": r} for a, r in ALS_CONFIGS]
    if family == "ease":
        return [{"family": family, "half_life": h, "lam": lam} for h in ROW_HALF_LIVES for lam in LAMBDAS]
    if family == "ease+popularity":
        return [{"family": family, "half_life": h, "lam": lam, "pop_half_life": ph, "weight": w}
                for h in ROW_HALF_LIVES for lam in LAMBDAS for ph in POP_HALF_LIVES for w in BLEND_WEIGHTS]
    raise SystemExit(f"unknown family {family!r} (one of {', '.join(FAMILIES)})")


def window_scores(win: Window, settings: list[dict]) -> list[float]:
    """nDCG@K of each setting on `win`. EASE solves and ALS fits are shared between the
    settings that need the same one."""
    d = win.data
    out = []
    cache: dict = {}
    for st in settings:
        fam = st["family"]
        if fam == "popularity":
            s = d.popularity(st["pop_half_life"])[None, :]
        elif fam == "als":
            key = ("als", st["alpha"], st["reg"])
            if key not in cache:
                m = Matrix(d.pairs, alpha=st["alpha"], users=d.users, items=d.items)
                X, Y = train_als(m, st["alpha"], st["reg"])
                cache[key] = X[win.rows] @ Y.T
            s = cache[key]
        else:
            key = ("ease", st["half_life"], st["lam"])
            if key not in cache:
                Xd = d.decayed_rows(st["half_life"])
                cache[key] = Xd[win.rows] @ ease(Xd, st["lam"])
            s = cache[key]
            if fam == "ease+popularity":
                zkey = ("z",) + key
                if zkey not in cache:
                    cache[zkey] = zscore(s, axis=1)
                s = cache[zkey] + st["weight"] * zscore(d.popularity(st["pop_half_life"]))[None, :]
        out.append(win.ndcg(s))
    return out


def select(df: pd.DataFrame, families: list[str], first_cut: pd.Timestamp, windows: int):
    """Scores every setting of `families` on `windows` validation windows, the latest ending
    where the data ends, each earlier one ending where the next starts; picks the setting
    with the best mean nDCG@K. Only `df` is read: with --cutoff, nothing after it."""
    settings = [st for f in families for st in candidates(f)]
    cuts, end = [], df["ts"].max() + pd.Timedelta(seconds=1)
    cut = first_cut
    for _ in range(windows):
        cuts.append((cut, end))
        end, cut = cut, share_cutoff(df[df["ts"] < cut]["ts"])
    scores = np.zeros((len(cuts), len(settings)))
    info = []
    for w, (cut, end) in enumerate(cuts):
        t0 = time.time()
        win = Window(df, cut, end)
        scores[w] = window_scores(win, settings)
        info.append({"cut": cut, "end": end, "users": len(win.rows), "train_users": len(win.data.users),
                     "train_items": len(win.data.items)})
        print(f"validation window {w + 1}: learn < {fmt_ts(cut)}, judge {fmt_ts(cut)} .. {fmt_ts(end)}: "
              f"{len(win.rows):,} users, {len(settings)} settings ({time.time() - t0:.1f}s)")
    mean = scores.mean(axis=0)
    results = [{**st, "ndcg": float(mean[k]), "per_window": scores[:, k].tolist()} for k, st in enumerate(settings)]
    return results, info


def share_cutoff(ts: pd.Series) -> pd.Timestamp:
    """The day (at midnight) of the VALIDATION_SHARE quantile of the times: the latest
    (1 - share) of the lines are judged, as the quality report cuts MovieLens."""
    q = ts.sort_values(ignore_index=True).iloc[int(np.floor(VALIDATION_SHARE * (len(ts) - 1)))]
    return q.normalize()


def describe(st: dict) -> str:
    fam = st["family"]
    if fam == "popularity":
        return f"popularity, half-life {st['pop_half_life']:g} d"
    if fam == "als":
        return f"ALS alpha={st['alpha']:g} reg={st['reg']:g}"
    hl = "plain rows" if st["half_life"] is None else f"rows decayed {st['half_life']:g} d"
    if fam == "ease":
        return f"EASE lambda={st['lam']:g}, {hl}"
    return (f"EASE lambda={st['lam']:g}, {hl} + {st['weight']:g} x popularity "
            f"(half-life {st['pop_half_life']:g} d)")


def fit(data: Interactions, st: dict):
    """Trains `st` on `data`; returns (U, V, item embedding) such that the model's score of
    (u, i) is dot(U[u], V[i]), with U and V padded by zero columns to a multiple of 32."""
    U, V, emb = fit_unpadded(data, st)
    # ONNX Runtime's vectorised sum gives the last bit differently for a row length that is
    # not a multiple of its vector width, depending on the batch: with 129 columns half the
    # scores of 100,000 pairs differed between one call and calls of 997 pairs. Zero columns
    # change no score and make every batch give the same bits.
    pad = -U.shape[1] % 32
    if pad:
        U, V = np.hstack([U, np.zeros((len(U), pad))]), np.hstack([V, np.zeros((len(V), pad))])
    return U, V, emb


def fit_unpadded(data: Interactions, st: dict):
    fam = st["family"]
    if fam == "popularity":
        pop = data.popularity(st["pop_half_life"])
        return np.ones((len(data.users), 1)), pop[:, None], pop[:, None]
    if fam == "als":
        m = Matrix(data.pairs, alpha=st["alpha"], users=data.users, items=data.items)
        X, Y = train_als(m, st["alpha"], st["reg"], verbose=True)
        return X, Y, Y
    Xd = data.decayed_rows(st["half_life"])
    B = ease(Xd, st["lam"])
    # B is items x items: exported as a rank-r factorisation B ~ P Q^T, so the model is the
    # same dot product as ALS's (U = Xd P, V = Q) and its size grows with users + items,
    # not with their product. r = 128 kept the validation nDCG of the full matrix.
    left, sv, right = np.linalg.svd(B)
    # The blend's popularity column takes one of the EXPORT_RANK columns.
    r = min(EXPORT_RANK - (fam == "ease+popularity"), len(sv))
    U, V = Xd @ (left[:, :r] * sv[:r]), right[:r].T
    # For similarity, an item is its column of B in this rank: right * sv. (Q's rows alone
    # are near orthogonal to each other, every pair about as far apart as any other.)
    emb = V * sv[:r]
    if fam == "ease":
        return U, V, emb
    # The blend ranks by zrow(S) + w z(pop); per user that orders items as S / sd_u + w z(pop)
    # does: one more column each side.
    S = U @ V.T
    sd = S.std(axis=1, keepdims=True) + 1e-12
    z = zscore(data.popularity(st["pop_half_life"]))
    return np.hstack([U / sd, np.ones((len(U), 1))]), np.hstack([V, st["weight"] * z[:, None]]), emb


def fmt_ts(t: pd.Timestamp) -> str:
    """2011-11-01 for midnight, else 2011-11-01 12:30:00."""
    return str(t.date()) if t == t.normalize() else str(t)


# --------------------------------------------------------------------------- ONNX


def build_onnx(U: np.ndarray, V: np.ndarray, meta: dict):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    U = np.ascontiguousarray(U, dtype=np.float32)
    V = np.ascontiguousarray(V, dtype=np.float32)
    inits = [
        numpy_helper.from_array(U, name="user_factors"),
        numpy_helper.from_array(V, name="item_factors"),
    ]
    nodes = [
        # ReduceSum (opset >= 13) takes its axes as an input tensor; a Constant
        # node keeps the initializer list to exactly the two factor matrices.
        helper.make_node("Constant", [], ["reduce_axes"], name="axes",
                         value=numpy_helper.from_array(np.array([1], dtype=np.int64), name="axes_value")),
        helper.make_node("Gather", ["user_factors", "user"], ["u_vec"], axis=0, name="gather_user"),
        helper.make_node("Gather", ["item_factors", "item"], ["i_vec"], axis=0, name="gather_item"),
        helper.make_node("Mul", ["u_vec", "i_vec"], ["prod"], name="mul"),
        helper.make_node("ReduceSum", ["prod", "reduce_axes"], ["score"], keepdims=0, name="dot"),
    ]
    graph = helper.make_graph(
        nodes,
        "recd_mf_dot",
        inputs=[
            helper.make_tensor_value_info("user", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("item", TensorProto.INT64, ["N"]),
        ],
        outputs=[helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="recd/scripts/train_ranking.py",
        producer_version="1",
        doc_string="recd ranking model (scripts/train_ranking.py); "
                   "score = dot(user_factors[user], item_factors[item]).",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {k: str(v) for k, v in meta.items()})
    onnx.checker.check_model(model, full_check=True)
    return model


def verify_onnx(path: str, U: np.ndarray, V: np.ndarray, n_pairs: int = 64, seed: int = 0,
                atol: float = 1e-5) -> bool | None:
    """Check ONNX Runtime output against numpy dot products.

    Returns None (skipped) when onnxruntime is not importable, else True;
    raises AssertionError on mismatch.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not importable; skipping numeric ONNX check")
        return None
    U32, V32 = U.astype(np.float32), V.astype(np.float32)
    rng = np.random.default_rng(seed)
    u = rng.integers(0, U.shape[0], n_pairs, dtype=np.int64)
    i = rng.integers(0, V.shape[0], n_pairs, dtype=np.int64)
    # Include the corner indices.
    u[:2] = [0, U.shape[0] - 1]
    i[:2] = [0, V.shape[0] - 1]
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = sess.run(["score"], {"user": u, "item": i})
    want = np.einsum("nf,nf->n", U32[u].astype(np.float64), V32[i].astype(np.float64))
    assert got.dtype == np.float32 and got.shape == (n_pairs,), (got.dtype, got.shape)
    err = float(np.max(np.abs(got.astype(np.float64) - want)))
    assert err <= atol, f"ONNX vs numpy max abs error {err} > {atol}"
    # Single-element batch too.
    (one,) = sess.run(["score"], {"user": u[:1], "item": i[:1]})
    assert one.shape == (1,) and abs(float(one[0]) - want[0]) <= atol
    print(f"onnxruntime {ort.__version__}: {n_pairs} pairs match numpy dot, max abs err {err:.2e}")
    return True


# --------------------------------------------------------------------------- item factors


def read_vocab(path: str, id_col: str) -> np.ndarray:
    """Ids of a users.csv / items.csv in index order (ids kept as strings)."""
    v = pd.read_csv(path, dtype={id_col: str, "index": np.int64}, keep_default_na=False, na_filter=False)
    if list(v.columns) != [id_col, "index"]:
        raise SystemExit(f"{path}: expected header {id_col},index, found {','.join(v.columns)}")
    if not np.array_equal(v["index"].to_numpy(), np.arange(len(v))):
        raise SystemExit(f"{path}: index column is not 0..{len(v) - 1} in order")
    return v[id_col].to_numpy(dtype=object)


def write_item_factors(model_dir: str, V: np.ndarray | None = None) -> str:
    """Write model_dir/item_factors.parquet: the item embeddings `V` (default: the
    item_factors initializer of model_dir/mf.onnx) for the items of model_dir/items.csv.

    Columns: item_id (utf8), embedding (fixed_size_list<float32, d>); one row per
    vocabulary item in index order.
    """
    import onnx
    from onnx import numpy_helper

    if V is None:
        model = onnx.load(os.path.join(model_dir, "mf.onnx"))
        inits = {t.name: t for t in model.graph.initializer}
        if "item_factors" not in inits:
            raise SystemExit(f"{model_dir}/mf.onnx has no item_factors initializer")
        V = numpy_helper.to_array(inits["item_factors"])
    V = np.ascontiguousarray(V, dtype=np.float32)
    items = read_vocab(os.path.join(model_dir, "items.csv"), "item_id")
    if V.dtype != np.float32 or V.ndim != 2 or V.shape[0] != len(items):
        raise SystemExit(f"item_factors {V.dtype} {list(V.shape)} does not match items.csv "
                         f"({len(items)} items)")
    d = V.shape[1]
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(V).reshape(-1), pa.float32()), d)
    schema = pa.schema([
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32(), d), nullable=False),
    ])
    table = pa.Table.from_arrays([pa.array(items.tolist(), pa.string()), emb], schema=schema)
    path = os.path.join(model_dir, "item_factors.parquet")
    # No dictionary encoding: float factors are almost all distinct (it would only add a page).
    pq.write_table(table, path, compression="zstd", use_dictionary=False)
    back = pq.read_table(path)
    assert back.schema.equals(schema) and back.num_rows == len(items)
    got = np.asarray(back.column("embedding").combine_chunks().flatten()).reshape(-1, d)
    assert np.array_equal(got, V) and back.column("item_id").to_pylist() == items.tolist()
    print(f"wrote {os.path.relpath(path, ROOT)} ({len(items):,} items x {d} float32, "
          f"{os.path.getsize(path):,} bytes)")
    return path


# --------------------------------------------------------------------------- model card


def write_card(path, *, data_path, data: Interactions, chosen: dict, results, windows, n_lines, onnx_bytes,
               verified, span, dims, cutoff=None):
    ranked = sorted(results, key=lambda r: -r["ndcg"])
    best_of = {}
    for r in ranked:
        best_of.setdefault(r["family"], r)
    rows = "\n".join(
        f"| {r['family']} | {describe(r)}{' **(selected)**' if r is ranked[0] else ''} | "
        + " | ".join(f"{v:.4f}" for v in r["per_window"]) + f" | {r['ndcg']:.4f} |"
        for r in best_of.values()
    )
    heads = " | ".join(f"window {k + 1}" for k in range(len(windows)))
    wins = "\n".join(
        f"* window {k + 1}: learn from the lines before {fmt_ts(w['cut'])} ({w['train_users']:,} users, "
        f"{w['train_items']:,} items), judge the lines from {fmt_ts(w['cut'])} to {fmt_ts(w['end'])}: "
        f"{w['users']:,} users with a new item"
        for k, w in enumerate(windows))
    rel = os.path.relpath(data_path, ROOT)
    only = "" if cutoff is None else (f"\n\nTrained with `--cutoff {fmt_ts(cutoff)}`: only lines with `ts < "
                                      f"{fmt_ts(cutoff)}` were read (validation and final model).")
    card = f"""# recd ranking model (`mf.onnx`): {describe(chosen)}

Generated by `scripts/train_ranking.py` -- do not edit by hand; rerun the script.

## Interface

| | name | dtype | shape | meaning |
|---|---|---|---|---|
| input | `user` | int64 | `[N]` | user index (row of `users.csv`), `0 <= user < {len(data.users)}` |
| input | `item` | int64 | `[N]` | item index (row of `items.csv`), `0 <= item < {len(data.items)}` |
| output | `score` | float32 | `[N]` | `dot(user_factors[user], item_factors[item])` |

`N` is a free (dynamic) batch dimension; `user[k]` is paired with `item[k]`. Higher is more
relevant; only the order of one user's scores is meaningful. Graph: `Gather`, `Gather`,
`Mul`, `ReduceSum` over two initializers, `user_factors` float32 `[{len(data.users)}, {dims}]` and
`item_factors` float32 `[{len(data.items)}, {dims}]`; ONNX opset {OPSET}, IR version {IR_VERSION}; passes
`onnx.checker` (full check); {onnx_bytes:,} bytes. Out-of-range indices are an error in
ONNX Runtime: callers map ids through the vocabularies and skip unknown ids.

## Id -> index mapping

* `users.csv`: header `user_id,index`; `user_id` as in the `user_id` column of `{rel}`
  (customer ids as plain integer strings, e.g. `17850`), ordered numerically.
* `items.csv`: header `item_id,index`; `item_id` as in the `item_id` column (the
  upper-cased StockCode, e.g. `85123A`), ordered lexicographically.

Only users and items with at least one positive pair are in the vocabulary
({len(data.users):,} users, {len(data.items):,} items, {len(data.pairs):,} positive pairs); others are
unknown to the model (cold start: the job's `fallback` answers for them).
`item_factors.parquet` holds one embedding per item of `items.csv`, in index order, for
similarity uses (embedding diversity): `item_id` (utf8), `embedding`
(`fixed_size_list<float32, d>`): for EASE^R, each item's column of the rank-{EXPORT_RANK} item-item
matrix (so two items are close when the same purchases predict them).

## Training data

`{rel}` ({n_lines:,} invoice lines, {span}), derived from UCI Online Retail (Daqing Chen,
UCI Machine Learning Repository, Online Retail, CC BY 4.0, https://doi.org/10.24432/C5BW33)
by `scripts/derive_demo_data.py`; see `data/demo/README.md` for the cleaning rules.{only}
A pair is positive when the user's net quantity of the item (purchases minus
cancellations) is above 0.

## Model selection (validation on the training data only)

Every setting of four families is scored by nDCG@{K} on {len(windows)} validation windows cut from the
training data (the latest {100 * (1 - VALIDATION_SHARE):.0f}% of its lines by time, then the {100 * (1 - VALIDATION_SHARE):.0f}% before
those), learning only from the lines before each window; the setting with the best mean is
retrained on all the training data and exported:

{wins}

The families: time-decayed **popularity** (each line weighs 0.5^(age / half-life)); implicit
**ALS** ({FACTORS} factors, {ITERATIONS} iterations; Hu, Koren and Volinsky, ICDM 2008); **EASE^R**
(Steck, WWW 2019) on user rows whose positives are decayed by the age of their last
purchase; and **EASE^R + popularity**, each user's EASE^R scores standardised plus a weight
times standardised decayed popularity. Relevant items are those new to the user in the
window (items the model does not know count and cannot be hit); lists exclude what the
user bought before. The best setting of each family (mean of the windows):

| family | setting | {heads} | mean |
|---|---|{"--:|" * len(windows)}--:|
{rows}

EASE^R's item-item matrix is exported as its rank-{EXPORT_RANK} factorisation (SVD), so the model
is a dot product whose size grows with users plus items; the blend gives one of those
columns to popularity (1 for every user, the weighted popularity for every item), scaled
so that a user's order is the blend's. Zero columns pad the factors to a multiple of 32:
ONNX Runtime's vectorised sum then gives every score the same bits whatever the batch.

## Verification

{"ONNX Runtime (Python) output matched numpy `dot(user_factors[u], item_factors[i])` within 1e-5 for 64 random pairs." if verified else "onnxruntime was not available; the numeric check was skipped."}

## Retraining

```sh
make model      # or: PYTHONPATH=.deps/pytools python3 scripts/train_ranking.py --out models/ranking
```

`scripts/train_ranking.py --help` lists the options: `--data FILE` takes any interactions
file (Parquet or CSV; `--user-column`, `--item-column`, `--time-column` name its columns),
`--out DIR` is where the model goes, `--cutoff DATE` trains on what comes before it,
`--family NAME` skips the selection. Deterministic on one machine (single-threaded BLAS).

## Limitations

Small demo dataset (one UK gift wholesaler, about a year, many customers are businesses); no
side features; the popularity part is frozen at training time (retrain to follow the
trend); scores are not probabilities.
"""
    with open(path, "w") as f:
        f.write(card)


# --------------------------------------------------------------------------- main


def write_metrics(path: str, *, data, n_lines: int, chosen: dict) -> None:
    """What recd's model registry records of this version (``metrics.json``: names to
    numbers): the training data's size and, when the setting was chosen by validation, its
    mean nDCG@K over the validation windows."""
    metrics = {"lines": n_lines, "users": len(data.users), "items": len(data.items), "positive_pairs": len(data.pairs)}
    if "ndcg" in chosen:
        metrics[f"validation_ndcg@{K}"] = round(float(chosen["ndcg"]), 6)
    with open(path, "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")
    print(f"wrote {os.path.relpath(path, ROOT)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Train the ranking model and export it to ONNX: time-decayed popularity, implicit ALS, "
                    "EASE^R or EASE^R blended with popularity, chosen by nDCG@10 on validation windows cut "
                    "from the training data.",
        epilog="Writes DIR/mf.onnx (inputs user, item: int64 [N]; output score: float32 [N]), users.csv, "
               "items.csv (id,index), item_factors.parquet and, for the demo data, README.md (the model card).")
    ap.add_argument("--data", default=DEFAULT_DATA,
                    help="interactions, Parquet, Arrow IPC or CSV: user and item ids (text or integers) and a time "
                         "(a timestamp with or without a zone, ISO text, or epoch seconds or milliseconds); "
                         "optional cancelled (bool), quantity (int), invoice (default: the demo data, "
                         "data/demo/retail.parquet)")
    ap.add_argument("--user-column", default="user_id", help="the file's user id column (default user_id)")
    ap.add_argument("--item-column", default="item_id", help="the file's item id column (default item_id)")
    ap.add_argument("--time-column", default="ts", help="the file's time column (default ts)")
    ap.add_argument("--time-unit", choices=("auto", "s", "ms"), default="auto",
                    help="unit of a numeric time column: epoch seconds, milliseconds, or auto (numbers above "
                         "10^11 are milliseconds)")
    ap.add_argument("--out", metavar="DIR",
                    help="folder to write the model to, required (created; files in it are replaced). The "
                         f"shipped demo model is --out {os.path.relpath(DEFAULT_OUT, ROOT)}")
    ap.add_argument("--cutoff", default=None, metavar="DATE",
                    help="read only lines with ts < DATE (validation and final model; a date or ISO time, "
                         "UTC); default: all")
    ap.add_argument("--validation-cutoff", default=None, metavar="DATE",
                    help=f"start of the latest validation window (default: the day of the {100 * VALIDATION_SHARE:.0f}%% "
                         "time quantile of the lines read)")
    ap.add_argument("--family", choices=FAMILIES, default=None,
                    help="train this family only (its settings still chosen by validation)")
    ap.add_argument("--no-validation", action="store_true",
                    help="skip validation: train --family with its first setting (fast; for tests)")
    ap.add_argument("--factors-only", metavar="DIR", default=None,
                    help="only write DIR/item_factors.parquet from DIR/mf.onnx and DIR/items.csv")
    args = ap.parse_args(argv)
    if args.out is None and args.factors_only is None:
        ap.error(f"--out DIR is required (the shipped demo model: --out {os.path.relpath(DEFAULT_OUT, ROOT)})")
    load_packages()
    for key in ("cutoff", "validation_cutoff"):
        if getattr(args, key) is not None:
            try:
                t = pd.Timestamp(getattr(args, key))
                # Data times are naive UTC: a zoned cut-off is converted to them.
                setattr(args, key, t.tz_convert("UTC").tz_localize(None) if t.tzinfo is not None else t)
            except ValueError:
                ap.error(f"--{key.replace('_', '-')}: not a date or time: {getattr(args, key)!r}")

    t0 = time.time()
    if args.factors_only is not None:
        write_item_factors(args.factors_only)
        print(f"done in {time.time() - t0:.1f}s")
        return 0
    demo_data = os.path.realpath(args.data) == os.path.realpath(DEFAULT_DATA)

    names = {"user_id": args.user_column, "item_id": args.item_column, "ts": args.time_column}
    df = load(args.data, names, args.time_unit)
    if args.cutoff is not None:
        n_all = len(df)
        df = df[df["ts"] < args.cutoff].reset_index(drop=True)
        print(f"--cutoff {fmt_ts(args.cutoff)}: kept {len(df):,} of {n_all:,} lines (ts < cutoff)")
        if len(df) == 0:
            raise SystemExit("no lines before --cutoff")
    span = f"{df['ts'].min()} .. {df['ts'].max()}"
    print(f"loaded {len(df):,} lines from {os.path.relpath(args.data, ROOT)} ({span})")

    families = [args.family] if args.family else list(FAMILIES)
    results, windows = [], []
    if args.no_validation:
        chosen = candidates(families[0])[0]
    else:
        first = args.validation_cutoff or share_cutoff(df["ts"])
        results, windows = select(df, families, first, VALIDATION_WINDOWS)
        for fam in families:
            top = max((r for r in results if r["family"] == fam), key=lambda r: r["ndcg"])
            print(f"  best {fam:<16} {describe(top):<70} nDCG@{K} {top['ndcg']:.4f} "
                  f"(windows {', '.join(f'{v:.4f}' for v in top['per_window'])})")
        chosen = max(results, key=lambda r: r["ndcg"])
    print(f"selected: {describe(chosen)}")

    data = Interactions(df)
    print(f"final model: {len(data.users):,} users, {len(data.items):,} items, {len(data.pairs):,} positive pairs")
    U, V, emb = fit(data, chosen)

    os.makedirs(args.out, exist_ok=True)
    onnx_path = os.path.join(args.out, "mf.onnx")
    meta = {
        "recd.model": chosen["family"],
        "recd.setting": describe(chosen),
        "recd.dims": U.shape[1],
        "recd.n_users": len(data.users),
        "recd.n_items": len(data.items),
        "recd.users_vocab": "users.csv",
        "recd.items_vocab": "items.csv",
        "recd.training_data": os.path.basename(args.data) + (f" (ts < {fmt_ts(args.cutoff)})" if args.cutoff else ""),
    }
    model = build_onnx(U, V, meta)
    with open(onnx_path, "wb") as f:
        f.write(model.SerializeToString())
    pd.DataFrame({"user_id": data.users, "index": np.arange(len(data.users))}).to_csv(
        os.path.join(args.out, "users.csv"), index=False)
    pd.DataFrame({"item_id": data.items, "index": np.arange(len(data.items))}).to_csv(
        os.path.join(args.out, "items.csv"), index=False)
    print(f"wrote {os.path.relpath(onnx_path, ROOT)} ({os.path.getsize(onnx_path):,} bytes, {U.shape[1]} dims), "
          "users.csv, items.csv")

    verified = verify_onnx(onnx_path, U, V)
    write_item_factors(args.out, emb)
    write_metrics(os.path.join(args.out, "metrics.json"), data=data, n_lines=len(df), chosen=chosen)

    if results and demo_data:
        write_card(os.path.join(args.out, "README.md"), data_path=args.data, data=data, chosen=chosen,
                   results=results, windows=windows, n_lines=len(df), onnx_bytes=os.path.getsize(onnx_path),
                   verified=bool(verified), span=span, dims=U.shape[1], cutoff=args.cutoff)
        print(f"wrote {os.path.relpath(os.path.join(args.out, 'README.md'), ROOT)}")
    print(f"done in {time.time() - t0:.1f}s")
    return 0


def load_packages() -> None:
    """numpy, pandas and pyarrow, imported once the arguments are read: `--help` and a
    usage error need none of them."""
    global np, pd, pa, pq
    try:
        import numpy as np
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise SystemExit(f"train_ranking.py needs numpy, pandas, pyarrow and onnx ({e}): `scripts/setup.sh --tests` "
                         "installs them into .deps/pytools; run with PYTHONPATH=.deps/pytools")


if __name__ == "__main__":
    sys.exit(main())
