"""Command line: `dist-int` / `python -m dist_int {train,ingest,collect,synth,report}`; launch/train.py calls
`train_main`."""

from __future__ import annotations

import argparse
import os
import sys

from .config import load_config
from .errors import ConfigError, DistIntError, PeerFailed, RunDirError, error_line, user_error


def _fail(e: Exception) -> int:
    """One `error:` line, exit code 2. An error the ranks agreed on was printed by the rank that failed
    first, before any rank left (engine/agree.py: `reported`); errors every rank raises alike (a bad
    config, a refused run folder) are printed once, by rank 0; a rank's own error by that rank."""
    if getattr(e, "reported", False):
        return 2
    rank = os.environ.get("RANK", "0")
    if rank == "0":
        print(error_line(e), file=sys.stderr, flush=True)
    elif not isinstance(e, (PeerFailed, ConfigError, RunDirError)):
        print(f"error: [rank {rank}] {user_error(e) or e}", file=sys.stderr, flush=True)
    return 2


def train_main(argv: list[str], prog: str = "python -m dist_int train") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fit a neural field (a SIREN or a hash grid) to a signal with Implicit Neural Teaching, on "
                    "one or many ranks.",
        epilog="Overrides are dotted keys, e.g. train.steps=2000 teacher.strategy=uniform run.dir=runs/x. "
               "Several ranks: --nproc-per-node N, or torchrun --nproc_per_node=N launch/train.py ...")
    parser.add_argument("--config", help="TOML config file (configs/*.toml)")
    parser.add_argument("--nproc-per-node", type=int, default=0, metavar="N",
                        help="start N ranks on this machine (torchrun, run by this command)")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    if args.nproc_per_node < 0:
        parser.error("--nproc-per-node must be 1 or more (0: one process, no torchrun)")
    if args.nproc_per_node > 0 and "RANK" not in os.environ:
        from .torchrun import launch

        return launch(args.nproc_per_node, [*(["--config", args.config] if args.config else []), *args.overrides])
    try:
        cfg = load_config(args.config, args.overrides)
        from .engine.trainer import train

        return train(cfg)
    except (DistIntError, OSError) as e:
        return _fail(e)


def ingest_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_int ingest",
                                     description="Ingest a signal into a Zarr v3 store: an image (PNG/JPEG/TIFF/"
                                                 "BigTIFF/OME-TIFF/Zarr), audio (WAV/FLAC/OGG/AIFF), a volume "
                                                 "(TIFF stack, 3-D Zarr) or a video (MP4/MKV/WebM/AVI).")
    from .modality.image import BUILTINS

    parser.add_argument("src", help=f"file or Zarr store, or builtin:NAME (scikit-image's {', '.join(BUILTINS)}), "
                                    f"builtin:NAME@SIZE for a SIZE x SIZE copy")
    parser.add_argument("dest", help="new Zarr store path (must not exist)")
    parser.add_argument("--chunk", type=int, nargs="+", default=[0],
                        help="chunk edge for every axis, or one per axis (default: the modality's)")
    from .modality.kinds import MODALITIES

    parser.add_argument("--kind", default="auto", choices=["auto", *MODALITIES])
    parser.add_argument("--allow-large-image", action="store_true",
                        help="read a PNG/JPEG beyond Pillow's decompression-bomb limit (decoded whole)")
    args = parser.parse_args(argv)
    from .modality import ingest
    from .signal import SignalStore

    try:
        chunk = args.chunk[0] if len(args.chunk) == 1 else args.chunk
        if (isinstance(chunk, int) and (chunk < 0 or 0 < chunk < 8)) or \
                (isinstance(chunk, list) and any(c < 1 for c in chunk)):
            raise ConfigError("--chunk must be 0 (the default), an edge >= 8, or one edge >= 1 per axis")
        tty = sys.stderr.isatty()

        def progress(done, total):
            if tty:
                print(f"\ringest {done}/{total} rows", end="", file=sys.stderr, flush=True)

        dest = ingest(args.src, args.dest, chunk, progress, allow_large=args.allow_large_image, kind=args.kind)
        if tty:
            print(file=sys.stderr)
        store = SignalStore(dest)
        print(f"wrote {dest}: {store.meta['kind']} of shape {store.shape}, {store.num_chunks} chunks of {store.chunk_shape}, "
              f"{store.meta['source_dtype']}, data range {store.meta['data_range']}")
        return 0
    except (DistIntError, OSError) as e:
        return _fail(e)


def main(argv: list[str] | None = None) -> int:
    """`dist-int` and `python -m dist_int`. Output cut short by a closed pipe (`dist-int --help | head`) ends
    quietly, as command-line tools do."""
    try:
        try:
            code = _main(sys.argv[1:] if argv is None else argv)
        except SystemExit as e:  # argparse's --help and usage errors: flushed here, inside the try
            code = e.code
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 1


def _main(argv: list[str]) -> int:
    from .collect import collect_main
    from .report import report_main
    from .synth import synth_main

    commands = {"train": train_main, "ingest": ingest_main, "collect": collect_main, "synth": synth_main,
                "report": report_main}
    if not argv or argv[0] not in commands:
        from .modality import MODALITIES

        asked = bool(argv) and argv[0] in ("-h", "--help", "help")
        kinds = ", ".join(k for k, m in MODALITIES.items() if not m.table)  # a shape is sampled when training
        made = ", ".join(m.synth.name for m in MODALITIES.values() if m.synth)
        print("usage: python -m dist_int {train,ingest,collect,synth,report} ...\n"
              "  train    fit a neural field to a signal (--nproc-per-node N for N ranks on this machine)\n"
              f"  ingest   turn a signal file ({kinds}) into a Zarr store\n"
              "  collect  one table of the runs under a folder (e.g. an array job's)\n"
              f"  synth    write a procedural test signal ({made})\n"
              "  report   report.html with curves, reconstructions and teaching-set snapshots of runs\n"
              "Each command takes --help.", file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    return commands[argv[0]](argv[1:])
