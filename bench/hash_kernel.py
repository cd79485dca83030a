"""The hash encoding's no-grad forward on one CPU core: torch ops against the fused C kernel.

The teacher's scoring, the evaluation and the render run the field without gradients; on a CPU the hash
encoding then takes model/native.py's kernel (docs/fields.md, "A native kernel for scoring"). This times
the whole field's forward (encoding and MLP) over `--points` points in the trainer's pieces, both ways,
alternated, median of the repeats, and checks that both give the same bits.

    python bench/hash_kernel.py
    python bench/hash_kernel.py --points 65536 --repeats 15 --out /tmp/hash_kernel.md
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from common import ROOT, machine, markdown_table
from infer_pieces import fields

sys.path.insert(0, str(ROOT))

from dist_int.model import HashField, native  # noqa: E402
from dist_int.model.infer import predict_pieces  # noqa: E402


def use_kernel(on: bool) -> None:
    """Switch the path, and load the kernel (or learn it is off) before any timing."""
    os.environ["DIST_INT_NATIVE"] = "1" if on else "0"
    native.reset()
    native.library()


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "hash_kernel.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # one core: a rank's share of the CPU in the 2-rank benchmarks
    use_kernel(True)
    if native.library() is None:
        sys.exit(f"the kernel is unavailable: {native.status()}")
    rows = []
    for name, (dims, model) in fields().items():
        if not isinstance(model, HashField):
            continue
        with torch.no_grad():
            model.encoding.table.normal_(0, 0.1)  # a trained table's values, not the init's tiny ones
        coords = torch.rand(args.points, dims, dtype=torch.float64 if dims == 1 else torch.float32) * 2 - 1
        out, times = {}, {True: [], False: []}
        for _ in range(args.repeats):
            for on in (True, False):
                use_kernel(on)
                t0 = time.perf_counter()
                out[on] = predict_pieces(model, coords)
                times[on].append(time.perf_counter() - t0)
        ms = {on: sorted(t)[len(t) // 2] * 1e3 for on, t in times.items()}
        taken = "kernel" if model.encoding.uses_native(coords) else f"torch ops ({coords.dtype} coordinates)"
        rows.append([name, taken, f"{ms[False]:.1f}", f"{ms[True]:.1f}", f"{ms[False] / ms[True]:.2f}",
                     "yes" if torch.equal(out[True], out[False]) else "NO"])
        print(rows[-1], flush=True)
    use_kernel(True)
    text = (f"machine: {machine()}, one thread\ncommand: python bench/hash_kernel.py --points {args.points} "
            f"--repeats {args.repeats}\nThe field's no-grad forward (encoding and MLP) over {args.points:,} random "
            f"points in the trainer's pieces, median of {args.repeats} alternated runs.\n\n"
            + markdown_table(["field", "path with the kernel on", "torch ops (ms)", "with the kernel (ms)", "speed-up",
                              "same bits"], rows) + "\n")
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
