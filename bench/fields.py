"""SIREN against the hash grid, and the hash grid with every teacher, at equal training time, per kind.

Every run trains for about the same wall time (a short probe of the run's own config sets its step count;
a run that lands more than 15 % off the budget is run again with its steps rescaled). From each run's own
metrics.jsonl it reports the PSNR at fixed times, the final PSNR (IoU for shapes), the time to reach the
SIREN's final PSNR and the field's size. Single-process runs are pinned to one core with one thread; runs
go one after another.

    python bench/fields.py                                   # image 512^2 and 2048^2, audio, volume, video, shape
    python bench/fields.py --kinds gigapixel                 # 8192^2 synth image on 2 ranks, 20 minutes a run
    python bench/fields.py --allreduce                       # dense gradient all-reduce against the step

Results: bench/results/fields.md (and .json, .png); --allreduce: bench/results/fields_allreduce.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, markdown_table, mosaic, train
from teachers import time_to

sys.path.insert(0, str(ROOT))

# configs/gigapixel.toml's CPU override (its header comment): GPU-sized table, batches and passes made small.
GIGAPIXEL_CPU = ["model.log2_table=20", "teacher.batch_points=65536", "teacher.score_chunk=65536",
                 "train.eval_chunk=65536", "train.precision=fp32"]
# Every kind: how its signal is made, its budget (seconds of training a run), ranks, the SIREN (the
# project's config for that kind, with the default teacher) and the settings both fields share.
KINDS = {
    "image512": dict(budget=120, nproc=1, make=lambda d: mosaic(512, d, tile=512, name="astronaut"),
                     siren=["--config=configs/image.toml", "teacher.strategy=soft",
                            "teacher.interval_schedule=step-incremental"],
                     common=["signal.chunk=128"]),
    "image2048": dict(budget=300, nproc=1, make=lambda d: mosaic(2048, d),
                      siren=["--config=configs/image.toml", "teacher.strategy=soft",
                             "teacher.interval_schedule=step-incremental", "teacher.batch_points=65536"],
                      common=["signal.chunk=256"]),
    "audio": dict(budget=120, nproc=1, make=lambda d: _synth("speech", d / "speech.wav", "--seconds", "10"),
                  siren=["--config=configs/audio.toml", "teacher.strategy=soft",
                         "teacher.interval_schedule=step-incremental"],
                  common=["signal.chunk=16384"]),
    "volume": dict(budget=120, nproc=1, make=lambda d: _synth("volume", d / "volume.tif", "--size", "96"),
                   siren=["--config=configs/volume.toml", "teacher.strategy=soft",
                          "teacher.interval_schedule=step-incremental"],
                   common=["signal.chunk=32"]),
    "video": dict(budget=120, nproc=1,
                  make=lambda d: _synth("video", d / "clip.mp4", "--frames", "32", "--size", "128"),
                  siren=["--config=configs/video.toml", "teacher.strategy=soft",
                         "teacher.interval_schedule=step-incremental"],
                  common=["signal.chunk=[8,64,64]"]),
    "shape": dict(budget=120, nproc=1, make=lambda d: _synth("shape", d / "washer.ply"),
                  siren=["--config=configs/shape.toml", "model.hidden=64", "model.layers=4", "optim.lr=1e-3",
                         "teacher.strategy=soft", "teacher.interval_schedule=step-incremental"],
                  common=["signal.points=100000", "signal.chunk=10000"]),
    "gigapixel": dict(budget=1200, nproc=2, make=lambda d: _synth("gigapixel", d / "giga.zarr", "--size", "8192"),
                      siren=["--config=configs/gigapixel.toml", *GIGAPIXEL_CPU, "model.kind=siren",
                             "model.hidden=128", "model.layers=4", "optim.lr=1e-3", "optim.beta2=0.999",
                             "optim.eps=1e-8", "teacher.strategy=soft"],
                      common=[], hash=["--config=configs/gigapixel.toml", *GIGAPIXEL_CPU], teachers=["full"]),
}
HASH = ["--config=configs/hash.toml"]
TEACHERS = ["full", "uniform", "int", "mix", "soft"]
DEFAULT_OUT = str(ROOT / "bench" / "results" / "fields")
TOLERANCE = 0.15  # a run whose training time is further than this from the budget is rerun


def _synth(kind: str, dest: Path, *extra: str) -> str:
    subprocess.run([sys.executable, "-m", "dist_int", "synth", kind, str(dest), *extra], cwd=ROOT, check=True,
                   capture_output=True)
    return str(dest)


def run(args: list[str], nproc: int, run_dir: Path) -> dict:
    shutil.rmtree(run_dir, ignore_errors=True)
    full = [*args, f"run.dir={run_dir}"]
    if nproc == 0 and shutil.which("taskset"):
        # One core: the README's single-core numbers (the other core stays free for the OS).
        core = os.environ.get("BENCH_CORE", str(os.cpu_count() - 1))  # two benches side by side: one core each
        return train(full, 0, prefix=["taskset", "-c", core])
    return train(full, nproc)


def timed(args: list[str], nproc: int, budget: float, run_dir: Path) -> dict:
    """A run of about `budget` seconds of training: a 20-step probe of the same config sets the steps; a run
    that lands more than TOLERANCE off is run again with its steps rescaled."""
    probe = run([*args, "train.steps=20", "train.eval_every=0", "train.log_every=20", "checkpoint.every=0"], nproc,
                run_dir)
    steps = max(20, int(20 * budget / max(probe["train_time_s"], 1e-3)))
    for _ in range(2):
        every = max(1, steps // 12)
        result = run([*args, f"train.steps={steps}", f"train.eval_every={every}", f"train.log_every={every}",
                      "checkpoint.every=0"], nproc, run_dir)
        if abs(result["train_time_s"] - budget) <= TOLERANCE * budget:
            break
        steps = max(20, int(steps * budget / result["train_time_s"]))
    return result


def curve(r: dict) -> list[tuple[float, float]]:
    return [(m["train_time_s"], m["psnr_db"]) for m in r["metrics"] if "psnr_db" in m]


def at(points: list[tuple[float, float]], when: float) -> float | None:
    """The PSNR reached by training time `when` (linear between evaluations); None before the first."""
    prev = None
    for t, p in points:
        if t >= when:
            if prev is None:
                return None
            return prev[1] + (p - prev[1]) * (when - prev[0]) / max(t - prev[0], 1e-12)
        prev = (t, p)
    return points[-1][1] if points else None


def bench_kinds(args) -> None:
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-fields-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    out = Path(args.out)
    # What the files held before this run (--append keeps it); the tables are rewritten after every run, so
    # a benchmark cut off part way keeps the runs that finished.
    before = {suffix: out.with_suffix(suffix).read_text() if args.append and out.with_suffix(suffix).exists()
              else None for suffix in (".md", ".json")}
    try:
        for kind in args.kinds.split(","):
            spec = KINDS[kind]
            folder = work / kind
            folder.mkdir(exist_ok=True)
            signal = spec["make"](folder)
            budget = spec["budget"] * args.budget_scale
            nproc = spec["nproc"] if spec["nproc"] > 1 else 0
            common = [f"signal.path={signal}", *spec["common"], f"seed={args.seed}"]
            runs = {} if args.no_siren else {"siren": spec["siren"]}
            for teacher in args.teachers or spec.get("teachers", TEACHERS):
                runs[f"hash {teacher}"] = [*spec.get("hash", HASH), f"teacher.strategy={teacher}"]
            results[kind] = {"budget_s": budget, "nproc": max(nproc, 1), "runs": {}}
            for label, extra in runs.items():
                print(f"{kind}: {label} ({budget:.0f} s) ...", flush=True)
                r = timed([*extra, *common], nproc, budget, folder / "run")
                results[kind]["runs"][label] = {
                    k: r.get(k) for k in ("psnr_db", "iou", "ssim", "train_time_s", "steps", "field_bytes",
                                          "bits_per_sample", "num_params", "select_fraction", "peak_rss_mb")}
                results[kind]["runs"][label]["curve"] = curve(r)
                print(f"  {r['psnr_db']:.2f} dB in {r['train_time_s']:.0f} s", flush=True)
                write(results, args, before)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def write(results: dict, args, before: dict) -> None:
    """The table and plot of `results` (every run finished so far), after `before` (the files' earlier
    text, with --append)."""
    out = Path(args.out)
    rows = []
    for kind, res in results.items():
        budget = res["budget_s"]
        siren = res["runs"].get("siren")  # absent with --no-siren: no time-to-SIREN column
        times = [budget / 8, budget / 4, budget / 2, budget]
        for label, r in res["runs"].items():
            reach = time_to(r["curve"], siren["psnr_db"]) if siren else None
            marks = [at(r["curve"], t) for t in times]
            rows.append([kind, res["nproc"], label, *("-" if m is None else f"{m:.2f}" for m in marks),
                         f"{r['psnr_db']:.2f}" + (f" (IoU {r['iou']:.4f})" if r.get("iou") is not None else ""),
                         f"{r['train_time_s']:.0f}", r["steps"],
                         "-" if label == "siren" or siren is None else ("not reached" if reach is None else f"{reach:.0f}"),
                         f"{r['field_bytes'] / 2**20:.2f}", f"{r['bits_per_sample']:.1f}",
                         "-" if r.get("peak_rss_mb") is None else "/".join(f"{v:.0f}" for v in r["peak_rss_mb"])])
    table = markdown_table(["kind", "ranks", "field / teacher", "PSNR at 1/8 budget", "at 1/4", "at 1/2",
                            "at budget", "final PSNR (dB)", "train time (s)", "steps",
                            "time to SIREN's final PSNR (s)", "field MiB", "bits per sample",
                            "peak RSS per rank (MiB)"], rows)
    budgets = ", ".join(f"{k} {v['budget_s']:.0f} s" for k, v in results.items())
    text = (f"machine: {machine()}\ncommand: python bench/fields.py --kinds {args.kinds}"
            f"{f' --budget-scale {args.budget_scale}' if args.budget_scale != 1 else ''}"
            f"{' --teachers ' + ','.join(args.teachers) if args.teachers else ''}{' --no-siren' if args.no_siren else ''}"
            f"{' --append' if args.append else ''}"
            f"{'' if args.out == DEFAULT_OUT else f' --out {args.out}'}\n"
            f"budgets (training time per run): {budgets}. Single-process runs: one thread, pinned to one core. "
            f"SIREN: the kind's shipped config with the default teacher (soft); hash: configs/hash.toml with "
            f"each teacher. PSNR is final (not best), on the source range; 'at' columns read the evaluation "
            f"curve at that much training time.\n\n{table}\n")
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    if before[".md"] is not None:
        text = before[".md"] + "\n" + text
    out.with_suffix(".md").write_text(text)
    merged = json.loads(before[".json"]) if before[".json"] is not None else {}
    for kind, res in results.items():  # --append adds runs to a kind already there, keeping its others
        merged[kind] = {**res, "runs": {**merged.get(kind, {}).get("runs", {}), **res["runs"]}}
    out.with_suffix(".json").write_text(json.dumps(merged, indent=1))
    plot(merged, out.with_suffix(".png"))


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, (kind, res) in zip(axes[0], results.items()):
        for label, r in res["runs"].items():
            if r["curve"]:
                ax.plot(*zip(*r["curve"]), label=label, lw=1.4 if label == "siren" else 1.0)
        ax.set_title(f"{kind} ({res['nproc']} rank{'s' if res['nproc'] > 1 else ''})")
        ax.set_xlabel("training time (s)")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---- the gradient all-reduce: a hash table is all-reduced densely every step --------------------------------
def _allreduce_worker(rank: int, world: int, port: int, sizes: list[int], out: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    times = {}
    for n in sizes:
        x = torch.zeros(n // 4)
        dist.all_reduce(x)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(5):
            dist.all_reduce(x)
        times[n] = (time.perf_counter() - t0) / 5
    if rank == 0:
        torch.save(times, out)
    dist.destroy_process_group()


def bench_allreduce(args) -> None:
    import socket

    import torch
    import torch.multiprocessing as mp

    from dist_int.config import load_config
    from dist_int.model import build_field, field_spec

    torch.set_num_threads(1)
    cases = [("configs/hash.toml", "2048^2 image", (2048, 2048)), ("configs/hash.toml", "10 s of audio", (160000,)),
             ("configs/hash.toml", "96^3 volume", (96, 96, 96)),
             ("configs/gigapixel.toml", "8192^2 image", (8192, 8192)),
             ("configs/gigapixel.toml", "32768^2 image", (32768, 32768))]
    rows, sizes, specs = [], [], []
    for config, what, axes in cases:
        cfg = load_config(str(ROOT / config), [])
        points = 1
        for n in axes:
            points *= n
        batch = min(points, cfg.teacher.batch_points or points // cfg.teacher.num_batches)
        spec = field_spec(cfg.model, len(axes), 3 if len(axes) == 2 else 1, axes)
        specs.append((config, what, axes, cfg, batch, spec))
        sizes.append(4 * spec.num_params)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = Path(tempfile.mkdtemp()) / "t.pt"
    mp.start_processes(_allreduce_worker, args=(2, port, sizes, str(out)), nprocs=2, start_method="spawn")
    reduce_s = torch.load(out)
    for (config, what, axes, cfg, batch, spec), nbytes in zip(specs, sizes):
        torch.manual_seed(0)
        field = build_field(cfg.model, len(axes), spec.out_channels, axes)
        groups = field.optimizer_groups()
        opt = torch.optim.Adam(groups, lr=1e-2)
        # The teaching set (all of the batch for `full`), half on each of 2 ranks.
        per_rank = max(1, int(batch * (1.0 if cfg.teacher.strategy == "full" else cfg.teacher.ratio)) // 2)
        x = torch.rand(per_rank, len(axes)) * 2 - 1

        def step(update: bool):
            (field(x).square().sum()).backward()
            if update:
                opt.step()
            opt.zero_grad(set_to_none=False)

        step(True)
        timings = {}
        for update in (False, True):
            t0 = time.perf_counter()
            for _ in range(3):
                step(update)
            timings[update] = (time.perf_counter() - t0) / 3
        adam = timings[True] - timings[False]
        ar = reduce_s[nbytes]
        rows.append([config, what, f"{spec.num_params:,}", f"{nbytes / 2**20:.1f}", f"{per_rank:,}",
                     f"{timings[False] * 1e3:.0f}", f"{adam * 1e3:.0f}", f"{ar * 1e3:.0f}",
                     f"{ar / (timings[True] + ar):.0%}",
                     # An H200 pair over NVLink (ASSUMED 100 GB/s ring bandwidth) and over 200 Gb/s InfiniBand
                     # (ASSUMED 20 GB/s): the all-reduce moves 2 (n-1)/n of the bytes through each link.
                     f"{nbytes / 100e9 * 1e3:.2f}", f"{nbytes / 20e9 * 1e3:.2f}"])
    table = markdown_table(["config", "signal", "field params", "gradient MiB", "points per rank a step",
                            "forward+backward (ms)", "Adam update (ms)", "gloo all-reduce, 2 processes (ms)",
                            "all-reduce share of a step", "NVLink estimate (ms)", "InfiniBand estimate (ms)"], rows)
    text = (f"machine: {machine()}\ncommand: python bench/fields.py --allreduce\n"
            f"One process, one thread, for the step; two gloo processes on this machine for the all-reduce of "
            f"every fp32 gradient (what DeepSpeed does every step). Teaching set: the config's batch (its "
            f"teacher.ratio of it for subset teachers), half on each of 2 ranks. The last two columns are ASSUMED bandwidths (no GPU cluster was "
            f"available), for orientation only.\n\n{table}\n")
    print(text)
    Path(args.out).with_name("fields_allreduce.md").write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default="image512,image2048,audio,volume,video,shape")
    p.add_argument("--budget-scale", type=float, default=1.0, help="multiply every kind's training budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teachers", default=None, help="the hash field's teachers to run, e.g. uniform,soft "
                   "(default: all of the kind's)")
    p.add_argument("--no-siren", action="store_true", help="skip the SIREN run (and the time-to-SIREN column)")
    p.add_argument("--work", default=None, help="keep signals and runs in this folder")
    p.add_argument("--append", action="store_true", help="add to the existing results instead of replacing them")
    p.add_argument("--allreduce", action="store_true", help="the gradient all-reduce against the step instead")
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args()
    if args.teachers:  # checked before any signal is made or run started
        args.teachers = [t.strip() for t in args.teachers.split(",")]
        unknown = sorted(set(args.teachers) - set(TEACHERS))
        if unknown:
            p.error(f"--teachers: unknown {', '.join(unknown)} (choose from {', '.join(TEACHERS)})")
    os.environ["OMP_NUM_THREADS"] = "1"  # one thread per process, as the README's numbers
    if args.allreduce:
        bench_allreduce(args)
    else:
        bench_kinds(args)


if __name__ == "__main__":
    main()
