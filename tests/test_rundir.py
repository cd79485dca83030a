"""The run folder under misuse: a refused config change keeps config.toml, a damaged latest checkpoint, a
folder in use or moved, a failed start, a lock from another host. Nothing existing is overwritten, no
half-made folder is left, and the corrected command then works."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import QUICK, ROOT, failed_clearly, quick_train as train, read_metrics

@pytest.mark.slow
def test_a_refused_config_change_keeps_config_toml(png, tmp_path):
    run = tmp_path / "cc"
    assert train(f"signal.path={png}", f"run.dir={run}").returncode == 0
    before = (run / "config.toml").read_bytes()
    proc = train(f"signal.path={png}", f"run.dir={run}", "model.hidden=32", "run.allow_config_change=true")
    assert failed_clearly(proc, "cannot load checkpoint"), proc.stderr
    assert (run / "config.toml").read_bytes() == before
    assert train(f"signal.path={png}", f"run.dir={run}").returncode == 0  # the original command still works

@pytest.mark.slow
def test_a_missing_latest_checkpoint_resumes_from_the_newest_intact_one(png, tmp_path):
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

@pytest.mark.slow
def test_a_run_folder_in_use_is_refused_and_a_stale_lock_taken_over(png, tmp_path):
    run = tmp_path / "r"
    args = [f"signal.path={png}", f"run.dir={run}", "train.steps=400"]
    first = subprocess.Popen([sys.executable, "launch/train.py", *QUICK, *args], cwd=ROOT, stdout=subprocess.PIPE,
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

def test_a_lock_from_another_host_is_refused_unless_it_is_this_slurm_job_requeued(tmp_path, monkeypatch):
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

@pytest.mark.slow
def test_a_failure_after_setup_leaves_no_folder_and_the_fix_runs(png, tmp_path):
    proc = train(f"signal.path={png}", f"run.dir={tmp_path / 'nb'}", "teacher.num_batches=5000")
    assert failed_clearly(proc, "teacher.num_batches=5000"), proc.stderr
    assert not (tmp_path / "nb").exists()
    assert train(f"signal.path={png}", f"run.dir={tmp_path / 'nb'}", "teacher.num_batches=4").returncode == 0

@pytest.mark.slow
def test_a_moved_run_folder_resumes(png, tmp_path):
    assert train(f"signal.path={png}", f"run.dir={tmp_path / 'a'}", "train.steps=10").returncode == 0
    shutil.move(tmp_path / "a", tmp_path / "b")
    proc = train(f"signal.path={png}", f"run.dir={tmp_path / 'b'}/", "train.steps=10")
    assert proc.returncode == 0, proc.stderr

@pytest.mark.slow
def test_a_run_keeps_its_signal_and_its_step_count(png, tmp_path):
    run = tmp_path / "r"
    assert train("signal.path=builtin:camera@64", f"run.dir={run}").returncode == 0
    proc = train("signal.path=builtin:astronaut@64", f"run.dir={run}", "run.allow_config_change=true")
    assert failed_clearly(proc, "keeps the signal it started with"), proc.stderr
    proc = train("signal.path=builtin:camera@64", f"run.dir={run}", "run.allow_config_change=true",
                 "train.steps=10")
    assert failed_clearly(proc, "already trained 20 steps"), proc.stderr

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
