"""The same run on 1 and on N ranks (same seed, same config): final PSNR must agree within 0.05 dB, since
the teaching set never depends on the number of ranks. Prints a table with the training times too.
    python bench/ranks.py --config configs/demo.toml --nproc 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import ROOT, machine, markdown_table, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.toml"))
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for both runs")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "ranks.md"))
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ranks-"))
    try:
        runs = {n: train([f"--config={args.config}", f"run.dir={work / str(n)}", "checkpoint.every=0",
                          *args.extra], nproc=n) for n in (1, args.nproc)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    one = runs[1]
    rows = [[n, r["strategy"], f"{r['psnr_db']:.4f}", f"{r['psnr_db'] - one['psnr_db']:+.4f}",
             f"{r['train_time_s']:.1f}"] for n, r in runs.items()]
    table = markdown_table(["ranks", "teacher", "final PSNR (dB)", "vs 1 rank (dB)", "train time (s)"], rows)
    header = (f"machine: {machine()}\ncommand: python bench/ranks.py --config {args.config} --nproc {args.nproc}"
              + (f" --extra {' '.join(args.extra)}" if args.extra else ""))
    print(header + "\n\n" + table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(header + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
