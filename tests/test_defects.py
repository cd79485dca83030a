"""The defects found by adversarial use (issue: "what users really feed it"), one test each, on real
files and processes: a user's mistake is one `error:` line and exit 2, nothing existing is overwritten,
no half-made folder is left, and the corrected command then works."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, read_metrics, read_summary, run_train, smooth_image

T = ["--config", "configs/demo.toml", "model.hidden=16", "model.layers=2", "train.steps=20", "signal.chunk=32",
     "train.log_every=10", "train.eval_every=0"]


def train(*args):
    return run_train([*T, *args])


def failed_clearly(proc, message):
    return proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "a.png"
    Image.fromarray(smooth_image(48, 40)).save(path)
    return path


def test_01_images_under_7_pixels_finish(tmp_path):
    Image.fromarray((np.arange(9).reshape(3, 3) * 20).astype(np.uint8)).save(tmp_path / "t3.png")
    proc = train(f"signal.path={tmp_path / 't3.png'}", f"run.dir={tmp_path / 'r'}", "signal.chunk=8")
    assert proc.returncode == 0, proc.stderr
    summary = read_summary(tmp_path / "r")
    assert summary["status"] == "complete" and summary["ssim"] is not None  # a 3x3 window fits


def test_02_a_refused_config_change_keeps_config_toml(png, tmp_path):
    run = tmp_path / "cc"
    assert train(f"signal.path={png}", f"run.dir={run}").returncode == 0
    before = (run / "config.toml").read_bytes()
    proc = train(f"signal.path={png}", f"run.dir={run}", "model.hidden=32", "run.allow_config_change=true")
    assert failed_clearly(proc, "cannot load checkpoint"), proc.stderr
    assert (run / "config.toml").read_bytes() == before
    assert train(f"signal.path={png}", f"run.dir={run}").returncode == 0  # the original command still works


def test_03_sizes_are_checked_up_front(png, tmp_path):
    # A mistyped width: refused before the folder is made (the budget is fixed here, not the machine's).
    proc = train(f"signal.path={png}", f"run.dir={tmp_path / 'big'}", "model.hidden=60000", "train.memory_mb=2048")
    assert failed_clearly(proc, "this run needs about"), proc.stderr
    assert not (tmp_path / "big").exists()
    proc = train(f"signal.path={png}", f"run.dir={tmp_path / 'wide'}", "model.hidden=16", "train.memory_mb=0.1")
    assert failed_clearly(proc, "more than train.memory_mb offers"), proc.stderr
    ok = train(f"signal.path={png}", f"run.dir={tmp_path / 'chunk'}", "signal.chunk=100000")
    assert ok.returncode == 0, ok.stderr
    import zarr

    assert zarr.open_array(tmp_path / "chunk" / "signal.zarr").chunks == (48, 40, 3)  # cut to the image


def test_04_a_missing_latest_checkpoint_resumes_from_the_newest_intact_one(png, tmp_path):
    run = tmp_path / "r"
    args = [f"signal.path={png}", f"run.dir={run}", "train.steps=40", "checkpoint.every=10", "checkpoint.keep=3"]
    assert train(*args).returncode == 0
    shutil.rmtree(run / "checkpoints" / "step-00000040")
    (run / "summary.json").unlink()
    proc = train(*args)
    assert proc.returncode == 0, proc.stderr
    assert "resuming from the newest intact checkpoint, step-00000030" in proc.stdout
    steps = [m["step"] for m in read_metrics(run)]
    assert steps == sorted(set(steps)) and steps[-1] == 40


def test_05_a_run_folder_in_use_is_refused_and_a_stale_lock_taken_over(png, tmp_path):
    run = tmp_path / "r"
    args = [f"signal.path={png}", f"run.dir={run}", "train.steps=400"]
    first = subprocess.Popen([sys.executable, "launch/train.py", *T, *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if (run / "config.toml").is_file():
                break
            __import__("time").sleep(0.05)
        second = train(*args)
        assert failed_clearly(second, "is in use by process"), second.stderr
        assert str(first.pid) in second.stderr
    finally:
        first.terminate()
        first.communicate(timeout=120)
    # A lock left by a process that is gone (killed, crashed) does not block the folder.
    (run / ".lock").write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": 2**22 + 12345,
                                           "started": "earlier"}))
    again = train(*args, "train.steps=400")
    assert again.returncode == 0, again.stderr
    assert not (run / ".lock").exists()


def test_07_16_bit_colour_png_keeps_its_depth(tmp_path):
    import imagecodecs

    img = np.random.default_rng(0).integers(0, 65535, (24, 20, 3)).astype(np.uint16)
    img[0, 0] = 65535
    (tmp_path / "c16.png").write_bytes(imagecodecs.png_encode(img))
    from dist_int.signal import SignalStore
    from dist_int.modality import ingest

    store = SignalStore(ingest(str(tmp_path / "c16.png"), tmp_path / "s.zarr", 8))
    assert store.array.dtype == np.uint16 and np.array_equal(store.array[...], img)
    from dist_int.render import create_output, export, open_level

    create_output(tmp_path / "o.zarr", store)
    open_level(tmp_path / "o.zarr", 0, "r+")[...] = img.transpose(2, 0, 1)
    out = export(tmp_path / "o.zarr", tmp_path / "recon", "png")
    assert np.array_equal(imagecodecs.png_decode(out.read_bytes()), img)  # exported at 16 bits


def test_08_os_and_io_errors_are_error_lines(png, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    proc = train(f"signal.path={png}", f"run.dir={tmp_path / 'file.txt' / 'run'}")
    assert failed_clearly(proc, "error:"), proc.stderr
    import tifffile

    tifffile.imwrite(tmp_path / "t.tif", smooth_image(64, 64), tile=(16, 16), photometric="rgb")
    data = (tmp_path / "t.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    proc = train(f"signal.path={tmp_path / 'cut.tif'}", f"run.dir={tmp_path / 'cut'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "error:" in proc.stderr, proc.stderr
    assert not (tmp_path / "cut").exists()
    # collect: one damaged summary.json does not fail the table
    assert train(f"signal.path={png}", f"run.dir={tmp_path / 'runs' / 'a'}").returncode == 0
    shutil.copytree(tmp_path / "runs" / "a", tmp_path / "runs" / "b")
    (tmp_path / "runs" / "b" / "summary.json").write_text("{not json")
    col = subprocess.run([sys.executable, "-m", "dist_int", "collect", str(tmp_path / "runs")], cwd=ROOT,
                         capture_output=True, text=True)
    assert col.returncode == 0 and "damaged summary.json" in col.stdout and "complete" in col.stdout


def test_09_a_failure_after_setup_leaves_no_folder_and_the_fix_runs(png, tmp_path):
    proc = train(f"signal.path={png}", f"run.dir={tmp_path / 'nb'}", "teacher.num_batches=5000")
    assert failed_clearly(proc, "teacher.num_batches=5000"), proc.stderr
    assert not (tmp_path / "nb").exists()
    assert train(f"signal.path={png}", f"run.dir={tmp_path / 'nb'}", "teacher.num_batches=4").returncode == 0


@pytest.mark.parametrize("override, message", [
    ("seed=-1", "seed must be >= 0"), ("train.timeout_s=inf", "must be a finite number"),
    ("optim.lr=inf", "optim.lr must be a finite number"), ("run.dir=2024-05-01", "quote it")])
def test_10_config_values_are_validated(override, message):
    from dist_int.config import load_config
    from dist_int.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(str(ROOT / "configs" / "demo.toml"), [override])


def test_11_a_moved_run_folder_resumes(png, tmp_path):
    assert train(f"signal.path={png}", f"run.dir={tmp_path / 'a'}", "train.steps=10").returncode == 0
    shutil.move(tmp_path / "a", tmp_path / "b")
    proc = train(f"signal.path={png}", f"run.dir={tmp_path / 'b'}/", "train.steps=10")
    assert proc.returncode == 0, proc.stderr


def test_12_planar_and_channel_first_tiffs_are_images_and_stacks_volumes(tmp_path):
    import tifffile

    from dist_int.signal import SignalStore
    from dist_int.modality import ingest

    rgb = smooth_image(32, 24)
    tifffile.imwrite(tmp_path / "planar.tif", rgb.transpose(2, 0, 1), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "cyx.ome.tif", rgb.transpose(2, 0, 1), metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([rgb[..., 0]] * 5))
    for name in ("planar.tif", "cyx.ome.tif"):
        store = SignalStore(ingest(str(tmp_path / name), tmp_path / f"{name}.zarr", 8))
        assert store.meta["kind"] == "image" and np.array_equal(store.array[...], rgb), name
    assert SignalStore(ingest(str(tmp_path / "stack.tif"), tmp_path / "s.zarr", 8)).meta["kind"] == "volume"


def test_13_a_run_keeps_its_signal_and_its_step_count(png, tmp_path):
    run = tmp_path / "r"
    assert train("signal.path=builtin:camera@64", f"run.dir={run}").returncode == 0
    proc = train("signal.path=builtin:astronaut@64", f"run.dir={run}", "run.allow_config_change=true")
    assert failed_clearly(proc, "keeps the signal it started with"), proc.stderr
    proc = train("signal.path=builtin:camera@64", f"run.dir={run}", "run.allow_config_change=true",
                 "train.steps=10")
    assert failed_clearly(proc, "already trained 20 steps"), proc.stderr


def test_14_exif_orientation_and_12_bit_data(tmp_path):
    from dist_int.signal import SignalStore
    from dist_int.modality import ingest

    img = smooth_image(20, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees clockwise to view
    Image.fromarray(img).save(tmp_path / "phone.png", exif=exif)
    store = SignalStore(ingest(str(tmp_path / "phone.png"), tmp_path / "p.zarr", 8))
    assert store.shape == (30, 20, 3) and np.array_equal(store.array[...], np.rot90(img, -1))
    import tifffile

    twelve = np.random.default_rng(0).integers(0, 4096, (16, 16)).astype(np.uint16)
    twelve[0, 0] = 4095
    tifffile.imwrite(tmp_path / "sensor.tif", twelve)
    store = SignalStore(ingest(str(tmp_path / "sensor.tif"), tmp_path / "s.zarr", 8))
    assert store.meta["value_range"] == [float(twelve.min()), 4095.0]  # the data's range, not 65535


def test_15_messages_and_exit_codes(png, tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    proc = train(f"signal.path={tmp_path / 'loop'}", f"run.dir={tmp_path / 'r1'}")
    assert failed_clearly(proc, "symbolic link"), proc.stderr
    shutil.copy(png, tmp_path / "fake.tif")
    proc = train(f"signal.path={tmp_path / 'fake.tif'}", f"run.dir={tmp_path / 'r2'}")
    assert failed_clearly(proc, "its content is a PNG"), proc.stderr
    help_ = subprocess.run([sys.executable, "-m", "dist_int", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert help_.returncode == 0 and "usage" in help_.stdout
    (tmp_path / "empty").mkdir()
    col = subprocess.run([sys.executable, "-m", "dist_int", "collect", str(tmp_path / "empty")], cwd=ROOT,
                         capture_output=True, text=True)
    assert col.returncode == 2 and "holds no run folders" in col.stderr
    assert not (tmp_path / "empty" / "runs.csv").exists()


def test_05b_a_lock_from_another_host_is_refused_unless_it_is_this_slurm_job_requeued(tmp_path, monkeypatch):
    from dist_int.errors import RunDirError
    from dist_int.rundir import RunDir

    run = RunDir(tmp_path)
    run.lock.write_text(json.dumps({"host": "node-17", "pid": 4242, "started": "earlier", "slurm_job": "77"}))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(RunDirError, match="in use by process 4242 on host node-17"):
        run.acquire_lock()
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the same job after a requeue, on another node
    run.acquire_lock()
    assert json.loads(run.lock.read_text())["pid"] == os.getpid()
    run.release_lock()
    assert not run.lock.exists()


def test_a_folder_saved_before_new_keys_existed_resumes_and_display_keys_may_change(tmp_path):
    """A config.toml written before train.snapshot_every/progress_every_s/tensorboard existed compares as if
    it held their defaults; those display keys may change on resume, anything else is still refused."""
    import tomllib

    from dist_int.config import load_config
    from dist_int.errors import RunDirError
    from dist_int.rundir import RunDir, to_toml

    run = tmp_path / "old"
    run.mkdir()
    cfg = load_config(None, [f"run.dir={run}"])
    saved = tomllib.loads(to_toml(cfg.to_dict()))
    for key in ("snapshot_every", "progress_every_s", "tensorboard"):
        del saved["train"][key]
    (run / "config.toml").write_text(to_toml(saved))
    assert RunDir(run).check(cfg) is False  # no checkpoint yet, and no refusal
    assert RunDir(run).check(load_config(None, [f"run.dir={run}", "train.snapshot_every=10",
                                                "train.progress_every_s=5"])) is False
    with pytest.raises(RunDirError, match="optim.lr"):
        RunDir(run).check(load_config(None, [f"run.dir={run}", "optim.lr=0.01"]))
