"""The charts of docs/quality.md, drawn by quality_report.py from the numbers it measured.

PNG files in docs/quality/, written afresh on every run (the folder is emptied first), with
no timestamps or software versions in their metadata, so the same numbers give the same
bytes on the same matplotlib. Every chart shows numbers the report's tables also print.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

PNG_META = {"Software": None}
COLOURS = {"mmr-category": "#1f77b4", "mmr-embedding": "#2ca02c", "calibration": "#d62728"}


def _save(fig, folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata=PNG_META)
    plt.close(fig)
    return name


def _change(new, old):
    if new is None or old is None or old == 0:
        return None
    return (new / old - 1.0) * 100.0


def tradeoff(folder: str, ds: dict, res: dict, ild_target: float, kl_target: float, loss_limit: float) -> str:
    """nDCG change against diversity gain for every diversity setting of one dataset."""
    base = res["ranking-all"]
    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    ax.axvspan(-loss_limit * 100, 100, ymin=0, ymax=1, color="#f4f4f4", zorder=0)
    ax.axhline(ild_target * 100, color="#999999", lw=0.8, ls="--", zorder=1)
    ax.axvline(-loss_limit * 100, color="#999999", lw=0.8, ls="--", zorder=1)
    series: dict[str, list] = {}
    for s in res["diversity"]:
        r = s["report"]
        x = _change(r["ndcg"], base["ndcg"])
        if s["mode"] == "calibration":
            kl = _change(r["calibration_kl"], base["calibration_kl"])
            y = None if kl is None else -kl
            key = "calibration"
        else:
            y = _change(r["embedding_diversity"], base["embedding_diversity"])
            key = f"mmr-{s['similarity']}"
        if x is not None and y is not None:
            series.setdefault(key, []).append((x, y, s["lambda"]))
    labels = {
        "mmr-category": "MMR, category similarity (gain: embedding ILD)",
        "mmr-embedding": "MMR, embedding similarity (gain: embedding ILD)",
        "calibration": "calibration (gain: drop of calibration KL)",
    }
    xs = [0.0]
    for key, points in series.items():
        points.sort(key=lambda p: p[2])
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=COLOURS[key], label=labels[key],
                ms=5, lw=1.2, zorder=3)
        for x, y, lam in points:
            ax.annotate(f"{lam:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7,
                        color=COLOURS[key])
        xs += [p[0] for p in points]
    ax.plot([0], [0], "ks", ms=6, label="ranking (no re-ranking)", zorder=4)
    ax.set_xlim(min(min(xs) - 3, -loss_limit * 100 - 3), max(max(xs) + 3, 3))
    ax.set_xlabel("nDCG@10 change vs ranking (%)")
    ax.set_ylabel("diversity gain vs ranking (%)")
    ax.set_title(f"{ds['name']}: accuracy / diversity trade-off (labels: lambda)\n"
                 f"target: gain >= {ild_target * 100:.0f}% (ILD) or {kl_target * 100:.0f}% (KL) "
                 f"in the shaded band (nDCG loss <= {loss_limit * 100:.0f}%)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, folder, f"tradeoff-{ds['key']}.png")


def strategies(folder: str, datasets: list[dict], results: dict) -> str:
    """Each strategy against its baseline, per dataset."""
    panels = [
        ("ranking vs popularity\nnDCG@10, users with history", "ndcg",
         lambda r: (r["ranking"], r["popularity"]), ("ranking", "popularity")),
        ("with the fallback chain\nnDCG@10, every counted user", "ndcg",
         lambda r: (r["ranking-fallback"], r["popularity-fallback"]), ("ranking + fallback", "popularity + fallback")),
        ("cold start\nhit rate@10, cold users", "hit_rate",
         lambda r: (r["cold-start"], r["global-popularity"]), ("cold-start", "global popularity")),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(11.0, 3.8))
    width = 0.38
    for ax, (title, key, pick, names) in zip(axes, panels):
        xs = range(len(datasets))
        ours = [pick(results[ds["key"]])[0][key] for ds in datasets]
        base = [pick(results[ds["key"]])[1][key] for ds in datasets]
        b1 = ax.bar([x - width / 2 for x in xs], ours, width, label=names[0], color="#1f77b4")
        b2 = ax.bar([x + width / 2 for x in xs], base, width, label=names[1], color="#bbbbbb")
        for bars in (b1, b2):
            for b in bars:
                ax.annotate(f"{b.get_height():.3f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=7)
        ax.set_xticks(list(xs), [ds["name"].replace(" (demo)", "") for ds in datasets], fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.set_ylim(0, max(ours + base) * 1.25)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, folder, "strategies.png")


def churn(folder: str, ds: dict, model: dict, recency: dict) -> str:
    """ROC curves (model and recency alone) and the model's reliability curve."""
    fig, (roc_ax, rel_ax) = plt.subplots(1, 2, figsize=(9.0, 4.0))
    for report, label, colour in ((model, f"churn.onnx (AUC {model['roc_auc']:.3f})", "#d62728"),
                                  (recency, f"recency alone (AUC {recency['roc_auc']:.3f})", "#7f7f7f")):
        pts = report["roc"]
        roc_ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colour, lw=1.3, label=label)
    roc_ax.plot([0, 1], [0, 1], color="#cccccc", lw=0.8, ls="--")
    roc_ax.set_xlabel("false positive rate")
    roc_ax.set_ylabel("true positive rate")
    roc_ax.set_title("ROC, churn within 90 days", fontsize=9)
    roc_ax.legend(fontsize=7, loc="lower right")
    roc_ax.grid(alpha=0.3)
    bins = model["reliability"]
    rel_ax.plot([0, 1], [0, 1], color="#cccccc", lw=0.8, ls="--", label="perfectly calibrated")
    rel_ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], "o-", color="#d62728", lw=1.2,
                ms=4, label=f"churn.onnx (Brier {model['brier']:.3f}, base rate {model['brier_base_rate']:.3f})")
    for b in bins:
        rel_ax.annotate(f"{b['count']}", (b["mean_predicted"], b["observed"]), textcoords="offset points",
                        xytext=(4, -9), fontsize=6, color="#555555")
    rel_ax.set_xlim(0, 1)
    rel_ax.set_ylim(0, 1)
    rel_ax.set_xlabel("mean predicted probability (bin)")
    rel_ax.set_ylabel("observed churn rate")
    rel_ax.set_title("reliability (labels: customers per bin)", fontsize=9)
    rel_ax.legend(fontsize=7, loc="upper left")
    rel_ax.grid(alpha=0.3)
    fig.suptitle(f"{ds['name']}: churn as of the cut-off", fontsize=10)
    fig.tight_layout()
    return _save(fig, folder, f"churn-{ds['key']}.png")


def draw_all(folder: str, datasets: list[dict], results: dict, ild_target: float, kl_target: float,
             loss_limit: float) -> None:
    """Empties `folder`, draws every chart into it, and records each chart's file name
    (relative to the folder) under results[<dataset>]["charts"] and results["charts"]."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith(".png"):
            os.remove(os.path.join(folder, name))
    for ds in datasets:
        res = results[ds["key"]]
        res["charts"] = {"tradeoff": tradeoff(folder, ds, res, ild_target, kl_target, loss_limit)}
        if ds["churn"]:
            res["charts"]["churn"] = churn(folder, ds, res["churn"], res["churn-recency"])
    results["charts"] = {"strategies": strategies(folder, datasets, results)}
