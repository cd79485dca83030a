"""Trainer overhead: launch/train.py on 1 rank with the `full` teacher against a plain single-process
PyTorch loop on the same model, data, optimizer, LR schedule and steps. Runs alternate (A B A B ...) so
machine drift hits both; the table gives medians and the median of the pairwise ratios.
    python bench/overhead.py --steps 200 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT, machine, markdown_table, resized, train

sys.path.insert(0, str(ROOT))


def plain_loop(signal: str, hidden: int, layers: int, steps: int, lr: float, seed: int) -> float:
    """The reference: what a researcher would write by hand. Returns training seconds."""
    import numpy as np

    from dist_int.engine.deepspeed_engine import CosineLR
    from dist_int.model import Siren
    from dist_int.signal import load_source

    data, _, _, _ = load_source(signal)
    img = np.asarray(data[:], dtype=np.float32) / 255.0
    img = img[..., None] if img.ndim == 2 else img
    h, w, c = img.shape
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    coords = torch.stack([ys.ravel(), xs.ravel()], 1)
    values = torch.from_numpy(img.reshape(-1, c))
    torch.manual_seed(seed)
    model = Siren(2, c, hidden, layers)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, CosineLR(steps, lr, 1e-6))
    start = time.perf_counter()
    for _ in range(steps):
        loss = (model(coords) - values).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--signal", default="builtin:camera")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "overhead.md"))
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    signal = resized(args.signal, args.size, work) if args.size else args.signal
    trainer_s, plain_s = [], []
    for i in range(args.repeats):
        r = train([f"run.dir={work / f'run{i}'}", f"signal.path={signal}", f"model.hidden={args.hidden}",
                   f"model.layers={args.layers}", f"train.steps={args.steps}", f"optim.lr={args.lr}",
                   "teacher.strategy=full", "train.eval_every=0", f"train.log_every={args.steps}",
                   "checkpoint.every=0"])
        trainer_s.append(r["train_time_s"])
        plain_s.append(plain_loop(signal, args.hidden, args.layers, args.steps, args.lr, 0))
        print(f"repeat {i}: trainer {trainer_s[-1]:.2f} s, plain loop {plain_s[-1]:.2f} s", flush=True)
    ratios = [a / b for a, b in zip(trainer_s, plain_s)]
    table = markdown_table(
        ["", "median train time (s)", "min", "max"],
        [["dist_int trainer (1 rank, full)", f"{statistics.median(trainer_s):.2f}", f"{min(trainer_s):.2f}",
          f"{max(trainer_s):.2f}"],
         ["plain PyTorch loop", f"{statistics.median(plain_s):.2f}", f"{min(plain_s):.2f}",
          f"{max(plain_s):.2f}"],
         ["ratio trainer / plain (pairwise)", f"{statistics.median(ratios):.3f}", f"{min(ratios):.3f}",
          f"{max(ratios):.3f}"]])
    command = (f"python bench/overhead.py --signal {args.signal} --size {args.size} --hidden {args.hidden} "
               f"--layers {args.layers} --steps {args.steps} --lr {args.lr} --repeats {args.repeats}")
    header = (f"machine: {machine()}\ncommand: {command}\n{args.steps} full-batch steps, SIREN "
              f"{args.layers}x{args.hidden}, {args.size}x{args.size}; both with torch's default threads")
    print(header + "\n\n" + table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(header + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
