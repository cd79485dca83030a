"""A user's mistake is one `error:` line and exit 2: sizes checked up front, OS and I/O errors, config
values, and the exit codes of each outcome."""

import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, failed_clearly, quick_train as train, smooth_image

@pytest.mark.slow
def test_sizes_are_checked_up_front(png, tmp_path):
    # A mistyped width: refused before the folder is made (the budget is fixed here, not the machine's).
    # Passes too large for the budget are cut to fit (engine/sizing.py); a field too large is refused.
    proc = train(f"signal.path={png}", f"run.dir={tmp_path / 'big'}", "model.hidden=60000", "model.layers=3",
                 "train.memory_mb=2048")
    assert failed_clearly(proc, "model.hidden=60000: the field needs about"), proc.stderr
    assert not (tmp_path / "big").exists()
    proc = train(f"signal.path={png}", f"run.dir={tmp_path / 'wide'}", "model.hidden=16", "train.memory_mb=0.1")
    assert failed_clearly(proc, "more than train.memory_mb offers"), proc.stderr
    ok = train(f"signal.path={png}", f"run.dir={tmp_path / 'chunk'}", "signal.chunk=100000")
    assert ok.returncode == 0, ok.stderr
    import zarr

    assert zarr.open_array(tmp_path / "chunk" / "signal.zarr").chunks == (48, 40, 3)  # cut to the image

@pytest.mark.slow
def test_os_and_io_errors_are_error_lines(png, tmp_path):
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

@pytest.mark.parametrize("override, message", [
    ("seed=-1", "seed must be >= 0"), ("train.timeout_s=inf", "must be a finite number"),
    ("optim.lr=inf", "optim.lr must be a finite number"), ("run.dir=2024-05-01", "quote it")])
def test_config_values_are_validated(override, message):
    from dist_int.config import load_config
    from dist_int.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(str(ROOT / "configs" / "demo.toml"), [override])

@pytest.mark.slow
def test_messages_and_exit_codes(png, tmp_path):
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
