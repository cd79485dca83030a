"""The report's pictures (matplotlib, written as PNG files): curves shared by all runs, each run's
reconstruction against its target, and the teaching-set snapshots.

Every picture is made from what a run folder holds (metrics.jsonl, the signal store, reconstruction.zarr,
snapshots/), at a bounded size: a gigapixel image is read with a stride (PREVIEW pixels on its longest
side), a long recording as a window and a whole-length envelope.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..modality import modality_for

PREVIEW = 1024        # longest side of an image preview, pixels
SNAPSHOT_PANELS = 6   # snapshots drawn per run, evenly spaced over those recorded (report/__init__.py)


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


# ---- a run's signal against its reconstruction -------------------------------------------------------
def _unit(values: np.ndarray, store) -> np.ndarray:
    """Stored values on the [0, 1] scale (the source's value range)."""
    return (values.astype(np.float64) - store.offset) * store.scale


def _show(ax, img: np.ndarray, title: str, **kw) -> None:
    if img.ndim == 3 and img.shape[-1] not in (3, 4):  # gray, gray + alpha, or many channels: the first
        img = img[..., 0]
    elif img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    ax.imshow(np.clip(img, 0, 1) if "cmap" not in kw else img,
              cmap=kw.pop("cmap", "gray" if img.ndim == 2 else None), **kw)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _triptych(axes, target: np.ndarray, recon: np.ndarray, what: str) -> None:
    """Target, reconstruction and the error map (mean |error| over channels) on one row."""
    err = np.abs(recon - target).mean(axis=-1)
    _show(axes[0], target, f"target {what}")
    _show(axes[1], recon, f"reconstruction {what}")
    _show(axes[2], err, f"|error| (max {err.max():.3f})", cmap="inferno", vmin=0, vmax=max(err.max(), 1e-6))


def signal_figure(run, path: Path) -> None:
    """The modality's picture of target against reconstruction (the run must have a reconstruction)."""
    plt = _plt()
    kind = run.store.kind
    draw = {"image": _image, "audio": _audio, "volume": _volume, "video": _video, "shape": _shape}[kind]
    fig = draw(plt, run)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _image(plt, run):
    import zarr

    store = run.store
    h, w = store.spatial
    s = max(1, math.ceil(max(h, w) / PREVIEW))
    target = _unit(np.asarray(store.array[::s, ::s, :]), store)
    recon = np.moveaxis(np.asarray(zarr.open_array(run.reconstruction / "0", mode="r")[:, ::s, ::s]), 0, -1)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    _triptych(axes, target, _unit(recon, store), "" if s == 1 else f"(every {s}th pixel)")
    return fig


def _volume(plt, run):
    store = run.store
    field = modality_for(store).open_output(run.reconstruction)  # indexed (z, y, x, c) as the store
    fig, axes = plt.subplots(3, 3, figsize=(11, 11))
    for axis in range(3):  # the middle slice across each axis
        idx = [slice(None)] * 3
        idx[axis] = store.spatial[axis] // 2
        target = _unit(np.asarray(store.array[tuple(idx)]), store)
        recon = _unit(np.asarray(field[tuple(idx)]), store)
        _triptych(axes[axis], target, recon, f"{'zyx'[axis]} = {store.spatial[axis] // 2}")
    return fig


def _video(plt, run):
    store = run.store
    field = modality_for(store).open_output(run.reconstruction)  # indexed (t, y, x, c) as the store
    frames = np.unique(np.linspace(0, store.spatial[0] - 1, 4).round().astype(int))
    h, w = store.spatial[1:]
    s = max(1, math.ceil(max(h, w) / 384))
    fig, axes = plt.subplots(len(frames), 3, figsize=(11, 3.4 * len(frames)), squeeze=False)
    for row, t in zip(axes, frames):
        target = _unit(np.asarray(store.array[t, ::s, ::s]), store)
        recon = _unit(np.asarray(field[t, ::s, ::s]), store)
        _triptych(row, target, recon, f"frame {t}")
    return fig


def _audio(plt, run):
    import zarr
    from scipy.signal import spectrogram

    store = run.store
    n = store.spatial[0]
    rate = float(store.meta.get("samplerate", 1))
    field = zarr.open_array(run.reconstruction, mode="r")
    # A window in the middle, at full resolution, and spectrograms of up to 30 s around it.
    mid, half = n // 2, min(n // 2, int(0.02 * rate) or 512)
    t = (np.arange(mid - half, mid + half)) / rate
    target = 2 * _unit(np.asarray(store.array[mid - half:mid + half, 0]), store) - 1
    recon = 2 * _unit(np.asarray(field[mid - half:mid + half, 0]), store) - 1
    span = min(n // 2, int(15 * rate))
    fig, axes = plt.subplots(3, 1, figsize=(11, 9))
    axes[0].plot(t, target, lw=1, label="target")
    axes[0].plot(t, recon, lw=1, ls="--", label="reconstruction")
    axes[0].plot(t, recon - target, lw=0.8, color="red", label="error")
    axes[0].set_xlabel("time (s)")
    axes[0].legend(fontsize=8)
    axes[0].set_title(f"waveform, channel 0, {2 * half} samples at the middle", fontsize=9)
    for ax, values, name in ((axes[1], store.array, "target"), (axes[2], field, "reconstruction")):
        x = 2 * _unit(np.asarray(values[mid - span:mid + span, 0]), store) - 1
        f, tt, sxx = spectrogram(x, fs=rate, nperseg=min(512, len(x)))
        ax.pcolormesh(tt + (mid - span) / rate, f, 10 * np.log10(sxx + 1e-12), shading="auto", cmap="magma")
        ax.set_ylabel("Hz")
        ax.set_title(f"spectrogram of the {name} (dB)", fontsize=9)
    axes[2].set_xlabel("time (s)")
    return fig


def _shape(plt, run):
    import zarr

    from ..modality.shape import signed_distance

    store = run.store
    field = np.asarray(zarr.open_array(run.reconstruction, mode="r")[...])
    grid = field.shape[0]
    g = np.linspace(-1, 1, grid)
    vertices, faces = np.asarray(store.meta["vertices"]), np.asarray(store.meta["faces"])
    fig, axes = plt.subplots(3, 3, figsize=(11, 11))
    for axis, row in enumerate(axes):  # the middle slice across z, y and x
        a, b = np.meshgrid(g, g, indexing="ij")
        mid = np.full_like(a, g[grid // 2])  # where the fitted field's middle slice lies
        xyz = {0: (b, a, mid), 1: (b, mid, a), 2: (mid, b, a)}[axis]  # the field is stored [z, y, x]
        pts = np.stack([c.ravel() for c in xyz], 1)
        truth = signed_distance(vertices, faces, pts, bool(store.meta["watertight"])).reshape(grid, grid)
        idx = [slice(None)] * 3
        idx[axis] = grid // 2
        pred = field[tuple(idx)]
        lim = float(np.abs(truth).max())
        for ax, img, title in ((row[0], truth, "target signed distance"), (row[1], pred, "fitted field")):
            ax.imshow(img, cmap="RdBu", vmin=-lim, vmax=lim, origin="lower")
            ax.contour(img, levels=[0], colors="k", linewidths=1)
            ax.set_title(f"{title}, {'zyx'[axis]} = {g[grid // 2]:.3f}", fontsize=9)
            ax.axis("off")
        err = np.abs(pred - truth)
        row[2].imshow(err, cmap="inferno", origin="lower")
        row[2].set_title(f"|error| (max {err.max():.3f})", fontsize=9)
        row[2].axis("off")
    return fig


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
