"""Teachers side by side: full, uniform, int, mix and soft on the same image, model and steps.

Prints training time, final PSNR and time to reach a target PSNR, writes a PSNR-versus-time plot.
    python bench/teachers.py                       # CPU-sized default (cameraman, 4x64 SIREN)
    python bench/teachers.py --config configs/image.toml --steps 5000 --eval-every 100   # paper setting (GPU)
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from common import ROOT, machine, markdown_table, resized, train
from plain_loop import fit


def time_to(metrics: list[dict], target: float) -> float | None:
    for m in metrics:
        if m.get("psnr_db", -1) >= target:
            return m["train_time_s"]
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="base config (default: built-in defaults + flags below)")
    p.add_argument("--signal", default="builtin:camera")
    p.add_argument("--size", type=int, default=256, help="resize the signal to SIZE x SIZE first (0: keep)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--nproc", type=int, default=0, help="torchrun ranks (0: one plain process)")
    p.add_argument("--target", type=float, default=None, help="target PSNR (default: full's final - 1 dB)")
    p.add_argument("--strategies", default="full,uniform,int,mix,soft")
    p.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every run")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "teachers"))
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-teachers-"))
    signal = resized(args.signal, args.size, work) if args.size else args.signal
    base = ([f"--config={args.config}"] if args.config else []) + [
        f"signal.path={signal}", f"model.hidden={args.hidden}", f"model.layers={args.layers}",
        f"train.steps={args.steps}", f"train.eval_every={args.eval_every}", f"optim.lr={args.lr}",
        f"train.log_every={args.eval_every}", "checkpoint.every=0", *args.extra]
    results = {}
    try:
        for strategy in args.strategies.split(","):
            print(f"running {strategy} ...", flush=True)
            results[strategy] = train(base + [f"run.dir={work / strategy}", f"teacher.strategy={strategy}"],
                                      args.nproc)
        # The honest baseline: a plain single-process PyTorch loop, full batch, [-1, 1] targets.
        print("running the plain PyTorch loop ...", flush=True)
        plain = fit(signal, args.hidden, args.layers, args.steps, args.lr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ref = results.get("full", next(iter(results.values())))
    target = args.target if args.target is not None else round(ref["psnr_db"] - 1.0, 1)
    rows = []
    for name, r in results.items():
        tt = time_to(r["metrics"], target)
        rows.append([name, f"{r['train_time_s']:.1f}", f"{r['train_time_s'] / ref['train_time_s']:.2f}",
                     f"{r['psnr_db']:.2f}", f"{r['ssim']:.4f}" if r["ssim"] is not None else "-",
                     "not reached" if tt is None else f"{tt:.1f}"])
    rows.append(["plain PyTorch loop (full)", f"{plain['train_s']:.1f}",
                 f"{plain['train_s'] / ref['train_time_s']:.2f}", f"{plain['psnr_db']:.2f}", "-", "-"])
    table = markdown_table(["teacher", "train time (s)", "time / full", "final PSNR (dB)", "SSIM",
                            f"time to {target} dB (s)"], rows)
    command = "python bench/teachers.py " + " ".join(
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("out", "extra") and v)
    size = f" at {args.size}x{args.size}" if args.size else ""
    header = (f"machine: {machine()}\ncommand: {command}\nsignal {args.signal}{size}, SIREN {args.layers}x"
              f"{args.hidden}, {args.steps} steps, ranks: {args.nproc or 1}; PSNR is final, not best")
    print(header + "\n\n" + table)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(header + "\n\n" + table + "\n")
    out.with_suffix(".json").write_text(json.dumps(
        {k: {kk: vv for kk, vv in v.items()} for k, v in results.items()}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        pts = [(m["train_time_s"], m["psnr_db"]) for m in r["metrics"] if "psnr_db" in m]
        ax.plot(*zip(*pts), label=name, marker=".")
    ax.axhline(target, color="gray", ls=":", lw=1)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{args.signal}{size}, SIREN {args.layers}x{args.hidden}, {args.steps} steps")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
