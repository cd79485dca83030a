"""End-to-end runs of launch/train.py: real torchrun, real DeepSpeed, real Zarr stores on disk."""

import hashlib
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, read_metrics, read_summary, run_train, smooth_image, train_cmd, train_env
from dist_int.teacher.select import SEARCH_BYTES

TINY = ["signal.chunk=16", "model.hidden=32", "model.layers=4", "train.steps=300", "train.log_every=10",
        "train.eval_every=100", "checkpoint.every=50"]
PSNR_FLOOR_DB = 30.0  # a 4x32 SIREN reaches ~35 dB on this smooth 64x64 image in 300 steps


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray(smooth_image()).save(path)
    return path


@pytest.fixture(scope="module")
def two_rank_run(image, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "two"
    proc = run_train([f"run.dir={run_dir}", f"signal.path={image}", *TINY], nproc=2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir


@pytest.mark.slow
def test_two_ranks_reach_psnr_floor(two_rank_run):
    summary = read_summary(two_rank_run)
    assert summary["psnr_db"] > PSNR_FLOOR_DB and summary["ssim"] > 0.9
    assert summary["world_size"] == 2 and summary["steps"] == 300 and summary["status"] == "complete"
    assert summary["num_params"] == 2 * 32 + 32 + 2 * (32 * 32 + 32) + 32 * 3 + 3
    # The exported image is the rendered field: its PSNR against the source, on the data's range that the
    # summary names, matches the summary's (up to 8-bit rounding).
    lo, hi = summary["value_range"]
    assert [lo, hi] == summary["data_range"] == [smooth_image().min(), smooth_image().max()]
    mse = np.mean((np.asarray(Image.open(summary["reconstruction"])).astype(np.float64) - smooth_image()) ** 2)
    assert abs(10 * np.log10((hi - lo) ** 2 / mse) - summary["psnr_db"]) < 0.3
    metrics = read_metrics(two_rank_run)
    assert [m["step"] for m in metrics] == list(range(10, 301, 10))
    assert {"step", "train_time_s", "loss", "lr", "selected", "points_per_s", "imbalance", "selections",
            "select_bytes"} <= set(metrics[0])
    # Memory is reported per rank: peak host RSS (a CPU run has no GPU figure).
    assert len(metrics[-1]["peak_rss_mb"]) == 2 and all(50 < m < 8000 for m in metrics[-1]["peak_rss_mb"])
    assert metrics[-1]["peak_gpu_mb"] is None and len(summary["peak_rss_mb"]) == 2
    # The threshold search sends the same 16 KiB per selection whatever the signal size (2 ranks).
    assert {m["select_bytes"] for m in metrics if m["selections"]} == {SEARCH_BYTES}  # teacher/select.py
    assert [m["step"] for m in metrics if "psnr_db" in m] == [100, 200, 300]
    assert metrics[-1]["psnr_db"] == pytest.approx(summary["psnr_db"], abs=1e-3)
    assert metrics[0]["selected"] == round(0.2 * 64 * 64)  # step ratio starts at r0 = 0.2
    assert all(1.0 <= m["imbalance"] < 1.5 for m in metrics)
    assert metrics[-1]["lr"] < 1e-5  # cosine annealing down to the floor
    assert (two_rank_run / "checkpoints" / "latest").read_text() == "step-00000300"
    assert (two_rank_run / "reconstruction.zarr" / "zarr.json").is_file()
    assert (two_rank_run / "config.toml").is_file()


@pytest.mark.slow
def test_one_rank_equals_two_ranks(image, two_rank_run, tmp_path):
    proc = run_train([f"run.dir={tmp_path / 'one'}", f"signal.path={image}", *TINY], nproc=0)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    one, two = read_summary(tmp_path / "one"), read_summary(two_rank_run)
    assert one["world_size"] == 1
    assert abs(one["psnr_db"] - two["psnr_db"]) <= 0.05


def _interrupt(args, nproc, sig, run_dir, at_step=30):
    proc = subprocess.Popen(train_cmd(args, nproc), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=train_env())
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) * 10 >= at_step:
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


@pytest.mark.slow
@pytest.mark.parametrize("nproc, resume_nproc, sig", [(2, 2, signal.SIGTERM), (0, 0, signal.SIGINT),
                                                      (2, 0, signal.SIGTERM)])
def test_interrupt_and_resume_ends_where_an_uninterrupted_run_ends(image, two_rank_run, tmp_path, nproc,
                                                                   resume_nproc, sig):
    """Also across world sizes: a 2-rank run stopped and resumed on 1 rank ends at the same PSNR."""
    run_dir = tmp_path / "resumed"
    args = [f"run.dir={run_dir}", f"signal.path={image}", *TINY]
    rc, out = _interrupt(args, nproc, sig, run_dir)
    assert rc != 0, "the run finished before it was interrupted:\n" + out
    assert "stopped by" in out and "Run the same command again to resume" in out
    tag = (run_dir / "checkpoints" / "latest").read_text()
    stopped = int(tag.split("-")[1])
    assert 0 < stopped < 300 and not (run_dir / "summary.json").exists()
    proc = run_train(args, nproc=resume_nproc)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"resuming {run_dir} from step {stopped}" in proc.stdout
    assert f"saved by {nproc or 1} rank(s); now {resume_nproc or 1}" in proc.stdout
    resumed = read_summary(run_dir)
    reference = read_summary(two_rank_run)
    assert resumed["steps"] == 300
    assert abs(resumed["psnr_db"] - reference["psnr_db"]) <= 0.05
    steps = [m["step"] for m in read_metrics(run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 300  # no duplicated lines after the resume


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _bad_cases(tmp: Path, image: Path) -> dict:
    """Every kind of bad input a user can hand the trainer: (overrides, words the error must contain,
    ranks). Each must fail before training starts, with exit code != 0, and touch no existing output."""
    import tifffile
    import zarr

    from dist_int.modality import ingest

    corrupt_png = tmp / "corrupt.png"
    corrupt_png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    empty = tmp / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp / "truncated.png"
    truncated.write_bytes(image.read_bytes()[:200])
    corrupt_store = tmp / "corrupt.zarr"
    corrupt_store.mkdir()
    (corrupt_store / "zarr.json").write_text("{ this is not json")
    empty_store = tmp / "empty.zarr"
    empty_store.mkdir()
    truncated_store = tmp / "truncated.zarr"
    ingest(str(image), truncated_store, 16)
    chunk = sorted(p for p in (truncated_store / "c").rglob("*") if p.is_file())[5]
    chunk.write_bytes(chunk.read_bytes()[:10])
    nan_tif = tmp / "nan.tif"
    img = smooth_image().astype("float32")
    img[5, 7, 1] = float("inf")
    tifffile.imwrite(nan_tif, img, photometric="rgb")
    nan_store = tmp / "nan.zarr"
    tifffile.imwrite(tmp / "ok.tif", smooth_image().astype("float32"), photometric="rgb")
    ingest(str(tmp / "ok.tif"), nan_store, 16)
    arr = zarr.open_array(nan_store, mode="r+")
    arr[40, 40, 0] = float("nan")
    tifffile.imwrite(tmp / "volume.tif", np.zeros((2, 3, 16, 16), np.uint8), metadata={"axes": "TZYX"})
    tifffile.imwrite(tmp / "int64.tif", smooth_image()[..., 0].astype("int64"))
    return {
        "missing file": ([f"signal.path={tmp / 'missing.png'}"], "not found", 0),
        "empty file": ([f"signal.path={empty}"], "is empty", 0),
        "truncated file": ([f"signal.path={truncated}"], "cannot read image", 0),
        "corrupt image": ([f"signal.path={corrupt_png}"], "cannot read image", 0),
        "corrupt store": ([f"signal.path={corrupt_store}"], "corrupt", 0),
        "empty store": ([f"signal.path={empty_store}"], "is a folder but not a Zarr store", 0),
        "truncated store": ([f"signal.path={truncated_store}"], "corrupt or truncated", 0),
        "NaN/Inf in file": ([f"signal.path={nan_tif}"], "NaN or Inf", 0),
        "NaN in store": ([f"signal.path={nan_store}"], "NaN or Inf", 0),
        "wrong dimensions": ([f"signal.path={tmp / 'volume.tif'}"], "more than one non-spatial axis", 0),
        "more ranks than chunks": ([f"signal.path={image}", "signal.chunk=64"], "only 1 chunks", 2),
        "integer overflow": ([f"signal.path={tmp / 'int64.tif'}"], "64-bit integer range", 0),
        "unknown key": ([f"signal.path={image}", "teacher.rato=0.3"], "unknown config key 'teacher.rato'", 0),
        "bad value": ([f"signal.path={image}", "teacher.ratio=1.7"], "teacher.ratio must be in (0, 1]", 0),
        "bad schedule": ([f"signal.path={image}", "teacher.interval_schedule=sometimes"],
                         "teacher.interval_schedule must be one of", 0),
    }


BAD_CASES = ["missing file", "empty file", "truncated file", "corrupt image", "corrupt store", "empty store",
             "truncated store", "NaN/Inf in file", "NaN in store", "wrong dimensions", "more ranks than chunks",
             "integer overflow", "unknown key", "bad value", "bad schedule"]


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_clearly_and_leaves_nothing_behind(image, tmp_path, case):
    args, words, nproc = _bad_cases(tmp_path, image)[case]
    run_dir = tmp_path / "new-run"
    proc = run_train([f"run.dir={run_dir}", *TINY, *args], nproc=nproc)
    assert proc.returncode != 0 and (nproc or proc.returncode == 2), proc.stdout + proc.stderr
    assert "error: " in proc.stderr and words in proc.stderr, proc.stderr
    if not nproc:
        assert "Traceback" not in proc.stderr
    assert not (run_dir / "metrics.jsonl").exists()  # nothing trained
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_existing_run_folder_is_never_touched(image, two_rank_run, tmp_path):
    before = _snapshot(two_rank_run)
    cases = [args for args, _, _ in _bad_cases(tmp_path, image).values()]
    cases.append([f"signal.path={image}", "model.hidden=64"])  # a different config
    for args in cases:
        proc = run_train([f"run.dir={two_rank_run}", *TINY, *args])
        assert proc.returncode == 2 and "error: " in proc.stderr, proc.stderr
    proc = run_train([f"run.dir={two_rank_run}", *TINY, f"signal.path={image}", "model.hidden=64"])
    assert "different config" in proc.stderr and "model.hidden: 32 -> 64" in proc.stderr
    assert _snapshot(two_rank_run) == before


def test_folder_that_is_not_a_run_is_refused(image, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("precious")
    proc = run_train([f"run.dir={tmp_path / 'mine'}", f"signal.path={image}", *TINY])
    assert proc.returncode == 2 and "holds no dist_int run" in proc.stderr
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


@pytest.mark.slow
def test_minibatch_int_on_two_ranks_equals_one_rank(image, tmp_path):
    """Mini-batch INT (4 stratified batches per epoch, one cached selection per batch) on 1 and 2 ranks;
    the 2-rank run also sends its teaching sets through in pieces of at most 64 points."""
    args = [f"signal.path={image}", *TINY, "teacher.num_batches=4", "checkpoint.every=0"]
    two = run_train([f"run.dir={tmp_path / 'two'}", *args, "train.max_points_per_pass=64"], nproc=2)
    one = run_train([f"run.dir={tmp_path / 'one'}", *args], nproc=0)
    assert two.returncode == 0 and one.returncode == 0, two.stderr + one.stderr
    s1, s2 = read_summary(tmp_path / "one"), read_summary(tmp_path / "two")
    assert s2["psnr_db"] > PSNR_FLOOR_DB - 3
    assert abs(s1["psnr_db"] - s2["psnr_db"]) <= 0.05
    # Each batch is a quarter of the image; the step ratio starts at 0.2 of the batch.
    assert read_metrics(tmp_path / "two")[0]["selected"] == round(0.2 * 64 * 64 / 4)


@pytest.mark.slow
def test_bf16_autocast_keeps_quality(image, tmp_path):
    """bf16 autocast with the first layer in fp32: bf16 coordinates would blur neighbouring pixels
    together, as they did with DeepSpeed's bf16 mode, which casts the inputs too."""
    args = [f"signal.path={image}", *TINY, "checkpoint.every=0", "train.eval_every=0"]
    fp32 = run_train([f"run.dir={tmp_path / 'fp32'}", *args])
    bf16 = run_train([f"run.dir={tmp_path / 'bf16'}", *args, "train.precision=bf16"])
    assert fp32.returncode == 0 and bf16.returncode == 0, fp32.stderr + bf16.stderr
    assert read_summary(tmp_path / "bf16")["psnr_db"] > read_summary(tmp_path / "fp32")["psnr_db"] - 1.0


@pytest.mark.slow
def test_full_batch_run_matches_the_plain_pytorch_loop(image, tmp_path):
    """Fidelity: the trainer with `full` on 1 rank is the plain loop (same model, init, Adam, cosine LR,
    [-1, 1] targets), so at equal settings, steps and seed it ends at the same PSNR."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from plain_loop import fit

    steps = 150
    proc = run_train([f"run.dir={tmp_path / 'run'}", f"signal.path={image}", *TINY, f"train.steps={steps}",
                      "teacher.strategy=full", "checkpoint.every=0", "train.eval_every=0",
                      "train.divergence_db=0"])
    assert proc.returncode == 0, proc.stderr
    ours = read_summary(tmp_path / "run")["psnr_db"]
    plain = fit(str(image), hidden=32, layers=4, steps=steps, lr=1e-3)["psnr_db"]
    assert ours > 25 and abs(ours - plain) < 0.05, (ours, plain)


@pytest.mark.slow
def test_unit_target_range_trains_and_exports_on_the_source_scale(image, tmp_path):
    """signal.target_range=unit (the INT authors' [0, 1]): the exported PNG is the field mapped back to the
    source's range, and its PSNR against the source matches summary.json."""
    proc = run_train([f"run.dir={tmp_path / 'unit'}", f"signal.path={image}", *TINY, "train.steps=100",
                      "signal.target_range=unit", "checkpoint.every=0"])
    assert proc.returncode == 0, proc.stderr
    summary = read_summary(tmp_path / "unit")
    assert summary["target_range"] == "unit" and summary["psnr_db"] > 18
    lo, hi = summary["value_range"]  # the data's range: PSNR's data range is its span
    mse = np.mean((np.asarray(Image.open(summary["reconstruction"])).astype(np.float64) - smooth_image()) ** 2)
    assert abs(10 * np.log10((hi - lo) ** 2 / mse) - summary["psnr_db"]) < 0.3


@pytest.mark.slow
def test_damaged_checkpoint_is_one_error_line_and_touches_nothing(image, two_rank_run, tmp_path):
    import shutil

    run_dir = tmp_path / "damaged"
    shutil.copytree(two_rank_run, run_dir)
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text()
    chunk_file = sorted((latest / "teacher").iterdir())[3]  # one chunk's cached teaching sets
    chunk_file.write_bytes(chunk_file.read_bytes()[:50])
    before = _snapshot(run_dir)
    proc = run_train([f"run.dir={run_dir}", f"signal.path={image}", *TINY])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: cannot load checkpoint" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert _snapshot(run_dir) == before


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(image, tmp_path):
    """train.compile=true: DeepSpeed's engine.compile with dynamic shapes (the teaching set's size changes
    at every selection). Compiled on 2 ranks in pieces of at most 300 points (uneven shares: a rank may
    get empty or one-point pieces) against eager on 1 rank: within 0.3 dB, and no graph compiled after
    the warm-up (no silent fallback to eager on one rank while the other waits)."""
    args = [f"signal.path={image}", *TINY, "train.steps=60", "checkpoint.every=0", "train.eval_every=20",
            "train.log_every=10", "train.max_points_per_pass=300"]
    eager = run_train([f"run.dir={tmp_path / 'eager'}", *args])
    compiled = run_train([f"run.dir={tmp_path / 'compiled'}", *args, "train.compile=true"], nproc=2)
    assert eager.returncode == 0 and compiled.returncode == 0, eager.stderr + compiled.stderr
    s_eager, s_comp = read_summary(tmp_path / "eager"), read_summary(tmp_path / "compiled")
    assert s_comp["compile"] is True and "compiled" in compiled.stdout
    assert abs(s_comp["psnr_db"] - s_eager["psnr_db"]) < 0.3, (s_comp["psnr_db"], s_eager["psnr_db"])
    graphs = [m["graphs"] for m in read_metrics(tmp_path / "compiled") if "graphs" in m]
    assert len(graphs) == 6 and graphs[1:] == [graphs[1]] * 5, graphs  # none after the first interval
