"""Value calibration on held-out episodes: predicted V against the realised normalised return."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def correlations(pred: np.ndarray, real: np.ndarray) -> dict:
    """Pearson and Spearman correlation of predicted V and realised normalised return (NaN when
    either is constant or there are fewer than 3 ticks)."""
    from scipy.stats import pearsonr, spearmanr

    pred, real = np.asarray(pred, float), np.asarray(real, float)
    if len(pred) < 3 or np.ptp(pred) == 0 or np.ptp(real) == 0:
        return {"pearson": float("nan"), "spearman": float("nan"), "ticks": int(len(pred))}
    return {"pearson": float(pearsonr(pred, real)[0]), "spearman": float(spearmanr(pred, real)[0]),
            "ticks": int(len(pred))}


def calibration_report(pred: np.ndarray, real: np.ndarray, bins: int = 10) -> dict:
    edges = np.linspace(-1, 0, bins + 1)
    which = np.clip(np.digitize(pred, edges) - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        m = which == b
        if m.any():
            rows.append({"bin": [float(edges[b]), float(edges[b + 1])], "n": int(m.sum()),
                         "predicted": float(pred[m].mean()), "realised": float(real[m].mean())})
    c = correlations(pred, real)
    return {"corr": c["pearson"], "spearman": c["spearman"],
            "mae": float(np.abs(pred - real).mean()), "bins": rows, "ticks": int(len(pred))}


def plot_calibration(pred: np.ndarray, real: np.ndarray, report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.scatter(real, pred, s=3, alpha=0.25, label="ticks")
    ax.plot([b["realised"] for b in report["bins"]], [b["predicted"] for b in report["bins"]], "o-", color="C3",
            label="binned by prediction")
    ax.plot([-1, 0], [-1, 0], "k--", lw=1)
    ax.set_xlabel("realised normalised return")
    ax.set_ylabel("predicted V")
    ax.set_title(f"held-out calibration (corr {report['corr']:.2f}, MAE {report['mae']:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
