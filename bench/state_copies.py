"""How many copies of its parameters a field's training holds: the resident memory each part adds.

One process, one rank: a hash field (configs/gigapixel.toml's, 2^22 rows a level, on a 32768^2 image's
geometry: 57.9 M parameters) built, wrapped by DeepSpeed as the trainer does (fused torch Adam, stage 0),
trained one step, and snapshotted by the divergence guard. After each part the process's resident memory
(VmRSS) is read; the table gives what each part added in bytes per parameter (4 = one fp32 copy).

    python bench/state_copies.py [--log2-table 22] [--side 32768]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from common import ROOT, machine, markdown_table

sys.path.insert(0, str(ROOT))


def rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--log2-table", type=int, default=22)
    p.add_argument("--side", type=int, default=32768)
    p.add_argument("--points", type=int, default=65536)
    args = p.parse_args()
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29517",
                      DS_ACCELERATOR="cpu")
    torch.set_num_threads(1)
    from dist_int.config import load_config
    from dist_int.engine.deepspeed_engine import build_engine
    from dist_int.engine.guard import DivergenceGuard
    from dist_int.engine.launch import detect_launch, init_distributed
    from dist_int.engine.precision import Precision
    from dist_int.model import build_field

    cfg = load_config(ROOT / "configs" / "gigapixel.toml", [f"model.log2_table={args.log2_table}",
                                                           "train.precision=fp32"])
    init_distributed(detect_launch(), torch.device("cpu"), 60)
    rows, start = [], rss()

    def mark(what: str, before: int, params: int) -> int:
        now = rss()
        rows.append([what, f"{(now - before) / 2**20:,.0f}", f"{(now - before) / params:.2f}"])
        return now

    model = build_field(cfg.model, 2, 3, (args.side, args.side))
    params = sum(p.numel() for p in model.parameters())
    at = mark("the field's weights (fp32)", start, params)
    precision = Precision("fp32", torch.device("cpu"))
    engine, schedule = build_engine(model, cfg, precision)
    at = mark("DeepSpeed's engine around it (stage 0, fused torch Adam)", at, params)
    x = torch.rand(args.points, 2) * 2 - 1
    loss = engine(x).square().mean()
    engine.backward(loss)
    engine.step()
    at = mark(f"one step on {args.points:,} points: gradients and Adam's two moments", at, params)
    for _ in range(2):
        engine.backward(engine(x).square().mean())
        engine.step()
    at = mark("two more steps (what stays)", at, params)
    teacher = type("T", (), {"rollback_state": lambda self: None, "restore_rollback_state": lambda self, s: None})()
    guard = DivergenceGuard(engine, schedule, teacher, 10.0, 0.5, 5)
    guard.start(0)
    at = mark("the divergence guard's snapshot (weights and both moments)", at, params)
    table = markdown_table(["part", "RSS added (MiB)", "bytes per parameter"], rows)
    print(f"date: {time.strftime('%Y-%m-%d')}\nmachine: {machine()}\ncommand: python bench/state_copies.py "
          f"--log2-table {args.log2_table} --side {args.side}\nfield: {params:,} parameters "
          f"({params * 4 / 2**20:,.0f} MiB in fp32)\n\n{table}")


if __name__ == "__main__":
    main()
