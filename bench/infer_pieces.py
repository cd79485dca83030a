"""How long a no-grad forward takes per piece size on one CPU core, for the fields the long signals train.

Scoring, evaluation and rendering run the field without gradients over many points; on a CPU the trainer
runs that forward in pieces of model/infer.py's CPU_PIECE points (docs/training.md, "Inference pieces on
a CPU"). This times the forward of `--points` points cut into pieces of each size (alternating the sizes,
median of the repeats) and checks that the outputs equal the one-call forward bit for bit.

    python bench/infer_pieces.py
    python bench/infer_pieces.py --pieces 2048,4096,16384 --points 32768 --repeats 9
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from common import ROOT, machine, markdown_table

sys.path.insert(0, str(ROOT))

from dist_int.model import HashField, Siren  # noqa: E402
from dist_int.model.infer import CPU_PIECE, predict_pieces  # noqa: E402


def fields() -> dict:
    """The fields of the long-signal benchmarks (bench/scale.py: 2^19-row tables) and two SIRENs."""
    torch.manual_seed(0)
    return {
        "hash, 32768^2 image": (2, HashField(2, 3, 64, 3, levels=16, log2_table=19, finest_resolution=32767,
                                             axis_lengths=(32768, 32768))),
        "hash, 1024^3 volume": (3, HashField(3, 1, 64, 3, levels=16, log2_table=19, finest_resolution=1023,
                                             axis_lengths=(1024,) * 3)),
        "hash, 1 h of audio": (1, HashField(1, 2, 64, 3, levels=16, log2_table=19, finest_resolution=172_799_999,
                                            axis_lengths=(172_800_000,))),
        "SIREN 3x256": (2, Siren(2, 3, 256, 3)),
        "SIREN 6x512": (2, Siren(2, 3, 512, 6)),
    }


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pieces", default="2048,4096,8192,16384")
    ap.add_argument("--points", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one core: a rank's share of the CPU in the 2-rank benchmarks
    pieces = [int(v) for v in args.pieces.split(",")]
    rows = []
    for name, (dims, model) in fields().items():
        coords = torch.rand(args.points, dims, dtype=torch.float64 if dims == 1 else torch.float32) * 2 - 1
        whole = model(coords)
        times = {p: [] for p in pieces}
        same = {p: torch.equal(predict_pieces(model, coords, p), whole) for p in pieces}
        for _ in range(args.repeats):
            for p in pieces:
                t0 = time.perf_counter()
                predict_pieces(model, coords, p)
                times[p].append(time.perf_counter() - t0)
        med = {p: sorted(v)[len(v) // 2] * 1e3 for p, v in times.items()}
        rows.append([name, *(f"{med[p]:.1f}{'' if same[p] else ' (differs)'}" for p in pieces),
                     f"{med[max(pieces)] / med[CPU_PIECE]:.2f}" if CPU_PIECE in med else "-"])
    print(f"machine: {machine()}\ncommand: python bench/infer_pieces.py --pieces {args.pieces} --points "
          f"{args.points} --repeats {args.repeats}\nms for {args.points:,} points on one thread, median of "
          f"{args.repeats}; '(differs)': outputs not bit-identical to the one-call forward\n")
    print(markdown_table(["field", *(f"pieces of {p}" for p in pieces), f"{max(pieces)} / {CPU_PIECE}"], rows))


if __name__ == "__main__":
    main()
