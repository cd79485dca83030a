"""The report's pictures (matplotlib, written as PNG files): curves shared by all runs, each run's
reconstruction against its target, and the teaching-set snapshots.

Every picture is made from what a run folder holds (metrics.jsonl, the signal store, reconstruction.zarr,
snapshots/), at a bounded size (modality/draw.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..modality import modality_for

SNAPSHOT_PANELS = 6  # snapshots drawn per run, evenly spaced over those recorded (report/__init__.py)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(runs: list, path: Path) -> None:
    """PSNR and loss against training time and steps, every run on the same axes."""
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for run in runs:
        m = [r for r in run.metrics if "event" not in r and "train_time_s" in r]  # rollbacks are events
        evals = [r for r in m if r.get("psnr_db") is not None]
        probes = [r for r in m if r.get("probe_psnr_db") is not None]
        psnr, style = (evals, "psnr_db") if evals else (probes, "probe_psnr_db")
        losses = [r for r in m if r.get("loss") is not None]
        for col, x in enumerate(("train_time_s", "step")):
            if psnr:
                axes[0][col].plot([r[x] for r in psnr], [r[style] for r in psnr], label=run.label,
                                  marker="." if len(psnr) < 40 else None, ls="-" if evals else "--")
            if losses:
                axes[1][col].semilogy([r[x] for r in losses], [r["loss"] for r in losses], label=run.label)
    for row, what in enumerate(("PSNR (dB)", "training loss (MSE)")):
        for col, x in enumerate(("training time (s)", "step")):
            ax = axes[row][col]
            ax.set_xlabel(x)
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("PSNR: whole-signal evaluations (dashed: the probe set, where a run has no evaluations)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- a run's signal against its reconstruction (each kind draws its own: Modality.figure) ----------
def signal_figure(run, path: Path) -> bool:
    """The modality's picture of target against reconstruction (Modality.figure; the run must have a
    reconstruction). False: the kind draws none."""
    plt = _plt()
    fig = modality_for(run.store).figure(plt, run)
    if fig is None:
        return False
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ---- teaching-set snapshots ---------------------------------------------------------------------------
def snapshots_figure(run, snaps: list[tuple[int, dict]], path: Path) -> None:
    """Per snapshot, the fraction of the points the teacher picked in each grid cell (white: none, black:
    the most picked in that snapshot), as the INT paper draws its selected pixels. 1-D signals: a line
    over time; 3-D: up to four slabs along the first axis (frames, z slices, a shape's x), summed."""
    plt = _plt()
    dims = snaps[0][1]["selected"].ndim
    slabs = min(4, snaps[0][1]["selected"].shape[0]) if dims == 3 else 1
    fig, axes = plt.subplots(slabs, len(snaps), figsize=(3.2 * len(snaps), 3.0 * slabs + (0.6 if dims == 1 else 0)),
                             squeeze=False)
    for col, (step, snap) in enumerate(snaps):
        sel, cand = snap["selected"].astype(np.float64), snap["points"].astype(np.float64)
        title = f"step {step}: {int(snap['count']):,} of {int(cand.sum()):,}"
        if dims == 1:
            ax = axes[0][col]
            frac = np.divide(sel, cand, out=np.full_like(sel, np.nan), where=cand > 0)
            ax.plot(np.arange(len(frac)) * max(int(snap["factors"][0]), 1), frac, lw=0.8)
            ax.set_ylim(-0.02, 1.02 * max(np.nanmax(frac) if np.isfinite(frac).any() else 1.0, 1e-9))
            ax.set_xlabel("sample")
            ax.set_title(title, fontsize=8)
            continue
        if dims == 3:
            edges = np.linspace(0, sel.shape[0], slabs + 1).round().astype(int)
            parts = [(sel[a:b].sum(0), cand[a:b].sum(0), f"{a}-{b - 1}") for a, b in zip(edges[:-1], edges[1:])]
        else:
            parts = [(sel, cand, "")]
        for row, (s, c, where) in enumerate(parts):
            ax = axes[row][col]
            frac = np.divide(s, c, out=np.full_like(s, np.nan), where=c > 0)
            top = np.nanmax(frac) if np.isfinite(frac).any() else 1.0
            ax.imshow(frac, cmap="gray_r", vmin=0, vmax=top if top > 0 else 1.0, interpolation="nearest")
            ax.set_title(title if not where else f"{title}\ncells {where} of axis 0", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{run.label}: teaching set ({run.strategy}); dark = picked", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
