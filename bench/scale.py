"""Memory and communication against signal size: every rank's peak host RSS and the bytes each rank sends
per selection, for procedural images of several sizes on 1 and 2 ranks (CPU), mini-batch INT, a few
steps, render and export included.

    python bench/scale.py --sizes 512,1024,2048,4096 --nproc 1,2
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from common import ROOT, machine, markdown_table, train

sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="512,1024,2048,4096")
    p.add_argument("--nproc", default="1,2")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-points", type=int, default=65536,
                   help="points per mini-batch (num_batches = pixels / this, at most a chunk's points); "
                        "also the most points per forward/backward pass")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "scale.md"))
    args = p.parse_args()
    from dist_int.synth import synth_gigapixel

    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            store = synth_gigapixel(work / f"s{size}.zarr", size, chunk=256)
            for nproc in (int(n) for n in args.nproc.split(",")):
                run = work / f"run-{size}-{nproc}"
                batches = max(1, min(size * size // args.batch_points, 256 * 256))
                r = train([f"signal.path={store}", f"run.dir={run}", "model.hidden=32", "model.layers=3",
                           "teacher.strategy=int", f"teacher.num_batches={batches}",
                           f"train.max_points_per_pass={args.batch_points}",
                           f"train.steps={args.steps}", f"train.log_every={args.steps}", "train.eval_every=0",
                           "checkpoint.every=0", "train.probe_points=4096", "render.format=tiff"],
                          nproc if nproc > 1 else 0)
                owned = size * size / nproc
                sent = {m["select_bytes"] for m in r["metrics"] if m.get("selections")}
                rows.append([f"{size}^2", nproc, f"{owned / 1e6:.2f}",
                             ", ".join(f"{v:.0f}" for v in r["peak_rss_mb"]),
                             ", ".join(f"{v * 2**20 / owned:.1f}" for v in r["peak_rss_mb"]),
                             ", ".join(str(v) for v in sorted(sent)) or "0"])
                print(rows[-1], flush=True)
                shutil.rmtree(run, ignore_errors=True)
            shutil.rmtree(store, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown_table(["signal", "ranks", "M pixels per rank", "peak RSS per rank (MiB)",
                            "RSS bytes per owned pixel", "bytes sent per selection per rank"], rows)
    command = (f"python bench/scale.py --sizes {args.sizes} --nproc {args.nproc} --steps {args.steps} "
               f"--batch-points {args.batch_points}")
    header = (f"machine: {machine()}\ncommand: {command}\nprocedural RGB uint8 images (synth gigapixel, "
              f"256^2 chunks), SIREN 3x32, mini-batch INT with batches of about {args.batch_points} points "
              f"(all ranks) and passes of at most that many, {args.steps} steps, render, tiled-TIFF export "
              f"and SSIM included")
    text = header + "\n\n" + table + "\n"
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
