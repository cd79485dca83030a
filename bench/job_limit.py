"""The shipped configs on long real-size signals inside a real memory limit, with no size or memory flag.

A job that SLURM or a container bounds with a cgroup must stream instead of being killed: the trainer
takes its budget from the smallest of physical memory, the cgroup limit and SLURM's variables, keeps
headroom for the launcher, shares the rest among the local ranks and sizes its parts to fit
(docs/training.md, "How the parts are sized"). This puts each run in a fresh cgroup v1 memory group of
`--mb-per-rank` x ranks (the kernel kills the group past it) and starts it with only the signal, the run
folder and the number of steps; it trains `--steps` steps and is stopped (SIGTERM) once the last is
logged, so the render of a billion points is not part of the measure. Per run: the budget line and the
parts chosen, as logged; the cgroup's peak (memory.max_usage_in_bytes) against its limit; whether the
kernel killed anything; the time per step.

    python bench/job_limit.py --kinds video4s,video,audio,image,volume --work /big/disk

Needs root and the v1 memory controller mounted writable at /sys/fs/cgroup/memory (../NOTES: this
machine has it; SLURM's cgroup plugin makes the same groups). Signals are made in --work once (the
1024^3 volume and the 2,000-frame video take minutes), by the generators of bench/scale.py.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, machine, markdown_table, train_cmd

sys.path.insert(0, str(ROOT))

CGROUP = Path("/sys/fs/cgroup/memory")
# Each run: (the signal, the shipped config). image-hash: the 1 Gpx image with the CPU-sized hash config
# (gigapixel.toml's table is sized for GPUs: 2^22 rows a level, about 1.1 GiB with its optimizer).
CONFIGS = {"video4s": ("video4s", "configs/video.toml"), "video": ("video", "configs/video.toml"),
           "audio": ("audio", "configs/audio.toml"), "image": ("image", "configs/gigapixel.toml"),
           "image-hash": ("image", "configs/hash.toml"), "volume": ("volume", "configs/volume.toml")}


def signals(work: Path, kinds: list[str]) -> dict:
    """kind -> (label, source path), made in `work` unless there already."""
    from dist_int.synth import synth_speech, synth_video
    from scale import _long_signals, made

    out = {}
    if "video4s" in kinds:  # 132 frames of 1280x720 at 33 fps: 121.7 M points
        out["video4s"] = ("video 4 s 720p (132 frames)", made(work / "clip-4s.mp4", lambda p: synth_video(
            p, frames=132, size=1280, height=720, fps=33)))
    if "audio" in kinds:
        out["audio"] = ("audio 1 h, 16 kHz mono", made(work / "hour-16k.wav", lambda p: synth_speech(p, 3600)))
    long = _long_signals(work, [k for k in ("image", "video", "volume") if k in kinds], sizes=(32768,),
                         tile_from=8192)
    for label, (src, _, _) in long.items():
        out[label.split()[0]] = (label.replace("image 32768^2", "image 32768^2 (1.07 Gpx)"), src)
    return out


def run_limited(args: list[str], nproc: int, steps: int, limit: int, name: str) -> dict:
    """The trainer in a fresh memory cgroup of `limit` bytes, stopped once step `steps` is logged."""
    group = CGROUP / name
    if group.exists():
        group.rmdir()
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        run_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("run.dir=")))
        # The shell joins the group and then becomes the launcher: every process of the job is inside.
        cmd = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *train_cmd(args, nproc)]
        t0 = time.time()
        with tempfile.TemporaryFile("w+") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
            metrics: list[dict] = []
            while proc.poll() is None and (not metrics or metrics[-1]["step"] < steps):
                time.sleep(1)
                path = run_dir / "metrics.jsonl"
                metrics = _records(path)
            ended = proc.poll()
            if ended is None:
                proc.send_signal(signal.SIGTERM)
                ended = proc.wait(timeout=600)
            log.seek(0)
            text = log.read()
        kills = re.search(r"oom_kill (\d+)", (group / "memory.oom_control").read_text())
        return {"log": text, "metrics": metrics, "code": ended, "wall_s": time.time() - t0,
                "peak": int((group / "memory.max_usage_in_bytes").read_text()),
                "failcnt": int((group / "memory.failcnt").read_text()),
                "oom_kills": int(kills.group(1)) if kills else None}
    finally:
        for _ in range(50):  # the group can be removed once its last process is gone
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.2)


def _records(path: Path) -> list[dict]:
    """metrics.jsonl's whole lines (the last may be half written while the run appends it)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def line_of(text: str, start: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if start in ln), "-")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", default="video4s,audio,video,image,volume", help=f"some of {','.join(CONFIGS)}")
    ap.add_argument("--mb-per-rank", type=int, default=1536)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--work", default="", help="where the signals are made and kept (default: a temporary folder)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "job_limit.md"))
    args = ap.parse_args()
    if not os.access(CGROUP, os.W_OK):
        sys.exit(f"{CGROUP} is not writable here: the benchmark needs root and the v1 memory controller")
    kinds = args.kinds.split(",")
    unknown = [k for k in kinds if k not in CONFIGS]
    if unknown:
        sys.exit(f"unknown --kinds {unknown}; choose from {list(CONFIGS)}")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-job-limit-"))
    work.mkdir(parents=True, exist_ok=True)
    limit = args.mb_per_rank * args.nproc << 20
    rows = []
    made = signals(work, [CONFIGS[k][0] for k in kinds])
    for kind in kinds:
        label, src = made[CONFIGS[kind][0]]
        config = CONFIGS[kind][1]
        run = work / f"run-{kind}"
        shutil.rmtree(run, ignore_errors=True)
        print(f"{label} ...", flush=True)
        r = run_limited([f"--config={config}", f"signal.path={src}", f"run.dir={run}",
                         f"train.steps={args.steps}", f"train.log_every={max(args.steps // 4, 1)}"],
                        args.nproc, args.steps, limit, f"dist_int_bench_{kind.replace('-', '_')}_{os.getpid()}")
        m = r["metrics"]
        trained = [x for x in m if "train_time_s" in x]
        reached = trained[-1]["step"] if trained else 0
        error = line_of(r["log"], "error:")
        step_ms = f"{trained[-1]['train_time_s'] / reached * 1e3:.0f}" if reached else "-"
        found = re.search(r"budget per rank (.*? MiB for the signal\))", r["log"])
        budget = re.sub(r"/sys/fs/cgroup/\S+/memory\.limit_in_bytes", "the cgroup's limit",
                        found.group(1)) if found else "-"
        sized = re.sub(r".*parts sized to the budget: | \(engine/sizing.py; set them to pin them\)", "",
                       line_of(r["log"], "parts sized to the budget"))
        rss = ", ".join(f"{v:,.0f}" for v in trained[-1].get("peak_rss_mb", [])) if trained else "-"
        rows.append([label, config, f"{reached}/{args.steps}", rss, f"{r['peak'] / 2**20:,.0f} / {limit / 2**20:,.0f}",
                     str(r["oom_kills"]), budget, step_ms, sized, error if error != "-" else "",
                     f"{r['wall_s']:.0f}"])
        print(rows[-1], flush=True)
        if r["code"] not in (0, 75) and "stopped by SIGTERM" not in r["log"]:
            print(r["log"][-4000:], flush=True)
        shutil.rmtree(run, ignore_errors=True)
    table = markdown_table(["signal", "config", "steps reached", "peak RSS per rank (MiB)",
                            "cgroup peak / limit (MiB; page cache included)", "OOM kills",
                            "budget per rank (as logged)", "train step (ms)", "parts sized to the budget (as logged)",
                            "error", "wall (s)"], rows)
    text = (f"# Shipped configs on long signals inside a memory cgroup, no size or memory flag\n\n"
            f"{time.strftime('%Y-%m-%d')}, {machine()}\n\n`python bench/job_limit.py --kinds {args.kinds} "
            f"--mb-per-rank {args.mb_per_rank} --nproc {args.nproc} --steps {args.steps}`: {args.nproc} ranks "
            f"in one cgroup v1 memory group of {args.mb_per_rank} MiB per rank; each run given only signal.path, "
            f"run.dir, train.steps and train.log_every, and stopped once its last step was logged.\n\n{table}\n")
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
