"""The hash field's speed by encoding path: the torch ops, the Triton kernels, and torch.compile of the ops.

For each table size T = 2^t it builds instant-ngp's image field (2 input axes, 16 levels of 2 features,
base 16 cells, growth 1.5 per level, a 2x64 ReLU MLP, 3 outputs) and times, on random points in batches
of 2^b:
- training: forward, MSE loss, backward and the table/MLP Adam step (the paper's settings, fused where
  torch has it), in M points/s;
- inference: the no-grad forward, in M points/s;
and the peak GPU memory of the training steps. Every path's first steps (compilation, autotuning, the
auto check) are warm-up and not timed; on a GPU the clock is read after a synchronize.

    python bench/encoding.py                                   # a GPU: T = 2^15, 2^19, 2^22, 2^24, batch 2^18
    python bench/encoding.py --tables 15,19 --batch 14 --paths torch,compile   # a CPU

The Triton path needs a CUDA device (or TRITON_INTERPRET=1, which measures the interpreter, not the
kernels). Tables go to bench/results/encoding-<device>.md with the card's name (docs/fields.md, "Triton
kernels").
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from common import ROOT, machine, markdown_table

sys.path.insert(0, str(ROOT))

from dist_int.model import HashField  # noqa: E402
from dist_int.model.hash import TABLE_ADAM  # noqa: E402

PATHS = {"torch": ("torch", False), "triton": ("triton", False), "compile": ("torch", True)}


def build(log2_table: int, encoding: str, device: torch.device) -> HashField:
    torch.manual_seed(0)
    return HashField(2, 3, hidden=64, layers=3, levels=16, features=2, log2_table=log2_table, base_resolution=16,
                     growth=1.5, encoding=encoding).to(device)


def optimizer(model: HashField, device: torch.device) -> torch.optim.Optimizer:
    fused = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.Adam([{"params": [model.encoding.table], **TABLE_ADAM},
                             {"params": [p for lin in model.linears for p in lin.parameters()]}], lr=1e-2, **fused)


def timed(fn, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(log2_table: int, path: str, batch: int, steps: int, warmup: int, device: torch.device) -> list:
    encoding, compiled = PATHS[path]
    model = build(log2_table, encoding, device)
    opt = optimizer(model, device)
    run = torch.compile(model) if compiled else model
    gen = torch.Generator(device=device).manual_seed(1)
    coords = torch.rand(batch, 2, device=device, generator=gen) * 2 - 1
    target = torch.rand(batch, 3, device=device, generator=gen)

    def train_step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(run(coords), target).backward()
        opt.step()

    @torch.no_grad()
    def infer_step():
        run(coords)

    timed(train_step, warmup, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_s = timed(train_step, steps, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    timed(infer_step, warmup, device)
    infer_s = timed(infer_step, steps, device)
    rows = model.encoding.table.shape[1]
    return [f"2^{log2_table}", path, f"{rows:,}", f"{steps * batch / train_s / 1e6:.2f}",
            f"{steps * batch / infer_s / 1e6:.2f}", "-" if peak is None else f"{peak:,.0f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="15,19,22,24", help="log2 of the rows per level's table, comma-separated")
    ap.add_argument("--batch", type=int, default=18, help="log2 of the points per step")
    ap.add_argument("--paths", default="torch,triton,compile", help=f"some of {','.join(PATHS)}")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per figure")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="", help="the results file (default bench/results/encoding-<device>.md)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    paths = args.paths.split(",")
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        sys.exit(f"unknown paths {unknown}; choose from {list(PATHS)}")
    if "triton" in paths:
        from dist_int.model import hash_triton

        why = hash_triton.available(device)
        if why:
            sys.exit(f"--paths triton: {why}; leave it out on this machine")
    rows = []
    for t in (int(x) for x in args.tables.split(",")):
        for path in paths:
            rows.append(measure(t, path, 1 << args.batch, args.steps, args.warmup, device))
            print(" | ".join(rows[-1]), flush=True)
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    table = markdown_table(["T", "path", "table rows (all levels)", "training M pts/s", "inference M pts/s",
                            "peak GPU MiB (training)"], rows)
    text = (f"# The hash field's speed by encoding path\n\n{time.strftime('%Y-%m-%d')}, {machine()}\n\n"
            f"`python bench/encoding.py --tables {args.tables} --batch {args.batch} --paths {args.paths} "
            f"--steps {args.steps}`: 16 levels of 2 features, a 2x64 MLP, batches of 2^{args.batch} points, "
            f"Adam step included in training.\n\n{table}\n")
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"encoding-{re.sub(r'[^a-z0-9]+', '-', name.lower())}.md"
    out.write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
