"""`python -m dist_int report RUN [RUN ...]`: one HTML page with PNGs beside it, no server or account.

The page has the runs' table, PSNR and loss against time and steps on shared axes, each run's
reconstruction next to its target with an error map (or its modality's analogue), and the teaching-set
snapshots the run recorded (`train.snapshot_every`). Pictures are drawn by figures.py.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
import tomllib
import zipfile
from pathlib import Path

from ..errors import DistIntError
from ..rundir import RunDir, atomic_write, status_of

SUMMARY_KEYS = [("field", "field"), ("strategy", "teacher"), ("steps", "steps"), ("psnr_db", "PSNR (dB)"),
                # What the fidelity costs, next to it (docs/fields.md, "Size beside fidelity").
                ("field_bytes", "field size (bytes)"), ("bits_per_sample", "bits per sample"), ("ssim", "SSIM"),
                ("snr_db", "SNR (dB)"), ("iou", "IoU"), ("chamfer", "Chamfer"), ("train_time_s", "train time (s)"),
                ("select_fraction", "selection share"), ("world_size", "ranks"), ("status", "status")]


class Run:
    """What the report reads of one run folder."""

    def __init__(self, path: Path, index: int):
        run = RunDir(path)
        if not run.config.is_file():
            raise DistIntError(f"{path} is not a run folder (it has no {RunDir.CONFIG}); give folders that "
                               f"launch/train.py wrote, e.g. runs/demo")
        self.path, self.index = path, index
        self.config = tomllib.loads(run.config.read_text())
        self.strategy = self.config["teacher"]["strategy"]
        self.label = path.name if path.name else str(path)
        self.metrics = []
        if run.metrics.is_file():
            for line in run.metrics.read_text().splitlines():
                try:
                    self.metrics.append(json.loads(line))
                except ValueError:
                    continue
        self.summary = json.loads(run.summary.read_text()) if run.summary.is_file() else None
        self.reconstruction = run.reconstruction_zarr if run.reconstruction_zarr.exists() else None
        self.run = run
        from ..signal import SignalStore, signal_store_path

        store_path = signal_store_path(self.config["signal"]["path"], run.signal_store)
        self.store = SignalStore(store_path, self.config["signal"].get("value_range", "data")) \
            if store_path.exists() else None
        self.slug = f"run{index}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", self.label)[:40]

    def snapshots(self, most: int) -> tuple[list[tuple[int, dict]], list[int]]:
        """At most `most` complete snapshots, evenly spaced over those recorded (only those are read), and
        the steps whose snapshot lacks some rank's file (a run stopped while writing them)."""
        from ..teacher.snapshot import read_snapshot

        steps = [s for s in self.run.snapshot_steps() if any(self.run.snapshot(s).glob("rank-*.npz"))]
        if len(steps) > most:
            steps = [steps[i] for i in sorted(set(round(j * (len(steps) - 1) / (most - 1)) for j in range(most)))]
        out, incomplete = [], []
        for step in steps:
            snap = read_snapshot(self.run.snapshot(step))
            (out.append((step, snap)) if snap["complete"] else incomplete.append(step))
        return out, incomplete


def _row(run: Run) -> list[str]:
    s = run.summary or {}
    cells = [html.escape(str(run.path))]
    for key, _ in SUMMARY_KEYS:
        value = s.get(key, "")
        if value is None:  # null: a non-finite number, named under not_finite (dist_int/jsonio.py)
            value = (s.get("not_finite") or {}).get(key, "")
        if key == "strategy" and not value:
            value = run.strategy
        if key == "field" and not value:
            value = run.config["model"].get("kind", "siren")
        if key == "status":
            value = status_of(run.summary) + ("" if run.summary else " (no summary.json)")
        cells.append(html.escape(str(value)))
    return cells


def write_report(runs: list[Run], out: Path, progress=print) -> Path:
    from . import figures

    out.mkdir(parents=True, exist_ok=True)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>dist_int report</title><style>"
             "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
             "img{max-width:100%}h2{margin-top:2em}.note{color:#666}</style></head><body>",
             "<h1>dist_int report</h1>", "<table><tr><th>run</th>" +
             "".join(f"<th>{label}</th>" for _, label in SUMMARY_KEYS) + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{c}</td>" for c in _row(r)) + "</tr>" for r in runs]
    parts.append("</table>")
    progress("drawing curves ...")
    figures.curves(runs, out / "curves.png")
    parts.append("<h2>Training curves</h2><img src='curves.png' alt='PSNR and loss'>")
    for run in runs:
        parts.append(f"<h2>{html.escape(run.label)}</h2><p class='note'>{html.escape(str(run.path))}: "
                     f"{html.escape(str(run.config['signal']['path']))}, teacher {html.escape(run.strategy)}</p>")
        for note in (run.summary or {}).get("warnings", []):  # an export or metric that failed after training
            parts.append(f"<p class='note'>warning: {html.escape(str(note))}</p>")
        if run.store is None:
            parts.append("<p class='note'>The signal store is gone; no pictures of the signal.</p>")
        elif run.reconstruction is None:
            parts.append("<p class='note'>No reconstruction yet (the run has not finished).</p>")
        else:
            progress(f"drawing {run.label}: reconstruction ...")
            name = f"{run.slug}-signal.png"
            if figures.signal_figure(run, out / name):
                parts.append(f"<img src='{name}' alt='target, reconstruction and error'>")
        snaps, incomplete = run.snapshots(figures.SNAPSHOT_PANELS)
        if incomplete:
            parts.append(f"<p class='note'>Snapshots at steps {', '.join(map(str, incomplete))} lack some ranks' "
                         f"files (the run stopped while writing them); not drawn.</p>")
        if snaps:
            progress(f"drawing {run.label}: {len(snaps)} teaching-set snapshot(s) ...")
            name = f"{run.slug}-teaching.png"
            figures.snapshots_figure(run, snaps, out / name)
            parts.append(f"<h3>Teaching set</h3><img src='{name}' alt='teaching-set snapshots'>")
        else:
            parts.append("<p class='note'>No teaching-set snapshots (train with train.snapshot_every=N to "
                         "record them).</p>")
    parts.append("</body></html>")
    page = out / "report.html"
    atomic_write(page, "\n".join(parts) + "\n")
    return page


def report_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_int report",
                                     description="Write report.html (and its PNGs) for one or more run folders: "
                                                 "curves on shared axes, reconstructions, error maps and "
                                                 "teaching-set snapshots.")
    parser.add_argument("runs", nargs="+", help="run folders (run.dir of launch/train.py)")
    parser.add_argument("--out", default=None,
                        help="folder for report.html and its PNGs (default: RUN/report for one run, report/ in the "
                             "folder that holds them all for several)")
    args = parser.parse_args(argv)
    try:
        runs = [Run(Path(p), i) for i, p in enumerate(args.runs)]
        out = Path(args.out) if args.out else (runs[0].path / "report" if len(runs) == 1 else
                                               Path(os.path.commonpath([r.path.resolve() for r in runs])) / "report")
        page = write_report(runs, out, progress=lambda text: print(text, file=sys.stderr, flush=True))
    except DistIntError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.strerror or e} ({getattr(e, 'filename', '')}): check the run folders and --out",
              file=sys.stderr)
        return 2
    except (ValueError, KeyError, zipfile.BadZipFile) as e:  # a damaged summary, config or snapshot file
        print(f"error: a file in the run folders is damaged or not dist_int's ({type(e).__name__}: {e}); "
              f"remove it or leave that run out", file=sys.stderr)
        return 2
    print(f"wrote {page}")
    return 0
