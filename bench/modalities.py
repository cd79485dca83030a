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
from teachers import parse_strategy

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
    p.add_argument("--strategies", default="full,int:interval_schedule=incremental,uniform,soft",
                   help="dist_int teachers, full first; NAME or NAME:key=value,... (teacher.* settings)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "modalities.md"))
    args = p.parse_args()
    strategies = args.strategies.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-modalities-"))
    fidelity, teachers = [], []
    try:
        for kind in args.kinds.split(","):
            make, extra, s = SETTINGS[kind]
            signal = make(work)
            plain = fit(signal, s["hidden"], s["layers"], s["steps"], s["lr"], w0_first=s["w0_first"],
                        points=s.get("points", 100000))
            runs = {}
            for strategy in strategies:
                label, overrides = parse_strategy(strategy)
                runs[label] = train([f"signal.path={signal}", f"run.dir={work / (kind + str(len(runs)))}", *extra,
                                        f"model.hidden={s['hidden']}", f"model.layers={s['layers']}",
                                        f"model.w0_first={s['w0_first']}", f"optim.lr={s['lr']}",
                                        f"train.steps={s['steps']}", *overrides,
                                        "train.eval_every=0", "checkpoint.every=0", f"train.log_every={s['steps']}"])
            full = runs[strategies[0]]
            metric = next((k for k in ("iou", "snr_db", "ssim") if k in full), None)
            setting = f"{s['layers']}x{s['hidden']}, {s['steps']} steps, lr {s['lr']:g}, w0_first {s['w0_first']:g}"
            fidelity.append([kind, setting, f"{plain['psnr_db']:.2f} / {plain['train_s']:.1f}",
                             f"{full['psnr_db']:.2f} / {full['train_time_s']:.1f}",
                             f"{full['psnr_db'] - plain['psnr_db']:+.2f}",
                             f"{metric} {plain[metric]:.5f} / {full[metric]:.5f}" if metric in plain else "-"])
            for strategy, r in runs.items():
                teachers.append([kind, strategy, f"{r['psnr_db']:.2f}", f"{r[metric]}" if metric else "-",
                                 f"{r['train_time_s']:.1f}", f"{r['train_time_s'] / full['train_time_s']:.2f}",
                                 f"{r.get('select_fraction', 0):.2f}"])
                print(teachers[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table1 = markdown_table(["kind", "setting", "plain loop full: PSNR (dB) / s", "dist_int full: PSNR / s",
                             "full - plain (dB)", "plain / dist_int extra metric"], fidelity)
    table2 = markdown_table(["kind", "teacher", "final PSNR (dB)", "extra metric (IoU, SNR dB or SSIM)",
                             "train time (s)", "time / full", "selection share of time"], teachers)
    text = (f"machine: {machine()}\ncommand: python bench/modalities.py --kinds {args.kinds} --strategies "
            f"{args.strategies}\n1 process each; signals from `dist_int synth` (speech 1 s at 16 kHz, volume 40^3 "
            f"uint16, video 16x48x48, the washer mesh with 20,000 table points) and scikit-image's cameraman at "
            f"128^2; times are training time only\n\n## dist_int against a plain PyTorch loop (full batch)\n\n"
            f"{table1}\n\n## Teachers on every kind\n\n{table2}\n")
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
