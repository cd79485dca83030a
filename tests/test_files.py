"""Writes that fail (a full disk, a read-only folder, a file in the way): one clear error or a warning, no
debris, nothing a rerun trips over, and the same command works once the cause is gone. The full disk is
real: a small tmpfs mounted for the test (root only; skipped with the reason elsewhere)."""

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT, read_summary, run_train, train_cmd, train_env

T = ["--config", "configs/demo.toml", "model.hidden=16", "model.layers=2", "train.steps=20", "signal.chunk=32",
     "train.log_every=10", "train.eval_every=0", "signal.path=builtin:camera@48"]


def worker_traceback(text: str) -> bool:
    """Whether a worker printed a traceback (torchrun's own, for a worker's non-zero exit, is not one)."""
    return re.search(r'File "[^"]*/(dist_int|launch)/', text) is not None


def one_error_line(proc) -> bool:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    return len(lines) == 1 and "Traceback" not in proc.stderr and "Traceback" not in proc.stdout


@contextlib.contextmanager
def small_disk(path: Path, size: str = "8m"):
    """A tmpfs of `size` mounted at `path`, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small disk (tmpfs) needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill the disk up to `leave` free bytes with one file; returns it (delete it to free the room)."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free - leave
    with open(filler, "wb") as f:
        with contextlib.suppress(OSError):
            while free > 0:
                n = min(free, 1 << 20)
                f.write(b"\0" * n)
                free -= n
    return filler


def debris(folder: Path) -> list[str]:
    """Temporary files and partial folders a write would leave behind."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name or ".partial" in p.name)


def test_atomic_write_on_a_full_disk_leaves_no_temporary_file(tmp_path):
    from dist_int.files import atomic_write, replaced_when_done

    with small_disk(tmp_path / "disk", "1m") as disk:
        fill(disk)
        with pytest.raises(OSError):
            atomic_write(disk / "summary.json", "x" * 100000)
        with pytest.raises(OSError), replaced_when_done(disk / "reconstruction.png") as tmp:
            tmp.write_bytes(b"y" * 100000)
        assert [p.name for p in disk.iterdir()] == ["filler"]


@pytest.mark.slow
def test_a_full_disk_at_start_leaves_no_lock_and_the_rerun_starts(tmp_path):
    """The lock's write failed on a full disk and left an empty .lock: every rerun was refused, "in use by
    process ? on host ? (since ?)"."""
    with small_disk(tmp_path / "disk", "4m") as disk:
        filler = fill(disk)
        run = disk / "run"
        proc = run_train([*T, f"run.dir={run}"])
        assert proc.returncode == 2 and one_error_line(proc), proc.stderr[-3000:]
        assert "No space left on device" in proc.stderr
        assert not (run / ".lock").exists() and debris(disk) == []
        filler.unlink()
        again = run_train([*T, f"run.dir={run}"])
        assert again.returncode == 0, again.stderr[-3000:]
        assert not (run / ".lock").exists()


@pytest.mark.slow
def test_an_unreadable_lock_is_taken_over_with_a_warning(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("")  # what a lock write cut short by a full disk left before
    proc = run_train([*T, f"run.dir={run}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning:" in proc.stdout and "could not be read" in proc.stdout and "taken over as stale" in proc.stdout


@pytest.mark.slow
def test_a_disk_that_fills_during_training_fails_every_rank_with_one_line_and_resumes(tmp_path):
    """2 ranks; the disk fills after the first checkpoint: the next save is refused on every rank before a
    byte is written (one error line, exit 2, no partial folder), and once there is room again the same
    command resumes from the last complete checkpoint."""
    with small_disk(tmp_path / "disk", "64m") as disk:
        run = disk / "run"
        args = [*T, f"run.dir={run}", "train.steps=300", "checkpoint.every=20", "train.log_every=20"]
        log = open(tmp_path / "train.log", "w")
        proc = subprocess.Popen(train_cmd(args, 2), cwd=ROOT, env=train_env(), stdout=log, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.time() + 300
        while not (run / "checkpoints" / "latest").is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        workers = psutil.Process(proc.pid).children(recursive=True)
        for w in workers:  # held while the disk fills, so that the next save finds it full
            w.suspend()
        filler = fill(disk, leave=64 << 10)
        for w in workers:
            w.resume()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode != 0
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "No space left on device" in lines[0], err[-4000:]
        assert not worker_traceback(err), err[-4000:]
        assert debris(run) == [], debris(run)
        tag = (run / "checkpoints" / "latest").read_text()
        assert (run / "checkpoints" / tag / "meta.json").is_file()
        filler.unlink()
        again = run_train(args, nproc=2)
        assert again.returncode == 0 and "resuming" in again.stdout, again.stderr[-3000:]
        assert read_summary(run)["steps"] == 300


@pytest.mark.slow
def test_a_failed_summary_write_is_one_error_on_every_rank(tmp_path):
    """Rank 0 cannot write summary.json (a folder is in its place): rank 1 printed a traceback while
    waiting; now the failure is agreed, one error line, and its temporary file is gone."""
    run = tmp_path / "run"
    assert run_train([*T, f"run.dir={run}"], nproc=2).returncode == 0
    (run / "summary.json").unlink()  # the rerun writes the outputs again, and then the summary
    (run / "summary.json").mkdir()
    (run / "summary.json" / "keep.txt").write_text("a user's file")
    proc = run_train([*T, f"run.dir={run}"], nproc=2)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "summary.json" in lines[0], proc.stderr[-4000:]
    assert not worker_traceback(proc.stderr), proc.stderr[-4000:]
    assert (run / "summary.json" / "keep.txt").read_text() == "a user's file" and debris(run) == []


@pytest.mark.slow
def test_a_blocked_output_is_not_reported_and_the_warning_says_how_to_finish(tmp_path):
    run = tmp_path / "run"
    first = run_train([*T, f"run.dir={run}", "train.steps=10"])
    assert first.returncode == 0, first.stderr[-2000:]
    shutil.rmtree(run / "reconstruction.zarr")
    (run / "summary.json").unlink()
    (run / "reconstruction.zarr").write_text("a user's file in the way")
    proc = run_train([*T, f"run.dir={run}", "train.steps=10"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = read_summary(run)
    assert summary["reconstruction"] is None and "render" in summary["missing"]
    warning = next(w for w in summary["warnings"] if "publishing reconstruction.zarr failed" in w)
    assert "Run the same command again" in warning
    assert "no reconstruction written" in proc.stdout
    assert (run / "reconstruction.zarr").read_text() == "a user's file in the way"
    (run / "reconstruction.zarr").unlink()
    again = run_train([*T, f"run.dir={run}", "train.steps=10"])
    assert again.returncode == 0 and read_summary(run)["missing"] == []
    assert (run / "reconstruction.zarr").is_dir() and read_summary(run)["reconstruction"].endswith(".png")


@pytest.mark.slow
def test_collect_on_a_read_only_folder_prints_the_table_and_takes_out(tmp_path):
    runs = tmp_path / "runs"
    assert run_train([*T, f"run.dir={runs / 'a'}", "train.steps=10"]).returncode == 0
    os.chmod(runs, 0o555)
    try:
        collect = [sys.executable, "-m", "dist_int", "collect", str(runs)]
        # root writes anywhere: make the folder read-only the way a read-only mount is, for everyone
        if os.geteuid() == 0:
            subprocess.run(["mount", "--bind", str(runs), str(runs)], check=True)
            subprocess.run(["mount", "-o", "remount,ro,bind", str(runs)], check=True)
        try:
            proc = subprocess.run(collect, cwd=ROOT, capture_output=True, text=True)
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
            assert "| a |" in proc.stdout and "not written" in proc.stdout and "--out" in proc.stderr
            out = tmp_path / "table.csv"
            proc = subprocess.run([*collect, "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
            assert proc.returncode == 0 and out.read_text().startswith("run,signal,field,psnr_db")
            assert f"table written to {out}" in proc.stdout
        finally:
            if os.geteuid() == 0:
                subprocess.run(["umount", str(runs)], capture_output=True)
    finally:
        os.chmod(runs, 0o755)


@pytest.mark.slow
def test_a_checkpoint_write_that_fails_on_one_rank_fails_every_rank_at_once(tmp_path):
    """Rank 1 alone cannot write its part of a checkpoint (a folder stands where one of its teacher files
    goes): the ranks met in different collectives and waited out a timeout of days. Now the failure is
    agreed: both end within seconds, the partial checkpoint is gone, and the same command resumes."""
    from dist_int.signal import assign_chunks

    run = tmp_path / "run"
    args = [*T, f"run.dir={run}", "train.steps=40", "checkpoint.every=20", "train.log_every=20"]
    # The 48 x 48 image in 32-pixel chunks: 4 chunks; one of rank 1's files of the checkpoint at step 20
    cid = assign_chunks(4, 2, 0)[1][0]
    assert run_train(args, nproc=2).returncode == 0  # the folder, with its signal and config
    for name in ("checkpoints", "summary.json", "metrics.jsonl", "reconstruction.zarr", "reconstruction.png"):
        shutil.rmtree(run / name) if (run / name).is_dir() else (run / name).unlink()
    (run / "checkpoints" / ".step-00000020.partial" / "teacher" / f"chunk-{cid:08d}.npy").mkdir(parents=True)
    started = time.time()
    proc = run_train(args, nproc=2, timeout=300)
    assert proc.returncode != 0 and time.time() - started < 120, proc.stderr[-3000:]
    assert "failed to save checkpoint step-00000020" in proc.stderr or "Is a directory" in proc.stderr, \
        proc.stderr[-3000:]
    assert not worker_traceback(proc.stderr), proc.stderr[-3000:]
    assert not (run / "checkpoints" / ".step-00000020.partial").exists() and debris(run) == []
