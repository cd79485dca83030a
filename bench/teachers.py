"""Teachers side by side over several images and seeds: which strategy wins on time-to-quality.

Every image is fitted by every strategy at the same SIREN, steps, learning rate and seed, one run after
the other (timings are ratios measured side by side). Per image and seed it reads, from the runs' own
metrics.jsonl: the final PSNR, the training time, the time to reach `full`'s final PSNR, and the PSNR at
equal time (every curve read at the time the fastest run finished). It prints per-image and mean tables
and draws PSNR-versus-time plots.

    # tuning: pick each strategy's parameter on the images the project tuned on
    python bench/teachers.py --images camera,astronaut --seeds 0 \
        --strategies full,uniform,int,mix:mix_topk=0.3,mix:mix_topk=0.5,soft:temperature=0.5,soft,soft:temperature=2 \
        --out bench/results/teachers_tuning
    # held out: images never used for tuning, several seeds
    python bench/teachers.py --images coffee,brick,text,hubble_deep_field --seeds 0,1 --out bench/results/teachers
    # the paper's 512^2 setting on a GPU
    python bench/teachers.py --images camera,astronaut --size 512 --hidden 256 --layers 6 --steps 5000 --eval-every 100

A strategy is a teacher.strategy name, optionally with teacher.* settings: `soft:temperature=0.5`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

from common import ROOT, machine, markdown_table, resized, train


def curve(metrics: list[dict]) -> list[tuple[float, float]]:
    return [(m["train_time_s"], m["psnr_db"]) for m in metrics if "psnr_db" in m]


def time_to(points: list[tuple[float, float]], target: float) -> float | None:
    """The training time at which the PSNR curve first reaches `target` (linear between evaluations)."""
    prev = (0.0, -float("inf"))
    for t, p in points:
        if p >= target:
            if prev[1] == -float("inf"):
                return t
            return prev[0] + (t - prev[0]) * (target - prev[1]) / (p - prev[1])
        prev = (t, p)
    return None


def psnr_at(points: list[tuple[float, float]], when: float) -> float:
    """The PSNR reached by training time `when` (linear between evaluations; the last one after the end)."""
    prev = None
    for t, p in points:
        if t >= when:
            if prev is None:
                return p
            return prev[1] + (p - prev[1]) * (when - prev[0]) / max(t - prev[0], 1e-12)
        prev = (t, p)
    return points[-1][1]


def parse_strategy(spec: str) -> tuple[str, list[str]]:
    """'soft:temperature=0.5' -> ('soft T=0.5'-like label, ['teacher.strategy=soft', 'teacher.temperature=0.5'])."""
    name, _, params = spec.partition(":")
    overrides = [f"teacher.strategy={name}"] + [f"teacher.{kv}" for kv in params.split(",") if kv]
    return spec, overrides


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="base config (default: built-in defaults + flags below)")
    p.add_argument("--images", default="coffee,brick,text,hubble_deep_field",
                   help="scikit-image sample names (builtin:NAME) or image files, comma-separated")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--size", type=int, default=192, help="resize every image to SIZE x SIZE first (0: keep)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--nproc", type=int, default=0, help="torchrun ranks (0: one plain process)")
    p.add_argument("--strategies", default="full,uniform,int,mix,soft")
    p.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every run")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "teachers"))
    args = p.parse_args()

    strategies = [parse_strategy(s) for s in args.strategies.split(",")]
    images = args.images.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-teachers-"))
    results: dict[str, dict[int, dict[str, dict]]] = {}
    try:
        for image in images:
            source = image if "/" in image or "." in image else f"builtin:{image}"
            (work / image).mkdir()
            signal = resized(source, args.size, work / image) if args.size else source
            results[image] = {}
            for seed in seeds:
                results[image][seed] = {}
                base = ([f"--config={args.config}"] if args.config else []) + [
                    f"signal.path={signal}", f"model.hidden={args.hidden}", f"model.layers={args.layers}",
                    f"train.steps={args.steps}", f"train.eval_every={args.eval_every}", f"optim.lr={args.lr}",
                    f"train.log_every={args.eval_every}", "checkpoint.every=0", f"seed={seed}", *args.extra]
                for label, overrides in strategies:
                    print(f"{image} seed {seed}: {label} ...", flush=True)
                    run_dir = work / image / f"{seed}-{label.replace(':', '_').replace('=', '')}"
                    r = train(base + [f"run.dir={run_dir}", *overrides], args.nproc)
                    results[image][seed][label] = {
                        "psnr_db": r["psnr_db"], "train_time_s": r["train_time_s"],
                        "select_fraction": r.get("select_fraction"), "curve": curve(r["metrics"])}
                    shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # Per image and seed: each strategy against full (time, time to full's PSNR) and uniform (PSNR).
    labels = [label for label, _ in strategies]
    rows, stats = [], {label: {k: [] for k in ("psnr", "vs_uniform", "time", "reach", "equal")} for label in labels}
    for image, by_seed in results.items():
        for seed, runs in by_seed.items():
            ref = runs.get("full", next(iter(runs.values())))
            uniform = runs.get("uniform")
            t_equal = min(r["train_time_s"] for r in runs.values())
            for label in labels:
                r = runs[label]
                reach = time_to(r["curve"], ref["psnr_db"])
                equal = psnr_at(r["curve"], t_equal)
                s = stats[label]
                s["psnr"].append(r["psnr_db"])
                s["time"].append(r["train_time_s"] / ref["train_time_s"])
                s["reach"].append(None if reach is None else reach / ref["train_time_s"])
                s["equal"].append(equal)
                if uniform is not None:
                    s["vs_uniform"].append(r["psnr_db"] - uniform["psnr_db"])
                rows.append([image, seed, label, f"{r['psnr_db']:.2f}",
                             f"{r['psnr_db'] - uniform['psnr_db']:+.2f}" if uniform else "-",
                             f"{r['train_time_s']:.1f}", f"{r['train_time_s'] / ref['train_time_s']:.2f}",
                             "not reached" if reach is None else f"{reach / ref['train_time_s']:.2f}",
                             f"{equal:.2f} @ {t_equal:.1f} s",
                             "-" if r["select_fraction"] is None else f"{r['select_fraction']:.2f}"])
    per_run = markdown_table(["image", "seed", "teacher", "final PSNR (dB)", "vs uniform (dB)", "train time (s)",
                              "time / full", "time to full's PSNR / full's time", "PSNR at equal time",
                              "selection share of time"], rows)
    mean_rows = []
    for label in labels:
        s = stats[label]
        reached = [x for x in s["reach"] if x is not None]
        worst = min(s["vs_uniform"]) if s["vs_uniform"] else None
        mean_rows.append([label, f"{statistics.mean(s['psnr']):.2f}",
                          f"{statistics.mean(s['vs_uniform']):+.2f}" if s["vs_uniform"] else "-",
                          f"{worst:+.2f}" if worst is not None else "-",
                          f"{statistics.mean(s['time']):.2f}",
                          f"{len(reached)}/{len(s['reach'])}" + (f", median {statistics.median(reached):.2f}"
                                                                 if reached else ""),
                          f"{statistics.mean(s['equal']):.2f}"])
    mean = markdown_table(["teacher", "mean final PSNR (dB)", "mean vs uniform (dB)", "worst vs uniform (dB)",
                           "mean time / full", "reached full's PSNR (runs, median time / full)",
                           "mean PSNR at equal time (dB)"], mean_rows)
    command = "python bench/teachers.py " + " ".join(
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("out", "extra") and v)
    header = (f"machine: {machine()}\ncommand: {command}\nimages {', '.join(images)} at {args.size}x{args.size}, "
              f"seeds {args.seeds}, SIREN {args.layers}x{args.hidden}, {args.steps} steps, lr {args.lr}, ranks: "
              f"{args.nproc or 1}; PSNR is final, not best; equal time = when the fastest run of that image "
              f"and seed finished")
    text = f"{header}\n\n## Mean over images and seeds\n\n{mean}\n\n## Every run\n\n{per_run}\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    plot(results, labels, seeds[0], out.with_suffix(".png"), args)
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.png')}")


def plot(results: dict, labels: list[str], seed: int, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for ax, (image, by_seed) in zip(axes[0], results.items()):
        runs = by_seed[seed]
        for label in labels:
            ax.plot(*zip(*runs[label]["curve"]), label=label, lw=1.2)
        ax.axhline(runs.get("full", runs[labels[0]])["psnr_db"], color="gray", ls=":", lw=1)
        ax.set_title(f"{image} (seed {seed})")
        ax.set_xlabel("training time (s)")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
        finals = [runs[label]["psnr_db"] for label in labels]
        ax.set_ylim(min(finals) - 6, max(finals) + 1)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"SIREN {args.layers}x{args.hidden}, {args.steps} steps, {args.size}x{args.size}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
