"""The GPU check in parts of at most about 4 minutes each on one H200 (GPU time comes in minutes):

  --part 1  correctness first, no timing: tests/test_gpu.py (host waits of reusing and selecting steps
            under torch.cuda.set_sync_debug_mode("error"), bf16 autocast inside the engine, compile, a
            streamed shard), the census unit test on CUDA, and LOCAL_RANK under plain `srun` with one GPU
            per task (CUDA_VISIBLE_DEVICES=0 and SLURM_LOCALID=1: the device DeepSpeed picks must exist).
  --part 2  the paper's image setting (512x512 cameraman, 6x256 SIREN, Adam 1e-3 cosine to 1e-6, 5,000
            steps): dist_int `full` and `int` against the plain PyTorch loop's full batch and INT, like for
            like (the same `incremental` interval on both sides; dist_int's default `soft` on its default
            `step-incremental` beside them), time and final PSNR.
  --part 3  throughput of a 6x512 SIREN on batches of 2^19 points at fp32, tf32, bf16 and bf16 + compile,
            dist_int against the plain loop; then 64 steps of configs/gigapixel.toml (the hash field) on an
            8192^2 synth image (skip with --no-gigapixel).
Prints Markdown tables and writes them to bench/results/gpu_check-partN.md.

    python bench/gpu_check.py --part 1         # on a GPU machine, then --part 2, --part 3
    python bench/gpu_check.py --part 2 --quick # a CPU-sized smoke run of the same code paths
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
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


def part1(args) -> str:
    """Correctness on the GPU before any timing: the answers are pass/fail lines."""
    rows = []
    tests = ["tests/test_gpu.py", "tests/test_census.py::test_the_census_counts_what_makes_a_gpu_host_wait"]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", *tests], cwd=ROOT, capture_output=True,
                       text=True, timeout=200)
    rows.append(["pytest " + " ".join(tests), "pass" if r.returncode == 0 else "FAIL",
                 (r.stdout.strip().splitlines() or [""])[-1]])
    print(r.stdout[-3000:], r.stderr[-2000:], flush=True)
    if not torch.cuda.is_available():
        rows.append(["srun one GPU per task", "skipped (no GPU)", "tests/test_trainer_parts.py checks the derivation"])
        return markdown_table(["check", "result", "detail"], rows)
    # srun with one GPU per task: the task with SLURM_LOCALID=1 sees one device, index 0.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="0", SLURM_PROCID="1", SLURM_NTASKS="2", SLURM_LOCALID="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT="29999")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    code = ("import os, torch\n"
            "from dist_int.engine.launch import detect_launch, pick_device\n"
            "from deepspeed.accelerator import get_accelerator\n"
            "d = pick_device(detect_launch())\n"
            "get_accelerator().set_device(int(os.environ['LOCAL_RANK']))  # what DeepSpeed does\n"
            "print(d, os.environ['LOCAL_RANK'], torch.zeros(1, device=f\"cuda:{os.environ['LOCAL_RANK']}\").device)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    rows.append(["srun one GPU per task (SLURM_LOCALID=1, CUDA_VISIBLE_DEVICES=0)",
                 "pass" if r.returncode == 0 else "FAIL", (r.stdout + r.stderr).strip().splitlines()[-1][:120]])
    return markdown_table(["check", "result", "detail"], rows)


def part2(args, work: Path, device: str) -> str:
    size, hidden, layers, steps = (64, 32, 4, 60) if args.quick else (512, 256, 6, args.steps)
    import skimage.data

    cam = work / "camera.png"
    Image.fromarray(skimage.data.camera()).resize((size, size), Image.Resampling.LANCZOS).save(cam)
    rows = []
    base = [f"signal.path={cam}", f"model.hidden={hidden}", f"model.layers={layers}",
            f"train.steps={steps}", "optim.lr=0.001", f"train.precision={args.precision}",
            f"train.eval_every={max(steps // 50, 1)}", f"train.log_every={max(steps // 50, 1)}",
            "checkpoint.every=0", "train.divergence_db=0"]
    full = None
    # Like for like: dist_int's `int` on the plain loop's interval (`incremental`); `soft` at its defaults.
    for strategy, interval in (("full", "incremental"), ("int", "incremental"), ("soft", "step-incremental")):
        r = train(base + [f"run.dir={work / strategy}", f"teacher.strategy={strategy}",
                          f"teacher.interval_schedule={interval}"])
        full = full or r
        reach = time_to(curve(r["metrics"]), full["psnr_db"])
        rows.append([f"dist_int `{strategy}`", interval if strategy != "full" else "-", f"{r['psnr_db']:.2f}",
                     f"{r['train_time_s']:.1f}", f"{r['train_time_s'] / full['train_time_s']:.2f}",
                     "not reached" if reach is None else f"{reach / full['train_time_s']:.2f}"])
        print(rows[-1], flush=True)
    for strategy in ("full", "int"):
        r = fit(str(cam), hidden, layers, steps, 1e-3, strategy=strategy, precision=args.precision, device=device)
        rows.append([f"plain loop, {strategy}", "incremental" if strategy == "int" else "-", f"{r['psnr_db']:.2f}",
                     f"{r['train_s']:.1f}", f"{r['train_s'] / full['train_time_s']:.2f}", "-"])
        print(rows[-1], flush=True)
    return (f"{size}x{size} cameraman, SIREN {layers}x{hidden}, {steps} steps, {args.precision}, 1 rank:\n\n" +
            markdown_table(["run", "interval", "final PSNR (dB)", "train time (s)", "time / dist_int full",
                            "time to full's final PSNR / full's time"], rows))


def part3(args, work: Path, device: str) -> str:
    big, wide, batches, tsteps = (256, 64, 8, 40) if args.quick else (2048, 512, 8, 100)
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
    text = (f"SIREN 6x{wide}, batches of {batch} points ({big}^2 image, {batches} batches), {tsteps} steps:\n\n" +
            markdown_table(["precision", "dist_int M points/s", "plain loop M points/s", "ratio"], rows))
    if args.no_gigapixel:
        return text
    from dist_int.synth import synth_gigapixel

    made = None  # seconds to synthesise the image here; None: made beforehand
    if args.giga_store:  # bench/gpu_session.sh synthesises it on the CPU during part 1
        import zarr

        store = args.giga_store
        giga = zarr.open_array(store, mode="r").shape[0]
    else:
        giga = 512 if args.quick else args.giga_size
        t0 = time.time()
        store = synth_gigapixel(work / "giga.zarr", giga, chunk=min(512, giga // 4))
        made = time.time() - t0
    epoch = 64
    r = train(["--config", str(ROOT / "configs" / "gigapixel.toml"), f"signal.path={store}",
               f"run.dir={work / 'giga'}", f"train.steps={epoch}", f"train.log_every={epoch // 4}",
               "train.eval_every=0", "checkpoint.every=0", "render.format=zarr"])
    return text + "\n\nconfigs/gigapixel.toml, 64 steps of 2^18 points:\n\n" + markdown_table(
        ["image", "64 steps train time (s)", "M points/s", "peak GPU memory per rank (MiB)",
         "peak host RSS per rank (MiB)", "PSNR after 64 steps (dB)", "synth time (s)"],
        [[f"{giga}^2", f"{r['train_time_s']:.1f}", f"{dist_int_points_per_s(r['metrics']) / 1e6:.2f}",
          str(r.get("peak_gpu_mb")), str(r.get("peak_rss_mb")), f"{r['psnr_db']:.2f}",
          "made before" if made is None else f"{made:.0f}"]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", type=int, choices=(1, 2, 3), required=True)
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks the script on a CPU")
    p.add_argument("--precision", default="tf32", help="precision of part 2 (both dist_int and plain)")
    p.add_argument("--steps", type=int, default=5000, help="part 2's steps (the paper's 5,000)")
    p.add_argument("--no-gigapixel", action="store_true", help="part 3 without the gigapixel epoch")
    p.add_argument("--giga-size", type=int, default=8192, help="part 3's synth image side")
    p.add_argument("--giga-store", default=None, help="part 3: an existing synth Zarr store (else made here)")
    p.add_argument("--out", default=None, help="default: bench/results/gpu_check-partN.md (--quick: bench/out/)")
    args = p.parse_args()
    args.out = args.out or str(ROOT / "bench" / ("out" if args.quick else "results") / f"gpu_check-part{args.part}.md")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    started = time.time()
    try:
        body = part1(args) if args.part == 1 else (part2 if args.part == 2 else part3)(args, work, device)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = (f"machine: {machine()}\ncommand: python bench/gpu_check.py {' '.join(sys.argv[1:])}\nwall time {time.time() - started:.0f} s\n\n{body}\n")
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    sys.exit(main())
