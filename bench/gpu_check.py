"""The GPU check: dist_int against a plain PyTorch loop on the same card, in one run, in about 8 minutes.

1. The paper's image setting (512x512 cameraman, 6x256 SIREN, Adam 1e-3 cosine to 1e-6, 5,000 steps,
   [-1, 1] targets): dist_int `full`, `int`, `uniform`, `mix` and `soft`, with the time each takes to reach
   `full`'s final PSNR (issue 9's GPU target: the default teacher within 0.55x `full`'s time), and the
   plain loop (full batch and INT), all at the same precision.
2. Throughput of a 6x512 SIREN on batches of 2^19 points (a 2048x2048 image in 8 mini-batches) at fp32,
   tf32, bf16 and bf16 + torch.compile, dist_int against the plain loop.
3. The gigapixel check: an 8192x8192 image from `synth gigapixel`, 6x512, mini-batch INT (64 batches),
   bf16: the time of one epoch and every rank's peak GPU memory (skip with --no-gigapixel).
Prints Markdown tables and writes them to bench/results/gpu_check.md.

    python bench/gpu_check.py                  # on a GPU machine
    python bench/gpu_check.py --quick          # a CPU-sized smoke run of the same code paths
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common import ROOT, machine, markdown_table, train
from plain_loop import fit, throughput
from teachers import curve, time_to


def dist_int_points_per_s(metrics: list[dict]) -> float:
    """Median points/s over the log intervals after the first (warm-up, compilation)."""
    pps = [m["points_per_s"] for m in metrics if "points_per_s" in m]
    return statistics.median(pps[1:] if len(pps) > 1 else pps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script on a CPU")
    p.add_argument("--precision", default="tf32", help="precision of part 1 (both dist_int and plain)")
    p.add_argument("--no-gigapixel", action="store_true", help="skip part 3")
    p.add_argument("--out", default=None, help="default: bench/results/gpu_check.md (--quick: bench/out/)")
    args = p.parse_args()
    args.out = args.out or str(ROOT / "bench" / ("out" if args.quick else "results") / "gpu_check.md")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.quick:
        size, hidden, layers, steps = 64, 32, 4, 60
        big, wide, batches, tsteps = 256, 64, 8, 40
    else:
        size, hidden, layers, steps = 512, 256, 6, 5000
        big, wide, batches, tsteps = 2048, 512, 8, 250
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    started = time.time()
    try:
        import skimage.data

        cam = work / "camera.png"
        Image.fromarray(skimage.data.camera()).resize((size, size), Image.Resampling.LANCZOS).save(cam)
        rows = []
        base = [f"signal.path={cam}", f"model.hidden={hidden}", f"model.layers={layers}",
                f"train.steps={steps}", "optim.lr=0.001", f"train.precision={args.precision}",
                f"train.eval_every={max(steps // 50, 1)}", f"train.log_every={max(steps // 50, 1)}",
                "checkpoint.every=0", "train.divergence_db=0"]
        full = None
        for strategy in ("full", "int", "uniform", "mix", "soft"):
            r = train(base + [f"run.dir={work / strategy}", f"teacher.strategy={strategy}"])
            full = full or r
            reach = time_to(curve(r["metrics"]), full["psnr_db"])
            rows.append([f"dist_int `{strategy}`", args.precision, f"{r['psnr_db']:.2f}",
                         f"{r['train_time_s']:.1f}", f"{r['train_time_s'] / full['train_time_s']:.2f}",
                         "not reached" if reach is None else f"{reach / full['train_time_s']:.2f}"])
            print(rows[-1], flush=True)
        for strategy in ("full", "int"):
            r = fit(str(cam), hidden, layers, steps, 1e-3, strategy=strategy, precision=args.precision,
                    device=device)
            rows.append([f"plain loop, {strategy}", args.precision, f"{r['psnr_db']:.2f}", f"{r['train_s']:.1f}",
                         f"{r['train_s'] / full['train_time_s']:.2f}", "-"])
            print(rows[-1], flush=True)
        part1 = markdown_table(["run", "precision", "final PSNR (dB)", "train time (s)", "time / dist_int full",
                                "time to full's final PSNR / full's time"], rows)

        # Part 2: throughput, batches of big^2 / batches points.
        img = (np.random.default_rng(0).random((big, big, 3)) * 255).astype(np.uint8)
        Image.fromarray(img).save(work / "big.png")
        batch = big * big // batches
        rows = []
        for precision, compiled in (("fp32", False), ("tf32", False), ("bf16", False), ("bf16", True)):
            r = train([f"signal.path={work / 'big.png'}", f"run.dir={work / f'tp-{precision}-{compiled}'}",
                       "signal.chunk=256", f"model.hidden={wide}", "model.layers=6", "teacher.strategy=full",
                       f"teacher.num_batches={batches}", f"train.steps={tsteps}", f"train.precision={precision}",
                       f"train.compile={str(compiled).lower()}", "train.eval_every=0",
                       f"train.log_every={max(tsteps // 5, 1)}", "checkpoint.every=0", "optim.lr=1e-4",
                       "train.divergence_db=0"])
            ours = dist_int_points_per_s(r["metrics"])
            plain = throughput(wide, 6, batch, tsteps, precision, compiled, device)
            rows.append([precision + (" + compile" if compiled else ""), f"{ours / 1e6:.2f}", f"{plain / 1e6:.2f}",
                         f"{ours / plain:.2f}"])
            print(rows[-1], flush=True)
        part2 = markdown_table(["precision", "dist_int M points/s", "plain loop M points/s", "ratio"], rows)

        # Part 3: one epoch of configs/gigapixel.toml's recipe on a synth image.
        part3 = "(skipped)"
        if not args.no_gigapixel:
            from dist_int.synth import synth_gigapixel

            giga = 512 if args.quick else 8192
            t0 = time.time()
            store = synth_gigapixel(work / "giga.zarr", giga, chunk=min(512, giga // 4))
            made = time.time() - t0
            epoch = 64
            r = train(["--config", str(ROOT / "configs" / "gigapixel.toml"), f"signal.path={store}",
                       f"run.dir={work / 'giga'}", f"train.steps={epoch}",
                       f"train.log_every={epoch // 4}", "train.eval_every=0", "checkpoint.every=0",
                       f"model.hidden={wide}", "render.format=zarr"])
            part3 = markdown_table(
                ["image", "SIREN", "epoch (64 steps) train time (s)", "peak GPU memory per rank (MiB)",
                 "peak host RSS per rank (MiB)", "PSNR after 1 epoch (dB)", "synth time (s)"],
                [[f"{giga}^2", f"6x{wide}", f"{r['train_time_s']:.1f}", str(r.get("peak_gpu_mb")),
                  str(r.get("peak_rss_mb")), f"{r['psnr_db']:.2f}", f"{made:.0f}"]])
            print(part3, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    header = (f"machine: {machine()}\ncommand: python bench/gpu_check.py{' --quick' if args.quick else ''}\n"
              f"wall time {time.time() - started:.0f} s")
    text = (f"{header}\n\n{size}x{size} cameraman, SIREN {layers}x{hidden}, {steps} steps, [-1, 1] targets, "
            f"1 rank:\n\n{part1}\n\nSIREN 6x{wide}, batches of {batch} points ({big}^2 image, {batches} "
            f"batches), {tsteps} steps:\n\n{part2}\n\nconfigs/gigapixel.toml (bf16, mini-batch INT), one epoch:\n\n"
            f"{part3}\n")
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    sys.exit(main())
