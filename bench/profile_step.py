"""Where a training step's time goes: DeepSpeed's engine step against the same step in plain PyTorch, on
the same model, data and optimizer, measured side by side, plus a torch.profiler table of the engine step;
then, per step kind (selecting, reusing, mini-batch rows rebuilt, streamed window), host time against
time until the device is done, operations launched per step and host waits, from the census
(dist_int/census.py): a regression in launches per step shows on a CPU.

    python bench/profile_step.py --hidden 256 --layers 6 --points 65536 --steps 30
Runs on the GPU when there is one (then it also counts host-device synchronizations per step).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from common import ROOT, machine, markdown_table

sys.path.insert(0, str(ROOT))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, device, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        out.append(time.perf_counter() - t)
    return out


def step_kinds(device, prec, hidden: int, layers: int, size: int, steps: int) -> str:
    """A table per step kind on a size^2 synthetic image in 64^2 chunks: median host ms (the step call
    returns), median ms until the device is done, operations dispatched, host waits (census)."""
    import tempfile

    import numpy as np
    from PIL import Image

    from dist_int.census import SyncCensus, optimizer_host_tensors
    from dist_int.comm import Comm
    from dist_int.config import Config
    from dist_int.engine.deepspeed_engine import build_engine
    from dist_int.engine.step import TrainStep
    from dist_int.modality import ingest
    from dist_int.model import Siren
    from dist_int.signal import Shard, SignalStore
    from dist_int.signal.stream import StreamedShard
    from dist_int.teacher import BatchPlan, Teacher

    folder = Path(tempfile.mkdtemp(prefix="profile-step-"))
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin(9 * xx + 4 * yy), np.cos(7 * yy * xx), xx - yy], -1) * 0.5 + 0.5
    Image.fromarray((img * 255).astype(np.uint8)).save(folder / "img.png")
    ingest(str(folder / "img.png"), folder / "s.zarr", 64)
    store = SignalStore(folder / "s.zarr")
    own = list(range(store.num_chunks))
    sizes = [store.chunk_size(c) for c in own]
    total = 4 * steps
    kinds = [  # name, strategy, batches, windows, which steps count
        ("selecting (int, every step early on)", "int", 1, 1, lambda t, sel: sel),
        ("reusing (int, cached set)", "int", 1, 1, lambda t, sel: not sel),
        ("mini-batch (full, rows rebuilt each step)", "full", 8, 1, lambda t, sel: True),
        ("streamed (full, 2 windows)", "full", 8, 2, lambda t, sel: True),
    ]
    def run(strategy, batches, windows, counted, census_on: bool) -> list[tuple]:
        """(host s, done s) per counted step, or (ops, waits) under the census: two separate runs of the
        same steps, so that neither the census's overhead nor a second call's caches touch the other."""
        cfg = Config()
        cfg.train.steps = total
        cfg.teacher.strategy, cfg.teacher.num_batches = strategy, batches
        cfg.teacher.interval_schedule = "incremental"
        torch.manual_seed(0)
        engine, _ = build_engine(Siren(2, 3, hidden, layers).to(device), cfg, prec)
        if windows > 1:
            shard = StreamedShard(store, own, device, cache_bytes=store.num_points * 3 * 4 // windows)
        else:
            shard = Shard.load(store, own, device)
        plan = BatchPlan(sizes, own, shard.chunk_start, batches, 0, device, windows, epochs=total)
        teacher = Teacher(cfg.teacher, total, 0, Comm(), plan, store.num_points)
        step = TrainStep(engine, 1, 3, device)

        def score(x):
            with prec.scoring():
                return engine.module(x)

        def one(t):
            if shard.streamed:
                shard.stage(plan, t)
            batch = teacher.teaching_set(t, shard, score)
            step(shard.coords(batch.rows), shard.targets(batch.rows), batch.count, batch.max_rows)

        out = []
        for t in range(total):
            if t < 3 or not counted(t, teacher.selects_at(t)):
                one(t)
                continue
            _sync(device)
            if census_on:
                census = SyncCensus(device)
                census.mark_host(optimizer_host_tensors(engine.optimizer))
                with census:
                    one(t)
                out.append((census.ops, census.syncs))
            else:
                t0 = time.perf_counter()
                one(t)
                host = time.perf_counter() - t0
                _sync(device)
                out.append((host, time.perf_counter() - t0))
            if len(out) >= steps:
                break
        if shard.streamed:
            shard.close()
        return out

    rows = []
    for name, strategy, batches, windows, counted in kinds:
        timed = run(strategy, batches, windows, counted, False)
        counts = run(strategy, batches, windows, counted, True)
        med = lambda values: statistics.median(values)  # noqa: E731
        rows.append([name, str(len(timed)), f"{med([h for h, _ in timed]) * 1e3:.2f}",
                     f"{med([d for _, d in timed]) * 1e3:.2f}", f"{med([o for o, _ in counts]):g}",
                     f"{med([w for _, w in counts]):g}"])
    return (f"Step kinds: SIREN {layers}x{hidden}, {size}^2 image in 64^2 chunks, 1 rank (timed and counted in "
            f"two separate runs of the same steps):\n\n" +
            markdown_table(["step kind", "steps", "host ms (median)", "ms until the device is done",
                            "ops launched / step", "host waits / step"], rows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--points", type=int, default=65536)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--precision", default="tf32", choices=("fp32", "tf32", "bf16"))
    p.add_argument("--size", type=int, default=256, help="image side for the step-kind table")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "profile_step.md"))
    args = p.parse_args()

    from dist_int.config import Config
    from dist_int.engine.deepspeed_engine import build_engine
    from dist_int.engine.launch import detect_launch, init_distributed, pick_device
    from dist_int.engine.precision import Precision
    from dist_int.engine.step import TrainStep
    from dist_int.model import Siren

    device = pick_device(detect_launch())
    init_distributed(detect_launch(), device, 60)
    cfg = Config()
    cfg.train.precision = args.precision
    prec = Precision(args.precision, device)
    prec.apply()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(args.points, 2, generator=g) * 2 - 1).to(device)
    y = (torch.rand(args.points, 3, generator=g) * 2 - 1).to(device)

    torch.manual_seed(0)
    engine, _ = build_engine(Siren(2, 3, args.hidden, args.layers).to(device), cfg, prec)
    ds_step = TrainStep(engine, 1, 3, device)
    torch.manual_seed(0)
    model = Siren(2, 3, args.hidden, args.layers).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=prec.bf16)

    def plain_step():
        with autocast:
            loss = (model(x).float() - y).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def engine_step():
        ds_step(x, y, args.points)

    for f in (plain_step, engine_step):  # warm up
        time_steps(f, device, 3)
    plain, ds = [], []
    for _ in range(3):  # alternate so machine drift hits both
        plain += time_steps(plain_step, device, args.steps)
        ds += time_steps(engine_step, device, args.steps)
    mp, md = statistics.median(plain), statistics.median(ds)
    syncs = "-"
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            engine_step()
        torch.cuda.set_sync_debug_mode(0)
        syncs = str(sum("synchroniz" in str(w.message) for w in caught))
    rows = [["plain PyTorch step", f"{mp * 1e3:.2f}", "1.000", "-"],
            ["DeepSpeed engine step (dist_int TrainStep)", f"{md * 1e3:.2f}", f"{md / mp:.3f}", syncs]]
    table = markdown_table(["", "median ms/step", "ratio to plain", "host syncs/step"], rows)

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    ops = {}
    for name, fn in (("engine", engine_step), ("plain", plain_step)):
        with profile(activities=acts) as prof:
            for _ in range(5):
                fn()
            _sync(device)
        ops[name] = {e.key: (e.count / 5, e.self_cpu_time_total / 5e3) for e in prof.key_averages()}
    # DeepSpeed's machinery: the ops the engine step runs that the plain step does not (or runs more often).
    extra = []
    for key, (count, ms) in ops["engine"].items():
        p_count, p_ms = ops["plain"].get(key, (0, 0.0))
        if count > p_count:  # the extra calls, at this op's mean time per call in the engine step
            extra.append((ms * (count - p_count) / count, key, count - p_count))
    extra.sort(reverse=True)
    machinery_ms = sum(ms for ms, _, _ in extra)
    table2 = markdown_table(["op only (or more often) in the engine step", "calls/step", "self CPU ms/step"],
                            [[k[:60], f"{c:g}", f"{ms:.3f}"] for ms, k, c in extra[:12]])
    summary = (f"DeepSpeed machinery (ops the plain step does not run): {machinery_ms:.2f} ms/step, "
               f"{100 * machinery_ms / (mp * 1e3):.2f} % of the plain step")
    command = (f"python bench/profile_step.py --hidden {args.hidden} --layers {args.layers} --points "
               f"{args.points} --steps {args.steps} --precision {args.precision} --size {args.size}")
    header = (f"machine: {machine()}\ncommand: {command}\nSIREN {args.layers}x{args.hidden}, {args.points} "
              f"points a step, {args.precision}, 1 rank; {3 * args.steps} steps each, alternated")
    kinds = step_kinds(device, prec, args.hidden, args.layers, args.size, min(args.steps, 20))
    text = (header + "\n\n" + table + "\n\n" + summary + " (torch.profiler, 5 steps each):\n\n" + table2 +
            "\n\n" + kinds + "\n")
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
