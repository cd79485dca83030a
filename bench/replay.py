"""Teachers on the hash field at equal training time: `full` against the replay teacher (and variants).

Every run gets the same training time (a 20-step probe of its config sets the steps; a run more than 15 %
off is run again with its steps rescaled, as bench/fields.py does). Single-rank kinds run two at a time,
each pinned to its own core with one thread; two-rank kinds run alone. The table reads, from each run's
own evaluation curve: its final PSNR, the difference to `full` in the same sweep, and the training time at
which it first reached `full`'s final PSNR, as a fraction of `full`'s time.

    python bench/replay.py --kinds image2048 --budget 240            # 1 rank, a 2048^2 photo mosaic
    python bench/replay.py --kinds gigapixel --budget 600            # 2 ranks, 8192^2 (configs/gigapixel.toml)
    python bench/replay.py --kinds audio,video,volume --budget 120
    python bench/replay.py --kinds image2048 --variants full,shipped,replay:batch_points=131072+ratio=0.25

A variant is `full` (configs/hash.toml with teacher.strategy=full and its 2^16-point batches: the teacher
the configs shipped before), `shipped` (the kind's config as it is), or a strategy with teacher.* settings
(`replay:batch_points=65536+ratio=0.5`), always on the kind's config.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import ROOT, machine, markdown_table, mosaic, train
from fields import GIGAPIXEL_CPU, _synth, curve
from teachers import time_to

sys.path.insert(0, str(ROOT))

# Kind -> how its signal is made, its config (with the CPU overrides the benchmark machine needs) and ranks.
KINDS = {
    "image2048": dict(make=lambda d: mosaic(2048, d), config=["--config=configs/hash.toml", "signal.chunk=256"],
                      nproc=0),
    "gigapixel": dict(make=lambda d: _synth("gigapixel", d / "giga.zarr", "--size", "8192"),
                      config=["--config=configs/gigapixel.toml", *GIGAPIXEL_CPU], nproc=2),
    "audio": dict(make=lambda d: _synth("speech", d / "speech.wav", "--seconds", "10"),
                  config=["--config=configs/hash.toml", "signal.chunk=16384"], nproc=0),
    "volume": dict(make=lambda d: _synth("volume", d / "volume.tif", "--size", "96"),
                   config=["--config=configs/hash.toml", "signal.chunk=32"], nproc=0),
    "video": dict(make=lambda d: _synth("video", d / "clip.mp4", "--frames", "32", "--size", "128"),
                  config=["--config=configs/hash.toml", "signal.chunk=[8,64,64]"], nproc=0),
}
# `full` as the hash configs shipped it: every point of 2^16-point batches.
FULL = ["teacher.strategy=full", "teacher.batch_points=65536"]
TOLERANCE = 0.15


def variant_args(spec: str) -> list[str]:
    if spec == "full":
        return FULL
    if spec == "shipped":
        return []
    strategy, _, settings = spec.partition(":")
    return [f"teacher.strategy={strategy}", *(f"teacher.{kv}" for kv in settings.split("+") if kv)]


def timed(args: list[str], nproc: int, budget: float, run_dir: Path, core: int | None) -> dict:
    """A run of about `budget` seconds of training (the probe-and-rescale of bench/fields.py)."""
    prefix = ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else None

    def run(extra):
        shutil.rmtree(run_dir, ignore_errors=True)
        return train([*args, *extra, f"run.dir={run_dir}", "checkpoint.every=0"], nproc, prefix=prefix)

    probe = run(["train.steps=20", "train.eval_every=0", "train.log_every=20"])
    steps = max(20, int(20 * budget / max(probe["train_time_s"], 1e-3)))
    for _ in range(3):
        every = max(1, steps // 12)
        result = run([f"train.steps={steps}", f"train.eval_every={every}", f"train.log_every={every}"])
        if abs(result["train_time_s"] - budget) <= TOLERANCE * budget:
            break
        steps = max(20, int(steps * budget / result["train_time_s"]))
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default="image2048")
    p.add_argument("--variants", default="full,shipped")
    p.add_argument("--budget", type=float, default=240.0, help="seconds of training per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "replay"))
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-replay-"))
    work.mkdir(parents=True, exist_ok=True)
    variants = args.variants.split(",")
    rows, raw = [], {}
    for kind in args.kinds.split(","):
        spec = KINDS[kind]
        folder = work / kind
        folder.mkdir(exist_ok=True)
        signal = spec["make"](folder)
        base = [*spec["config"], f"signal.path={signal}", f"seed={args.seed}"]
        results: dict[str, dict] = {}

        def go(name: str, core: int | None) -> None:
            r = timed([*base, *variant_args(name)], spec["nproc"], args.budget, folder / f"run-{len(results)}-"
                      f"{name.replace(':', '_').replace('+', '_').replace('=', '')}", core)
            results[name] = r
            print(f"{kind} {name}: {r['psnr_db']:.2f} dB in {r['train_time_s']:.0f} s, {r['steps']} steps", flush=True)

        if spec["nproc"]:
            for name in variants:
                go(name, None)
        else:  # two single-thread runs at a time, one core each
            for i in range(0, len(variants), 2):
                threads = [threading.Thread(target=go, args=(name, core))
                           for core, name in enumerate(variants[i:i + 2])]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
        full = results.get("full")
        for name in variants:
            r = results[name]
            reach = time_to(curve(r), full["psnr_db"]) if full else None
            rows.append([kind, max(spec["nproc"], 1), name, " ".join(variant_args(name)) or "(as shipped)",
                         f"{r['psnr_db']:.2f}", "-" if not full else f"{r['psnr_db'] - full['psnr_db']:+.2f}",
                         f"{r['train_time_s']:.0f}", r["steps"],
                         "-" if not full else ("not reached" if reach is None else
                                               f"{reach:.0f} ({reach / full['train_time_s']:.2f}x)"),
                         f"{r['select_fraction']:.3f}", "/".join(f"{v:.0f}" for v in r["peak_rss_mb"])])
            raw[f"{kind} {name}"] = {"psnr_db": r["psnr_db"], "train_time_s": r["train_time_s"],
                                     "steps": r["steps"], "curve": curve(r)}
    table = markdown_table(["kind", "ranks", "variant", "overrides", "final PSNR (dB)", "vs full (dB)",
                            "train time (s)", "steps", "time to full's final PSNR", "selection share",
                            "peak RSS per rank (MiB)"], rows)
    text = (f"date: {time.strftime('%Y-%m-%d')}\nmachine: {machine()}\ncommand: python bench/replay.py --kinds {args.kinds} --variants "
            f"{args.variants} --budget {args.budget:g}\nEqual training time per run ({args.budget:g} s); "
            f"single-rank runs two at a time, one core and one thread each.\n\n{table}\n")
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".md"), "a") as f:
        f.write(text + "\n")
    merged = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else {}
    merged.update(raw)
    out.with_suffix(".json").write_text(json.dumps(merged, indent=1))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
