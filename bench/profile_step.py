"""Where a training step's time goes: DeepSpeed's engine step against the same step in plain PyTorch, on
the same model, data and optimizer, measured side by side, plus a torch.profiler table of the engine step.

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--points", type=int, default=65536)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--precision", default="tf32", choices=("fp32", "tf32", "bf16"))
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
               f"{args.points} --steps {args.steps} --precision {args.precision}")
    header = (f"machine: {machine()}\ncommand: {command}\nSIREN {args.layers}x{args.hidden}, {args.points} "
              f"points a step, {args.precision}, 1 rank; {3 * args.steps} steps each, alternated")
    text = header + "\n\n" + table + "\n\n" + summary + " (torch.profiler, 5 steps each):\n\n" + table2 + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
