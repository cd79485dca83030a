"""Memory and communication against signal size, and a scaling model for 8 and 64 GPUs.

Sizes (CPU, 1-2 ranks): every rank's peak host RSS and the bytes each rank sends per selection, for
procedural images of several sizes, mini-batch INT, a few steps, ingest (from a tiled BigTIFF with
--source tiff), render, pyramid, export and SSIM included. `--stream-mb` streams shards from disk
(teacher.batches = "chunks", signal.cache_mb) instead of holding them.

    python bench/scale.py --sizes 512,1024,2048,4096 --nproc 1,2
    python bench/scale.py --sizes 2048,16384 --nproc 2 --source tiff --stream-mb 256 --steps 4

Model (--model): times the parts of a step on this machine (a SIREN train step and scoring pass per
point, and gloo all-reduces of a selection histogram and of the gradients between 2 processes), then
predicts epoch times of configs/gigapixel.toml on 1-64 ranks as compute / ranks + collectives.

    python bench/scale.py --model
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, markdown_table, train

sys.path.insert(0, str(ROOT))


def tiff_copy(store_path: Path, out: Path) -> Path:
    """The Zarr image as a tiled BigTIFF, written band by band (the cluster user's usual source)."""
    import numpy as np
    import tifffile
    import zarr

    arr = zarr.open_array(store_path, mode="r")
    h, w, c = arr.shape
    tile = 512

    def tiles():
        for y in range(0, h, tile):
            band = np.asarray(arr[y:y + tile])
            for x in range(0, w, tile):
                t = np.zeros((tile, tile, c), band.dtype)
                part = band[:, x:x + tile]
                t[:part.shape[0], :part.shape[1]] = part
                yield t

    tifffile.imwrite(out, tiles(), shape=(h, w, c), dtype=arr.dtype, tile=(tile, tile), bigtiff=True,
                     photometric="rgb", compression="zlib")
    return out


def sizes_table(args) -> str:
    from dist_int.synth import synth_gigapixel

    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.work))
    rows, ref = [], {}
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            t0 = time.time()
            source = synth_gigapixel(work / f"s{size}.zarr", size, chunk=256)
            if args.source == "tiff":
                tif = tiff_copy(source, work / f"s{size}.tif")
                shutil.rmtree(source)
                source = tif
            print(f"{size}^2 source ready in {time.time() - t0:.0f} s", flush=True)
            for nproc in (int(n) for n in args.nproc.split(",")):
                run = work / f"run-{size}-{nproc}"
                batches = max(1, min(size * size // args.batch_points, 256 * 256))
                extra = []
                if args.stream_mb:
                    batches = min(batches, (size // 256) ** 2)
                    extra = ["teacher.batches=chunks", f"signal.cache_mb={args.stream_mb}"]
                t0 = time.time()
                r = train([f"signal.path={source}", f"run.dir={run}", "signal.chunk=256", "model.hidden=32",
                           "model.layers=3", "teacher.strategy=int", f"teacher.num_batches={batches}",
                           f"train.max_points_per_pass={args.batch_points}", f"train.steps={args.steps}",
                           f"train.log_every={args.steps}", "train.eval_every=0", "checkpoint.every=0",
                           "train.probe_points=4096", "render.format=tiff", *extra],
                          nproc if nproc > 1 else 0)
                wall = time.time() - t0
                owned = size * size / nproc
                rss = r["peak_rss_mb"]
                sent = {m["select_bytes"] for m in r["metrics"] if m.get("selections")}
                if nproc not in ref:
                    ref[nproc] = (owned, rss)
                base_owned, base_rss = ref[nproc]
                above = ("-" if owned == base_owned else
                         ", ".join(f"{(a - b) * 2**20 / (owned - base_owned):.2f}" for a, b in zip(rss, base_rss)))
                rows.append([f"{size}^2", nproc, f"{owned / 1e6:.2f}", ", ".join(f"{v:.0f}" for v in rss), above,
                             ", ".join(str(v) for v in sorted(sent)) or "0", f"{r['psnr_db']:.2f}", f"{wall:.0f}"])
                print(rows[-1], flush=True)
                shutil.rmtree(run, ignore_errors=True)
            shutil.rmtree(source, ignore_errors=True) if Path(source).is_dir() else Path(source).unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown_table(["signal", "ranks", "M pixels per rank", "peak RSS per rank (MiB)",
                            "bytes per owned pixel above the smallest size", "bytes sent per selection per rank",
                            "PSNR (dB)", "wall (s)"], rows)
    command = (f"python bench/scale.py --sizes {args.sizes} --nproc {args.nproc} --steps {args.steps} "
               f"--batch-points {args.batch_points} --source {args.source}"
               + (f" --stream-mb {args.stream_mb:g}" if args.stream_mb else ""))
    mode = (f"shards streamed from disk (teacher.batches = chunks, signal.cache_mb = {args.stream_mb:g})"
            if args.stream_mb else "shards resident, stratified batches")
    header = (f"machine: {machine()}\ncommand: {command}\nprocedural RGB uint8 images (synth gigapixel) as "
              f"{'tiled BigTIFF (ingest by all ranks included)' if args.source == 'tiff' else 'Zarr'}, 256^2 "
              f"chunks, SIREN 3x32, mini-batch INT with batches of about {args.batch_points} points (all ranks), "
              f"{mode}, {args.steps} steps, render, OME-Zarr pyramid, pyramidal BigTIFF export and SSIM included")
    return header + "\n\n" + table + "\n"


# ----------------------------------------------------------------------------------------------- model
def _collective_worker(rank, world, port, sizes, repeats, out):
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    times = {}
    for n in sizes:
        x = torch.zeros(n // 4, dtype=torch.float32)
        for _ in range(3):
            dist.all_reduce(x)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(repeats):
            dist.all_reduce(x)
        times[n] = (time.perf_counter() - t0) / repeats
    if rank == 0:
        torch.save(times, out)
    dist.destroy_process_group()


def measure_collectives(sizes: list[int], repeats: int = 20) -> dict:
    import socket

    import torch
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(tempfile.mkdtemp()) / "t.pt"
    mp.start_processes(_collective_worker, args=(2, port, sizes, repeats, str(out)), nprocs=2, start_method="spawn")
    return torch.load(out)


def measure_compute(hidden: int, layers: int, batch: int, repeats: int = 5) -> tuple[float, float]:
    """Points per second of a SIREN train step (forward, backward, Adam) and of a scoring pass, fp32."""
    import torch

    from dist_int.model import Siren

    model = Siren(2, 3, hidden, layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = torch.rand(batch, 2) * 2 - 1, torch.rand(batch, 3)

    def step():
        opt.zero_grad(set_to_none=True)
        (model(x) - y).square().mean().backward()
        opt.step()

    def score():
        with torch.no_grad():
            (model(x) - y).abs().sum(1)

    out = []
    for fn in (step, score):
        fn()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        out.append(batch * repeats / (time.perf_counter() - t0))
    return out[0], out[1]


def model_table(args) -> str:
    from dist_int.config import load_config
    from dist_int.teacher.select import SEARCH_BYTES

    cfg = load_config(str(ROOT / "configs" / "gigapixel.toml"), [])
    hidden, layers = cfg.model.hidden, cfg.model.layers
    params = 2 * hidden + hidden + (layers - 2) * (hidden * hidden + hidden) + hidden * 3 + 3
    grad_bytes = 4 * params
    rounds, hist_bytes = 8, SEARCH_BYTES // 8
    print("measuring collectives (gloo, 2 processes) ...", flush=True)
    coll = measure_collectives([hist_bytes, grad_bytes])
    print("measuring compute (1 process) ...", flush=True)
    torch_threads = __import__("torch").get_num_threads()
    train_pps, score_pps = measure_compute(hidden, layers, args.model_batch)
    points = args.model_size ** 2
    batch = points / cfg.teacher.num_batches
    rows = []
    # Per step: each rank trains on ratio x batch / N points and, at a selection, scores batch / N points
    # and runs `rounds` histogram all-reduces; every step all-reduces the gradients once.
    scenarios = [
        ("this CPU (measured)", train_pps, score_pps, coll[hist_bytes], coll[grad_bytes], 0.0),
        # An H200 at bf16 (project-measured throughput, NOTES) with NCCL latency and bandwidth ASSUMED:
        # 30 us a small all-reduce, ring all-reduce of the gradients at 100 GB/s bus bandwidth.
        ("H200 bf16 (assumed NCCL)", 34.0e6, 95.0e6, 30e-6, 30e-6, 1 / 100e9),
    ]
    for name, tps, sps, t_hist, t_grad2, inv_bw in scenarios:
        for n in (1, 2, 8, 64):
            for ratio in (cfg.teacher.ratio, 1.0):
                compute = ratio * batch / n / tps
                scoring = batch / n / sps
                if n == 1:
                    grad = sel = 0.0
                elif inv_bw:  # ring all-reduce: 2 (n - 1) / n of the bytes through each link, plus latency
                    grad = t_grad2 + 2 * (n - 1) / n * grad_bytes * inv_bw
                    sel = rounds * t_hist
                else:  # measured on 2 processes; a ring grows its latency with log2(n) for small messages
                    grad = t_grad2 * 2 * (n - 1) / n / 1.0
                    sel = rounds * t_hist * max(1.0, math.log2(n))
                step_sel = compute + scoring + grad + sel
                step_plain = compute + grad
                epoch = cfg.teacher.num_batches * step_sel
                rows.append([name, n, f"{ratio:g}", f"{compute * 1e3:.2f}", f"{scoring * 1e3:.2f}",
                             f"{grad * 1e3:.3f}", f"{sel * 1e3:.3f}", f"{step_plain * 1e3:.2f}",
                             f"{step_sel * 1e3:.2f}", f"{epoch:.2f}"])
    table = markdown_table(["compute", "ranks", "ratio", "train (ms)", "scoring (ms)", "grad all-reduce (ms)",
                            "selection all-reduces (ms)", "step without selection (ms)",
                            "step with selection (ms)", "epoch, selecting every step (s)"], rows)
    header = (
        f"machine: {machine()}\ncommand: python bench/scale.py --model --model-size {args.model_size} "
        f"--model-batch {args.model_batch}\nconfigs/gigapixel.toml on a {args.model_size}^2 image: SIREN "
        f"{layers}x{hidden} ({params:,} params, {grad_bytes / 2**20:.1f} MiB of fp32 gradients), "
        f"{cfg.teacher.num_batches} batches of {batch / 1e6:.2f} M points.\n"
        f"Measured here: train step {train_pps / 1e6:.3f} M points/s and scoring {score_pps / 1e6:.3f} M points/s "
        f"(fp32, {torch_threads} threads, batch {args.model_batch}); gloo all-reduce between 2 processes: "
        f"{coll[hist_bytes] * 1e6:.0f} us for a {hist_bytes} B histogram, {coll[grad_bytes] * 1e3:.2f} ms for the "
        f"gradients.\nThe H200 rows use the project's measured H200 throughput (bf16 train step 34.0 M points/s, "
        f"scoring 95 M; docs/training.md, last section) and ASSUMED NCCL costs (30 us per small all-reduce, 100 GB/s ring "
        f"bandwidth), since no GPU cluster was available to measure them. Selection bytes per rank are "
        f"{SEARCH_BYTES} B whatever the size and rank count.")
    return header + "\n\n" + table + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="512,1024,2048,4096")
    p.add_argument("--nproc", default="1,2")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-points", type=int, default=65536,
                   help="points per mini-batch (num_batches = pixels / this, at most a chunk's points); "
                        "also the most points per forward/backward pass")
    p.add_argument("--source", choices=("zarr", "tiff"), default="zarr")
    p.add_argument("--stream-mb", type=float, default=0.0, help="stream shards with this signal.cache_mb")
    p.add_argument("--work", default=None, help="folder for the temporary images and runs")
    p.add_argument("--model", action="store_true", help="the scaling model instead of the size sweep")
    p.add_argument("--model-size", type=int, default=16384)
    p.add_argument("--model-batch", type=int, default=16384)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.model:
        text, default = model_table(args), "scale_model.md"
    else:
        text = sizes_table(args)
        default = "scale_stream.md" if args.stream_mb else "scale.md"
    print(text)
    Path(args.out or ROOT / "bench" / "results" / default).write_text(text)


if __name__ == "__main__":
    main()
