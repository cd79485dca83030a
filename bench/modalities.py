"""Every signal kind against a plain single-file PyTorch SIREN fit of the same data and settings:
final PSNR (and SNR / SSIM where the kind has them) and training time of dist_int `full`, dist_int `int`
and the plain loop (`full`), 1 process each, on signals `dist_int synth` makes.

    python bench/modalities.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from common import ROOT, machine, markdown_table, train
from plain_loop import fit

sys.path.insert(0, str(ROOT))

# kind: (signal maker, dist_int overrides, plain-loop settings)
SETTINGS = {
    "image": (lambda d: "builtin:camera@128", ["signal.chunk=32"],
              dict(hidden=64, layers=4, steps=300, lr=1e-3, w0_first=30.0)),
    "audio": (lambda d: str(__import__("dist_int.synth").synth.synth_speech(d / "speech.wav", 1.0)),
              ["signal.chunk=2000"], dict(hidden=128, layers=5, steps=500, lr=1e-4, w0_first=3000.0)),
    "volume": (lambda d: str(__import__("dist_int.synth").synth.synth_volume(d / "vol.tif", 40)),
               ["signal.chunk=20"], dict(hidden=64, layers=4, steps=300, lr=1e-3, w0_first=30.0)),
    "video": (lambda d: str(__import__("dist_int.synth").synth.synth_video(d / "clip.mp4", 16, 48)),
              ["signal.chunk=[8,24,24]"], dict(hidden=64, layers=4, steps=300, lr=1e-3, w0_first=30.0)),
    "shape": (lambda d: str(__import__("dist_int.synth").synth.synth_shape(d / "washer.ply")),
              ["signal.chunk=2000", "signal.points=20000"],
              dict(hidden=64, layers=4, steps=300, lr=1e-3, w0_first=30.0, points=20000)),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", default="image,audio,volume,video,shape")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "modalities.md"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-modalities-"))
    rows = []
    try:
        for kind in args.kinds.split(","):
            make, extra, s = SETTINGS[kind]
            signal = make(work)
            plain = fit(signal, s["hidden"], s["layers"], s["steps"], s["lr"], w0_first=s["w0_first"],
                        points=s.get("points", 100000))
            runs = {}
            for strategy in ("full", "int"):
                runs[strategy] = train([f"signal.path={signal}", f"run.dir={work / (kind + strategy)}", *extra,
                                        f"model.hidden={s['hidden']}", f"model.layers={s['layers']}",
                                        f"model.w0_first={s['w0_first']}", f"optim.lr={s['lr']}",
                                        f"train.steps={s['steps']}", f"teacher.strategy={strategy}",
                                        "train.eval_every=0", "checkpoint.every=0", f"train.log_every={s['steps']}"])
            full, intr = runs["full"], runs["int"]
            more = " / ".join(f"{k} {full[k]} / {intr[k]}" for k in ("snr_db", "ssim", "iou") if k in full)
            if "iou" in plain:
                more += f" (plain loop IoU {plain['iou']:.5f})"
            rows.append([kind, f"{s['layers']}x{s['hidden']}, {s['steps']} steps, lr {s['lr']:g}, w0_first "
                               f"{s['w0_first']:g}", f"{plain['psnr_db']:.2f} / {plain['train_s']:.1f}",
                         f"{full['psnr_db']:.2f} / {full['train_time_s']:.1f}",
                         f"{intr['psnr_db']:.2f} / {intr['train_time_s']:.1f}",
                         f"{full['psnr_db'] - plain['psnr_db']:+.2f}",
                         f"{intr['train_time_s'] / full['train_time_s']:.2f}", more or "-"])
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = markdown_table(["kind", "setting", "plain loop full: PSNR (dB) / s", "dist_int full: PSNR / s",
                            "dist_int int: PSNR / s", "full - plain (dB)", "int time / full time",
                            "full / int extra metrics"], rows)
    text = (f"machine: {machine()}\ncommand: python bench/modalities.py --kinds {args.kinds}\n1 process each; "
            f"signals from `dist_int synth` (speech 1 s at 16 kHz, volume 40^3 uint16, video 16x48x48) and "
            f"scikit-image's cameraman at 128^2; times are training time only\n\n{table}\n")
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
