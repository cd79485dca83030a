"""`python -m dist_int collect DIR`: one table of the run folders under DIR (e.g. an array job's runs)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from .rundir import RunDir, atomic_write, status_of

# The field's size sits next to the PSNR it buys (docs/fields.md, "Size beside fidelity").
COLUMNS = ["run", "signal", "field", "psnr_db", "field_bytes", "bits_per_sample", "ssim", "iou", "chamfer",
           "train_time_s", "steps", "status"]


def _row(run_dir: Path) -> dict:
    row = {c: "" for c in COLUMNS} | {"run": run_dir.name}
    run = RunDir(run_dir)
    try:
        import tomllib

        config = tomllib.loads(run.config.read_text())
        row["signal"], row["field"] = config["signal"]["path"], config["model"].get("kind", "siren")
    except (OSError, KeyError, ValueError):
        pass
    if run.summary.is_file():
        try:
            s = json.loads(run.summary.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            row["status"] = "damaged summary.json"  # one bad folder must not fail the whole table
            return row
        words = s.get("not_finite") or {}  # null values that were inf or nan (dist_int/jsonio.py)
        row.update({k: words.get(k, "") if s.get(k) is None else s[k] for k in COLUMNS[2:]})
        row["status"] = status_of(s)
        return row
    row["status"] = status_of(None)  # stopped, running or failed: its last checkpoint says how far it got
    try:
        tag = run.latest_tag()
        if tag is not None and run.checkpoint_meta(tag).is_file():
            meta = json.loads(run.checkpoint_meta(tag).read_text())
            row.update(steps=meta["step"], train_time_s=round(meta["shared"]["run"]["train_time_s"], 3))
            # Stopped by a signal, or trained to the end with its outputs never written (rerun: it only
            # finishes them).
            more = {"interrupted": "stopped", "complete": "trained"}.get(meta.get("status"))
            row["status"] += f" ({more})" if more else ""
    except (OSError, KeyError, ValueError, UnicodeDecodeError):
        pass
    return row


def collect(root: Path) -> list[dict]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    runs = sorted(p for p in root.iterdir() if RunDir(p).config.is_file())
    return [_row(p) for p in runs]


def to_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def collect_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m dist_int collect",
                                description="Gather the summary.json of every run folder under DIR into "
                                            "a CSV file (DIR/runs.csv) and print a Markdown table.")
    p.add_argument("dir")
    p.add_argument("--out", help="CSV file to write (default: DIR/runs.csv)")
    args = p.parse_args(argv)
    try:
        rows = collect(Path(args.dir))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not rows:
        print(f"error: {args.dir} holds no run folders (folders with a config.toml); give the folder that "
              f"holds the runs, e.g. an array job's RUN_ROOT. Nothing was written.", file=sys.stderr)
        return 2
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    out = Path(args.out) if args.out else Path(args.dir) / "runs.csv"
    try:
        atomic_write(out, buf.getvalue())
        written = f"table written to {out}"
    except OSError as e:  # a read-only folder (another user's runs, a finished project): the table still prints
        written = f"{out} not written ({e.strerror or e}; pass --out FILE to write the table elsewhere)"
    print(to_markdown(rows))
    done = sum(r["status"].startswith("complete") for r in rows)
    warned = sum(r["status"] == "complete-with-warnings" for r in rows)
    print(f"\n{len(rows)} run(s); {done} complete ({warned} with warnings); "
          f"{sum(r['status'].startswith('not finished') for r in rows)} not finished; {written}")
    if not written.startswith("table written"):
        print(f"warning: {written}", file=sys.stderr)
    return 0
