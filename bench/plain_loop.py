"""The reference every benchmark and the fidelity test compare against: a SIREN fitted by a plain
single-process PyTorch loop, the way a researcher would write it by hand (no DeepSpeed, no teacher
machinery, no run folder). Same model class and initialization as dist_int, Adam with cosine annealing.

    python bench/plain_loop.py --signal builtin:camera --steps 500
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dist_int.model import Siren  # noqa: E402
from dist_int.modality import open_source  # noqa: E402
from dist_int.modality.shape import SHAPE_SUFFIXES  # noqa: E402
from dist_int.modality import MODALITIES  # noqa: E402


def load_image(signal: str) -> np.ndarray:
    """Any grid signal (image, audio, volume, video) as (*spatial, C) float32 in [0, 1], normalized as
    dist_int does: by the data's own min and max (audio: its full scale; Modality.natural_range)."""
    source = open_source(signal)
    data = np.asarray(source.data[0:source.shape[0]]).reshape(source.shape)
    if source.close:
        source.close()
    lo, hi = MODALITIES[source.kind].natural_range(data.dtype, float(data.min()), float(data.max()))
    return ((data.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)


def fit(signal: str, hidden: int, layers: int, steps: int, lr: float, seed: int = 0,
        target_range: tuple[float, float] = (-1.0, 1.0), strategy: str = "full", precision: str = "fp32",
        device: str = "cpu", compile: bool = False, lr_min: float = 1e-6, w0_first: float = 30.0,
        points: int = 100000) -> dict:
    """Fit and return {"psnr_db", "train_s", "steps"}. strategy "int" is the paper's step ratio from 0.2
    with the authors' incremental interval, top-k L1 error (ties by torch.topk)."""
    dev = torch.device(device)
    if Path(signal).suffix.lower() in SHAPE_SUFFIXES:  # a point table: stored x, y, z -> sdf (normalized)
        table = open_source(signal, options={"points": points}).data
        coords = torch.from_numpy(table[:, :3].copy()).to(dev)
        img, spatial, c = (table[:, 3:] + 2.0) / 4.0, (len(table),), 1
    else:
        img = load_image(signal)
        spatial, c = img.shape[:-1], img.shape[-1]
        grids = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in spatial), indexing="ij")
        coords = torch.stack([g.ravel() for g in grids], 1).to(dev)
    lo, hi = target_range
    values = (torch.from_numpy(img.reshape(-1, c)) * (hi - lo) + lo).to(dev)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
        torch.backends.cudnn.allow_tf32 = precision != "fp32"
    torch.manual_seed(seed)
    model = Siren(coords.shape[1], c, hidden, layers, w0_first=w0_first).to(dev)
    forward = torch.compile(model, dynamic=True) if compile else model
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: (lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))) / lr)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    n = coords.shape[0]
    rows = None

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    sync()
    start = time.perf_counter()
    for t in range(steps):
        if strategy == "int":
            dense_end = math.ceil(0.25 * steps)
            phase = min(int((t - dense_end) // ((steps - dense_end) / 5)), 4) if t >= dense_end else -1
            begin = dense_end + math.ceil(phase * (steps - dense_end) / 5) if phase >= 0 else 0
            if rows is None or (t - begin) % (1 if phase < 0 else 10 * (phase + 1)) == 0:
                ratio = min(0.2 + math.floor(t / (steps / 10)) * 0.08, 1.0)
                with torch.no_grad(), autocast:
                    err = (forward(coords).float() - values).abs().sum(1)
                rows = torch.topk(err, max(1, round(ratio * n)), sorted=False).indices
            x, y = coords[rows], values[rows]
        else:
            x, y = coords, values
        with autocast:
            loss = (forward(x).float() - y).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    sync()
    train_s = time.perf_counter() - start
    with torch.no_grad():
        pred = torch.cat([model(coords[i:i + 262144]).float() for i in range(0, n, 262144)])
        mse = ((pred.clamp(lo, hi) - values).double().square().mean() / (hi - lo) ** 2).item()
    out = {"psnr_db": 10 * math.log10(1 / mse), "train_s": train_s, "steps": steps}
    if Path(signal).suffix.lower() in SHAPE_SUFFIXES:
        out["iou"] = shape_iou(model, signal, (lo, hi), dev)
    return out


@torch.no_grad()
def shape_iou(model, signal: str, target_range, dev) -> float:
    """IoU of occupancy (sdf <= 0) on dist_int's grid against the mesh's, as dist_int computes it."""
    from dist_int.modality.shape import GRID, load_mesh, normalized, occupancy_grid

    vertices, faces, _, _ = normalized(load_mesh(Path(signal)))
    g = torch.linspace(-1, 1, GRID)
    zz, yy, xx = torch.meshgrid(g, g, g, indexing="ij")
    coords = torch.stack([xx.ravel(), yy.ravel(), zz.ravel()], 1)
    lo, hi = target_range
    pred = torch.cat([model(coords[i:i + 262144].to(dev)).float().cpu() for i in range(0, len(coords), 262144)])
    inside = ((pred[:, 0] - lo) / (hi - lo) * 4 - 2 <= 0).numpy().reshape(GRID, GRID, GRID)
    truth = occupancy_grid(vertices, faces, g.numpy().astype(np.float64))
    return float((truth & inside).sum() / max((truth | inside).sum(), 1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--signal", default="builtin:camera")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--target-range", default="symmetric", choices=("symmetric", "unit"))
    p.add_argument("--strategy", default="full", choices=("full", "int"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"))
    args = p.parse_args()
    r = fit(args.signal, args.hidden, args.layers, args.steps, args.lr,
            target_range=(-1.0, 1.0) if args.target_range == "symmetric" else (0.0, 1.0),
            strategy=args.strategy, precision=args.precision,
            device="cuda" if torch.cuda.is_available() else "cpu")
    print(f"PSNR {r['psnr_db']:.2f} dB  train time {r['train_s']:.1f} s")


if __name__ == "__main__":
    main()


def throughput(hidden: int, layers: int, batch: int, steps: int, precision: str, compile: bool,
               device: str, warmup: int = 20) -> float:
    """Training points per second of the plain loop on random batches of `batch` points (3 channels)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
        torch.backends.cudnn.allow_tf32 = precision != "fp32"
    torch.manual_seed(0)
    model = Siren(2, 3, hidden, layers).to(dev)
    forward = torch.compile(model, dynamic=True) if compile else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 2, device=dev) * 2 - 1
    y = torch.rand(batch, 3, device=dev) * 2 - 1
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    start = 0.0
    for t in range(warmup + steps):
        if t == warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with autocast:
            loss = (forward(x).float() - y).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)
