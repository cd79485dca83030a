"""What people read of a run: teaching-set snapshots (the same on any number of ranks), `dist_int report`
for every signal kind, progress lines without a terminal, and TensorBoard scalars."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, read_metrics, read_summary, run_train

SMALL = ["signal.chunk=16", "model.hidden=32", "model.layers=3", "train.log_every=10", "train.eval_every=0", "checkpoint.every=0"]


@pytest.mark.slow
def test_snapshots_add_up_to_the_one_rank_snapshot_and_a_resume_rewrites_them(png_image, tmp_path):
    from dist_int.teacher.snapshot import read_snapshot

    args = [f"signal.path={png_image}", *SMALL, "train.steps=30", "train.snapshot_every=10",
            "teacher.strategy=soft"]
    one = run_train([f"run.dir={tmp_path / 'one'}", *args])
    two = run_train([f"run.dir={tmp_path / 'two'}", *args], nproc=2)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    for step in (0, 10, 20):
        a = read_snapshot(tmp_path / "one" / "snapshots" / f"step-{step:08d}")
        b = read_snapshot(tmp_path / "two" / "snapshots" / f"step-{step:08d}")
        assert (a["ranks"], b["ranks"]) == (1, 2)
        assert np.array_equal(a["selected"], b["selected"]) and np.array_equal(a["points"], b["points"])
        # A 64x64 image keeps one cell per pixel: the picture is the teaching set itself.
        assert a["selected"].shape == (64, 64) and a["selected"].max() == 1 and b["complete"]
        assert int(a["selected"].sum()) == int(a["count"]) and int(a["points"].sum()) == 64 * 64
    assert sorted(p.name for p in (tmp_path / "one" / "snapshots").iterdir()) == \
        [f"step-{s:08d}" for s in (0, 10, 20)]


@pytest.mark.slow
def test_evaluations_hand_their_scores_to_the_next_selection_without_changing_the_run(png_image, tmp_path):
    """Scoring reused from an evaluation is the teacher's own scoring pass, bit for bit: a run that
    evaluates every step (and so reuses at every selection after one) trains exactly like one that never
    evaluates."""
    args = [f"signal.path={png_image}", *SMALL, "train.steps=40", "teacher.interval_schedule=dense"]
    plain = run_train([f"run.dir={tmp_path / 'plain'}", *args])
    reused = run_train([f"run.dir={tmp_path / 'reused'}", *args, "train.eval_every=1"])
    assert plain.returncode == 0 and reused.returncode == 0, plain.stderr + reused.stderr
    a, b = read_summary(tmp_path / "plain"), read_summary(tmp_path / "reused")
    assert a["psnr_db"] == b["psnr_db"]
    m = read_metrics(tmp_path / "reused")
    assert sum(r["scores_reused"] for r in m) == 39  # every selection after the first
    assert sum(r["scores_reused"] for r in read_metrics(tmp_path / "plain")) == 0
    assert 0 < b["select_fraction"] < 1 and all(0 <= r["select_fraction"] <= 1 for r in m)


def _media(tmp_path):
    from dist_int.synth import synth_shape, synth_speech, synth_video, synth_volume

    return {
        "audio": (synth_speech(tmp_path / "speech.wav", seconds=0.5, rate=8000),
                  ["signal.chunk=512", "model.w0_first=300", "optim.lr=1e-3"]),
        "volume": (synth_volume(tmp_path / "vol.tif", size=20), ["signal.chunk=10"]),
        "video": (synth_video(tmp_path / "clip.mp4", frames=8, size=32), ["signal.chunk=[4,16,16]"]),
        "shape": (synth_shape(tmp_path / "washer.ply"), ["signal.points=4000", "signal.chunk=1000"]),
    }


@pytest.mark.slow
def test_report_draws_every_kind_with_its_snapshots(png_image, tmp_path):
    runs = []
    for kind, (path, extra) in {"image": (png_image, []), **_media(tmp_path)}.items():
        run = tmp_path / f"run-{kind}"
        proc = run_train([f"run.dir={run}", f"signal.path={path}", *SMALL, *extra, "train.steps=20",
                          "train.snapshot_every=10", "train.eval_every=10"])
        assert proc.returncode == 0, (kind, proc.stderr)
        runs.append(run)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "dist_int", "report", *map(str, runs), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    page = (out / "report.html").read_text()
    pictures = sorted(p.name for p in out.glob("*.png"))
    assert "curves.png" in pictures and len(pictures) == 1 + 2 * len(runs), pictures
    for name in pictures:
        assert f"src='{name}'" in page
        with Image.open(out / name) as img:
            pixels = np.asarray(img.convert("L"))
        assert min(pixels.shape) > 200 and pixels.std() > 10, name  # drawn, not blank
    for run in runs:
        assert str(run) in page and str(read_summary(run)["psnr_db"]) in page


@pytest.mark.slow
def test_report_explains_what_it_cannot_draw(png_image, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dist_int", "report", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "is not a run folder" in proc.stderr and "Traceback" not in proc.stderr
    run, snap = tmp_path / "r", tmp_path / "snap"
    assert run_train([f"run.dir={run}", f"signal.path={png_image}", *SMALL, "train.steps=10"]).returncode == 0
    # No evaluations (eval_every=0), and a rollback event in metrics.jsonl: drawn from the probe PSNR.
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 10, "event": "rollback", "to_step": 5, "lr_scale": 0.5, "probe_psnr_db": 9.0}\n')
    proc = subprocess.run([sys.executable, "-m", "dist_int", "report", str(run)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "train.snapshot_every" in (run / "report" / "report.html").read_text()  # how to get snapshots
    # Snapshots without the signal store are still drawn; a snapshot missing a rank's file is named, not drawn.
    assert run_train([f"run.dir={snap}", f"signal.path={png_image}", *SMALL, "train.steps=20",
                      "train.snapshot_every=10"], nproc=2).returncode == 0
    (snap / "snapshots" / "step-00000010" / "rank-00001.npz").unlink()
    __import__("shutil").rmtree(snap / "signal.zarr")
    proc = subprocess.run([sys.executable, "-m", "dist_int", "report", str(snap)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    page = (snap / "report" / "report.html").read_text()
    assert "signal store is gone" in page and "Snapshots at steps 10 lack some ranks' files" in page
    assert (snap / "report" / "run0-snap-teaching.png").is_file()
    (snap / "summary.json").write_text("{not json")
    proc = subprocess.run([sys.executable, "-m", "dist_int", "report", str(snap)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "damaged" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_progress_lines_without_a_terminal_come_at_the_set_interval(png_image, tmp_path):
    args = [f"signal.path={png_image}", *SMALL, "train.steps=40"]
    often = run_train([f"run.dir={tmp_path / 'often'}", *args, "train.progress_every_s=1e-6"])
    rare = run_train([f"run.dir={tmp_path / 'rare'}", *args, "train.progress_every_s=3600"])
    lines = [line for line in often.stdout.splitlines() if line.startswith("step ")]
    assert len(lines) == 40 and lines[-1].startswith("step 40/40") and "eta" in lines[-1]
    assert [line.split()[1] for line in rare.stdout.splitlines() if line.startswith("step ")] == ["40/40"]
    assert not (tmp_path / "often" / "tensorboard").exists()  # TensorBoard is off by default


@pytest.mark.slow
def test_tensorboard_scalars_when_asked(png_image, tmp_path):
    pytest.importorskip("tensorboard")  # the test extra installs it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "r"
    proc = run_train([f"run.dir={run}", f"signal.path={png_image}", *SMALL, "train.steps=20",
                      "train.tensorboard=true"])
    assert proc.returncode == 0, proc.stderr
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    loss = events.Scalars("loss")
    assert [e.step for e in loss] == [10, 20]
    assert loss[-1].value == pytest.approx(read_metrics(run)[-1]["loss"], rel=1e-6)
    assert {"probe_psnr_db", "select_fraction", "points_per_s"} <= set(events.Tags()["scalars"])
