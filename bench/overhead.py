"""Trainer overhead and fidelity: launch/train.py on 1 rank with the `full` teacher against the plain
PyTorch loop (bench/plain_loop.py: same model, init, data, Adam, LR schedule, steps and [-1, 1] targets).
Runs alternate (A B A B ...) so machine drift hits both; the table gives medians, the median of the
pairwise time ratios, and the final PSNR of each.
    python bench/overhead.py --steps 200 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import ROOT, machine, markdown_table, resized, train
from plain_loop import fit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--signal", default="builtin:camera")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "overhead.md"))
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    signal = resized(args.signal, args.size, work) if args.size else args.signal
    ours, plain = [], []
    for i in range(args.repeats):
        r = train([f"run.dir={work / f'run{i}'}", f"signal.path={signal}", f"model.hidden={args.hidden}",
                   f"model.layers={args.layers}", f"train.steps={args.steps}", f"optim.lr={args.lr}",
                   "teacher.strategy=full", "train.eval_every=0", f"train.log_every={args.steps}",
                   "checkpoint.every=0", f"train.precision={args.precision}", "train.divergence_db=0"])
        ours.append((r["train_time_s"], r["psnr_db"]))
        q = fit(signal, args.hidden, args.layers, args.steps, args.lr, precision=args.precision)
        plain.append((q["train_s"], q["psnr_db"]))
        print(f"repeat {i}: trainer {ours[-1][0]:.2f} s {ours[-1][1]:.2f} dB, plain loop {plain[-1][0]:.2f} s "
              f"{plain[-1][1]:.2f} dB", flush=True)
    ratios = [a[0] / b[0] for a, b in zip(ours, plain)]

    def row(name, runs):
        times = [t for t, _ in runs]
        return [name, f"{statistics.median(times):.2f}", f"{min(times):.2f}", f"{max(times):.2f}",
                f"{statistics.median(d for _, d in runs):.2f}"]

    table = markdown_table(
        ["", "median train time (s)", "min", "max", "final PSNR (dB)"],
        [row("dist_int trainer (1 rank, full)", ours), row("plain PyTorch loop, [-1, 1] targets", plain),
         ["ratio trainer / plain (pairwise)", f"{statistics.median(ratios):.3f}", f"{min(ratios):.3f}",
          f"{max(ratios):.3f}",
          f"{statistics.median(a[1] - b[1] for a, b in zip(ours, plain)):+.2f} dB"]])
    command = (f"python bench/overhead.py --signal {args.signal} --size {args.size} --hidden {args.hidden} "
               f"--layers {args.layers} --steps {args.steps} --lr {args.lr} --precision {args.precision} "
               f"--repeats {args.repeats}")
    header = (f"machine: {machine()}\ncommand: {command}\n{args.steps} full-batch steps, SIREN "
              f"{args.layers}x{args.hidden}, {args.size}x{args.size}, {args.precision}; both with torch's "
              f"default threads")
    print(header + "\n\n" + table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(header + "\n\n" + table + "\n")


if __name__ == "__main__":
    main()
