"""Memory and communication against signal size, and a scaling model for 8 and 64 GPUs.

Long signals (--kinds, 2 CPU ranks, one budget of train.memory_mb per rank): a 32768^2 image (and the
same config at 16384^2 and 8192^2), an hour of 48 kHz stereo audio, 2,000 frames of 720p video and a
1024^3 volume, each made on this machine, ingested, trained a few steps, rendered and exported end to
end. Per kind: peak RSS per rank, the ingest, a training step, render, metrics and export times, and the
bytes each rank sends per selection.

    python bench/scale.py --kinds image,audio,video,volume --work /big/disk

--train-only stops each run once its last step is logged, leaving out the render, metrics and export
(passes over every point: a billion and more here); --tile-from 8192 makes the larger
images by tiling the 8192^2 synth image (seconds; the generator wrote 1.85 chunks a second here, about 37 minutes for 32768^2).

    python bench/scale.py --kinds image --image-sizes 8192,16384,32768 --tile-from 8192 --steps 40 --log-every 10 --train-only

--ratios runs each signal once per teacher ratio, held constant (a phase of the `step` ratio schedule),
and adds the selection share of a whole run over those phases:

    python bench/scale.py --kinds image --image-sizes 32768 --tile-from 8192 --steps 40 --train-only \
        --ratios 0.2,0.28,0.36,0.44,0.52,0.6,0.68,0.76,0.84,0.92

Sizes (CPU, 1-2 ranks): every rank's peak host RSS and the bytes each rank sends per selection, for
procedural images of several sizes, mini-batch INT, a few steps, ingest (from a tiled BigTIFF with
--source tiff), render, pyramid, export and SSIM included. `--budget-mb` fixes train.memory_mb (shards
that do not fit it stream a window at a time).

    python bench/scale.py --sizes 512,1024,2048,4096 --nproc 1,2
    python bench/scale.py --sizes 2048,16384 --nproc 2 --source tiff --budget-mb 1024 --steps 4

Model (--model): times the parts of a step on this machine (a SIREN train step and scoring pass per
point, and gloo all-reduces of a selection histogram and of the gradients between 2 processes), then
predicts epoch times of configs/gigapixel.toml on 1-64 ranks as compute / ranks + collectives.

    python bench/scale.py --model
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, markdown_table, train, train_cmd

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
                if args.budget_mb:
                    extra = [f"train.memory_mb={args.budget_mb}", f"teacher.window_points={1 << 24}"]
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
               + (f" --budget-mb {args.budget_mb:g}" if args.budget_mb else ""))
    mode = (f"train.memory_mb = {args.budget_mb:g} (shards that do not fit stream a window of 2^24 points at a "
            f"time)" if args.budget_mb else "shards resident, stratified batches")
    header = (f"machine: {machine()}\ncommand: {command}\nprocedural RGB uint8 images (synth gigapixel) as "
              f"{'tiled BigTIFF (ingest by all ranks included)' if args.source == 'tiff' else 'Zarr'}, 256^2 "
              f"chunks, SIREN 3x32, mini-batch INT with batches of about {args.batch_points} points (all ranks), "
              f"{mode}, {args.steps} steps, render, OME-Zarr pyramid, pyramidal BigTIFF export and SSIM included")
    return header + "\n\n" + table + "\n"


# ------------------------------------------------------------------------------------------ long signals
# Every run: configs/hash.toml (or configs/gigapixel.toml for images) with a budget of LONG_BUDGET_MB per rank,
# windows of 2^26 points, the default teacher (so that selections happen), a few steps, passes of 2^14 points.
LONG_BUDGET_MB = 1024
LONG_COMMON = [f"train.memory_mb={LONG_BUDGET_MB}", f"teacher.window_points={1 << 26}", "teacher.strategy=soft",
               "teacher.batch_points=65536", "train.max_points_per_pass=16384", "teacher.score_chunk=16384",
               "train.eval_chunk=16384", "train.precision=fp32", "model.log2_table=19", "train.eval_every=0",
               "checkpoint.every=0", "train.probe_points=4096"]


def made(path: Path, make) -> str:
    """`path`, made by `make(path)` unless it exists already (the long signals take minutes to write)."""
    if not path.exists():
        t0 = time.time()
        make(path)
        print(f"made {path} in {time.time() - t0:.0f} s", flush=True)
    return str(path)


def _long_signals(work: Path, kinds: list[str], sizes=(8192, 16384, 32768), tile_from: int = 0) -> dict:
    """kind label -> (source path, config, extra overrides), made here unless already in `work`."""
    from dist_int.synth import synth_gigapixel, synth_speech, synth_video, synth_volume

    out = {}
    if "image" in kinds:
        for size in sizes:
            if tile_from and size > tile_from and size % tile_from == 0:
                small = made(work / f"image-{tile_from}.zarr", lambda p: synth_gigapixel(p, tile_from, chunk=512))
                src = made(work / f"image-{size}-tiled.zarr",
                           lambda p, n=size: tiled_image(Path(small), p, n // tile_from))
            else:
                src = made(work / f"image-{size}.zarr", lambda p, n=size: synth_gigapixel(p, n, chunk=512))
            out[f"image {size}^2"] = (src, "configs/gigapixel.toml", ["render.format=tiff"])
    if "audio" in kinds:
        src = made(work / "hour.wav", lambda p: synth_speech(p, 3600, rate=48000, channels=2))
        out["audio 1 h, 48 kHz stereo"] = (src, "configs/hash.toml", [])
    if "video" in kinds:
        src = made(work / "long.mp4", lambda p: synth_video(p, frames=2000, size=1280, height=720, fps=25))
        # windows of 2^23 points: two 2^26-point windows of RGB frames (384 MiB) do not fit beside a 3-D
        # table in the 1 GiB budget (the start-up check says so)
        out["video 2,000 frames 720p"] = (src, "configs/hash.toml", ["signal.chunk=[8,128,128]",
                                                                     f"teacher.window_points={1 << 23}"])
    if "volume" in kinds:
        src = made(work / "volume-1024.tif", lambda p: synth_volume(p, 1024))
        out["volume 1024^3"] = (src, "configs/hash.toml", [])
    return out


def tiled_image(src: Path, dest: Path, reps: int) -> None:
    """A (reps * n)^2 image made of the n^2 Zarr image `src` repeated reps x reps times, chunk by chunk:
    the generator wrote 1.85 chunks a second here (about 37 minutes for 32768^2); tiling 8192^2 into
    16384^2 took 5 s. The repeats do not matter to what the benchmark measures (memory, the time of a step
    and of selection)."""
    import hashlib
    import json

    import numpy as np
    import zarr

    from dist_int.signal.source import ATTR

    a = zarr.open_array(src, mode="r")
    n, _, c = a.shape
    chunk = a.chunks[0]
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    out = zarr.create_array(tmp, shape=(n * reps, n * reps, c), chunks=a.chunks, dtype=a.dtype, fill_value=0)
    for y in range(0, n, chunk):
        band = np.asarray(a[y:y + chunk])
        for ry in range(reps):
            for rx in range(reps):
                out[ry * n + y:ry * n + y + band.shape[0], rx * n:(rx + 1) * n] = band
    attrs = dict(a.attrs[ATTR])
    attrs["source"] = f"{attrs['source']} tiled {reps}x{reps}"
    attrs["source_sha256"] = hashlib.sha256(json.dumps([attrs["source_sha256"], reps]).encode()).hexdigest()
    out.attrs[ATTR] = attrs
    os.replace(tmp, dest)


def _points(src: str) -> int | None:
    """Sample positions of a Zarr store (its last axis: channels); None for other sources."""
    import zarr

    if not src.endswith(".zarr"):
        return None
    return math.prod(zarr.open_array(src, mode="r").shape[:-1])


def train_only(args: list[str], nproc: int, steps: int) -> dict:
    """The run up to its last training step: once that step's metrics line is written, SIGTERM (the run is
    then in its render, which it leaves with exit 75; docs/training.md). For signals whose render alone
    takes longer than the benchmark should."""
    import json
    import signal
    import subprocess

    run_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("run.dir=")))
    cmd = train_cmd(args, nproc)
    t0 = time.time()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        metrics: list[dict] = []
        first = None
        while not metrics or metrics[-1]["step"] < steps:
            if proc.poll() is not None:
                text = _read(log)
                errors = "\n".join(line for line in text.splitlines() if line.startswith("error:"))
                raise RuntimeError(f"{' '.join(cmd)} ended ({proc.returncode}) before step {steps}:\n"
                                   f"{errors or text[-3000:]}")
            time.sleep(1)
            path = run_dir / "metrics.jsonl"
            metrics = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
            if metrics and first is None:
                first = time.time() - t0 - metrics[0]["train_time_s"]
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=300)
        text = _read(log)
        # torchrun itself exits 1 on a signal; its workers exit 75, saying so
        if code not in (0, 75) and "stopped by SIGTERM" not in text:
            raise RuntimeError(f"{' '.join(cmd)} ended with {code} after SIGTERM:\n{text[-3000:]}")
    return {"metrics": metrics, "startup_s": first, "train_time_s": metrics[-1]["train_time_s"],
            "steps": metrics[-1]["step"], "peak_rss_mb": metrics[-1]["peak_rss_mb"], "shape": None}


def _read(log) -> str:
    log.seek(0)
    return log.read()


def long_table(args) -> str:
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-long-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, phases = [], {}
    sizes = [int(v) for v in args.image_sizes.split(",")]
    ratios = [float(v) for v in args.ratios.split(",")] if args.ratios else [None]
    signals = _long_signals(work, args.kinds.split(","), sizes, args.tile_from)
    # --strategy: the teacher (soft by default, so that every step selects; `full` is the gigapixel config's)
    common = [f"teacher.strategy={args.strategy}" if a.startswith("teacher.strategy=") else a for a in LONG_COMMON]
    for (label, (src, config, extra)), ratio in itertools.product(signals.items(), ratios):
        run = work / ("run-" + label.split()[0] + label.split()[1].replace("^2", "").replace(",", ""))
        shutil.rmtree(run, ignore_errors=True)
        # --ratios: the teacher's ratio held at each value (a phase of the ratio schedule) for the run
        held = [] if ratio is None else ["teacher.ratio_schedule=constant", f"teacher.ratio={ratio}"]
        print(f"{label}{'' if ratio is None else f', ratio {ratio}'} ...", flush=True)
        t0 = time.time()
        run_args = [f"--config={config}", f"signal.path={src}", f"run.dir={run}", *common,
                    f"train.steps={args.steps}", f"train.log_every={args.log_every or args.steps}", *extra, *held]
        if args.train_only:
            r = train_only(run_args, 2, args.steps)
            t = {"setup": r["startup_s"]}
        else:
            r = train(run_args, 2)
            t = r.get("timings_s", {})
        wall = time.time() - t0
        sent = sorted({m["select_bytes"] for m in r["metrics"] if m.get("selections")})
        # the teacher's share of the training time over every logged interval, weighted by its time
        times = [m["train_time_s"] for m in r["metrics"]]
        spans = [b - a for a, b in zip([0.0, *times[:-1]], times)]
        share = sum(m["select_fraction"] * d for m, d in zip(r["metrics"], spans)) / max(sum(spans), 1e-9)
        points = _points(src) if r["shape"] is None else math.prod(r["shape"][:-1])
        skipped = "-" if args.train_only else None
        step_s = r["train_time_s"] / r["steps"]
        phases.setdefault(label, []).append((ratio, share * step_s, step_s))
        rows.append([label, *([] if ratio is None else [f"{ratio:g}"]),
                     "-" if points is None else f"{points / 1e6:,.1f}", ", ".join(f"{v:.0f}" for v in r["peak_rss_mb"]),
                     f"{t.get('setup', 0):.0f}", f"{step_s * 1e3:.0f}",
                     f"{share:.2f}", skipped or f"{t.get('render', 0):.0f}", skipped or f"{t.get('metrics', 0):.0f}",
                     skipped or f"{t.get('export', 0):.0f}", ", ".join(map(str, sent)) or "0",
                     skipped or f"{r['psnr_db']:.2f}", f"{wall:.0f}"])
        print(rows[-1], flush=True)
        shutil.rmtree(run, ignore_errors=True)
    table = markdown_table(["signal", *([] if ratios == [None] else ["ratio"]), "M points",
                            "peak RSS per rank (MiB)", "ingest + shard (s)",
                            "train step (ms)", "selection share", "render (s)", "metrics (s)", "export (s)",
                            "bytes sent per selection per rank", "PSNR after the steps (dB)", "wall (s)"], rows)
    flags = (f" --log-every {args.log_every}" * bool(args.log_every) + f" --tile-from {args.tile_from}" *
             bool(args.tile_from) + " --train-only" * args.train_only + f" --ratios {args.ratios}" * bool(args.ratios)
             + f" --strategy {args.strategy}" * (args.strategy != "soft"))
    header = (f"machine: {machine()}\ncommand: python bench/scale.py --kinds {args.kinds} --image-sizes "
              f"{args.image_sizes} --steps {args.steps}{flags}\n"
              f"2 ranks, each with train.memory_mb = {LONG_BUDGET_MB}; every run: "
              f"{' '.join(common)}; {args.steps} steps. RSS includes Python, torch and DeepSpeed (about "
              f"400 MiB). Times are wall seconds of each part"
              + ("; --train-only: each run stopped (SIGTERM) once its last step was logged, so render, metrics "
                 "and export were not run and the start-up column is the time to the first step" if args.train_only
                 else "") + ".")
    return header + "\n\n" + table + "\n" + ("" if ratios == [None] else schedule_share(phases))


def schedule_share(phases: dict) -> str:
    """The selection share of a whole run whose ratio follows the measured values for equal numbers of
    steps (the `step` schedule: ten phases of equal length, one ratio each): the selection time over the
    training time summed over the phases, from each phase's measured time per step and share."""
    lines = ["", "Selection share of a whole run that spends equal steps at each measured ratio (the `step` "
             "schedule's ten phases when the ratios are 0.2, 0.28 ... 0.92): sum over phases of (share x step "
             "time) / sum of step times, each phase as measured above.", ""]
    for label, parts in phases.items():
        select, total = sum(p[1] for p in parts), sum(p[2] for p in parts)
        lines.append(f"- {label}: {select / total:.3f} over {len(parts)} ratios "
                     f"({', '.join(f'{p[0]:g}' for p in parts)})")
    return "\n".join(lines) + "\n"


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
    from dist_int.config import STRATEGIES

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="512,1024,2048,4096")
    p.add_argument("--nproc", default="1,2")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-points", type=int, default=65536,
                   help="points per mini-batch (num_batches = pixels / this, at most a chunk's points); "
                        "also the most points per forward/backward pass")
    p.add_argument("--source", choices=("zarr", "tiff"), default="zarr")
    p.add_argument("--budget-mb", type=float, default=0.0, help="train.memory_mb per rank (0: the machine's share)")
    p.add_argument("--kinds", default=None, help="long signals instead: image,audio,video,volume")
    p.add_argument("--work", default=None, help="folder for the temporary images and runs")
    p.add_argument("--image-sizes", default="8192,16384,32768", help="--kinds image: the image sides")
    p.add_argument("--tile-from", type=int, default=0,
                   help="--kinds image: make larger images by tiling the synth image of this side (fast)")
    p.add_argument("--train-only", action="store_true",
                   help="--kinds: stop each run after its last step (no render, metrics, export)")
    p.add_argument("--ratios", default=None,
                   help="--kinds: one run per teacher ratio, held constant (e.g. the step schedule's phases "
                        "0.2,0.28,...,0.92), and the whole-run selection share over them")
    p.add_argument("--log-every", type=int, default=0, help="--kinds: train.log_every (0: one line at the end)")
    p.add_argument("--strategy", default="soft", choices=STRATEGIES,
                   help="--kinds: the teacher (soft: every step selects; full: the gigapixel config's own)")
    p.add_argument("--model", action="store_true", help="the scaling model instead of the size sweep")
    p.add_argument("--model-size", type=int, default=16384)
    p.add_argument("--model-batch", type=int, default=16384)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.kinds:
        text, default = long_table(args), "scale_long.md"
    elif args.model:
        text, default = model_table(args), "scale_model.md"
    else:
        text = sizes_table(args)
        default = "scale_stream.md" if args.budget_mb else "scale.md"
    print(text)
    Path(args.out or ROOT / "bench" / "results" / default).write_text(text)


if __name__ == "__main__":
    main()
