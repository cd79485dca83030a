"""Advice that works: an error or warning names the setting that causes it, and the fix it suggests
changes the outcome."""

import pytest

from conftest import run_train

T = ["--config", "configs/demo.toml", "train.steps=10", "signal.chunk=32", "train.log_every=10",
     "train.eval_every=0", "signal.path=builtin:camera@48"]


@pytest.mark.slow
def test_a_wide_hash_mlp_is_blamed_on_its_width_and_a_large_table_on_its_rows(tmp_path):
    proc = run_train([*T, "model.kind=hash", "model.hidden=60000", "train.memory_mb=2048",
                      f"run.dir={tmp_path / 'wide'}"])
    assert proc.returncode == 2 and "model.hidden=60000" in proc.stderr and "lower model.hidden" in proc.stderr, \
        proc.stderr
    assert "log2_table" not in proc.stderr
    proc = run_train([*T, "model.kind=hash", "model.log2_table=16", "train.memory_mb=10",
                      "signal.path=builtin:camera@256", f"run.dir={tmp_path / 'rows'}"])
    assert proc.returncode == 2 and "model.log2_table=16" in proc.stderr and "lower model.log2_table" in \
        proc.stderr, proc.stderr


@pytest.mark.slow
def test_a_budget_beyond_the_memory_of_the_host_is_a_warning(tmp_path):
    from dist_int.hostmem import memory_limit

    limit, _ = memory_limit()
    asked = 4 * limit / 2**20
    proc = run_train([*T, "model.hidden=16", "model.layers=2", f"train.memory_mb={asked:.0f}",
                      f"run.dir={tmp_path / 'r'}"])
    assert proc.returncode == 0, proc.stderr
    assert "warning: train.memory_mb=" in proc.stdout and "the run may be killed for memory" in proc.stdout


def test_the_job_memory_limit_is_the_smallest_of_ram_cgroup_and_slurm(tmp_path):
    from dist_int.hostmem import cgroup_limit, memory_limit, slurm_limit

    assert slurm_limit({"SLURM_MEM_PER_NODE": "3300"}) == (3300 << 20, "SLURM_MEM_PER_NODE")
    assert slurm_limit({"SLURM_MEM_PER_CPU": "1000", "SLURM_CPUS_ON_NODE": "4"})[0] == 4000 << 20
    assert slurm_limit({}) is None
    assert slurm_limit({"SLURM_MEM_PER_NODE": "0"}) is None  # --mem=0: the whole node, no limit
    assert memory_limit({"SLURM_MEM_PER_NODE": "1"}) == (1 << 20, "SLURM_MEM_PER_NODE")
    # cgroup v1 and v2 as /proc/self/mountinfo and /proc/self/cgroup describe them (here: files in tmp_path)
    v1, v2 = tmp_path / "memory", tmp_path / "unified"
    (v1 / "job" / "step").mkdir(parents=True)
    (v2 / "job").mkdir(parents=True)
    (v1 / "job" / "memory.limit_in_bytes").write_text(str(3 << 30))
    (v1 / "job" / "step" / "memory.limit_in_bytes").write_text(str(9223372036854771712))  # unlimited itself
    (v2 / "job" / "memory.max").write_text("max")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(f"30 20 0:26 / {v1} rw,nosuid - cgroup cgroup rw,memory\n"
                         f"31 20 0:27 / {v2} rw,nosuid - cgroup2 cgroup2 rw\n")
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("4:memory:/job/step\n0::/job\n")
    assert cgroup_limit(str(cgroup), str(mountinfo)) == (3 << 30, str(v1 / "job" / "memory.limit_in_bytes"))
    (v2 / "job" / "memory.max").write_text(str(1 << 30))
    assert cgroup_limit(str(cgroup), str(mountinfo))[0] == 1 << 30


@pytest.mark.cluster
def test_a_job_in_a_memory_cgroup_takes_its_budget_from_the_group_and_lives_within_it(tmp_path):
    """Two ranks started in a real cgroup v1 memory group (as SLURM's --mem makes one), with no memory flag:
    the budget is the group's limit less the launcher's headroom, shared by the ranks, the log says so, and
    the job ends without the kernel killing anything (docs/training.md, "How the parts are sized")."""
    import os
    import re
    import subprocess
    import time
    import uuid
    from pathlib import Path

    from conftest import ROOT, train_cmd, train_env
    from dist_int.engine.budget import LAUNCHER_BYTES, RANK_BASE_BYTES, SAFETY

    root = Path("/sys/fs/cgroup/memory")
    if not os.access(root, os.W_OK):
        pytest.skip("needs root and the cgroup v1 memory controller mounted writable (../NOTES.md)")
    limit = 2600 << 20
    group = root / f"dist_int_test_{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        cmd = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh",
               *train_cmd([*T, "model.hidden=16", "model.layers=2", f"run.dir={tmp_path / 'r'}"], 2)]
        proc = subprocess.run(cmd, env=train_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
        kills = re.search(r"oom_kill (\d+)", (group / "memory.oom_control").read_text())
    finally:
        for _ in range(100):  # removable once the group's last process is gone
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    share = int((limit - LAUNCHER_BYTES - 2 * RANK_BASE_BYTES) * SAFETY / 2)
    found = re.search(r"budget per rank ([\d,]+) MiB \((.*?);", proc.stdout + proc.stderr)
    assert found and int(found.group(1).replace(",", "")) == round(share / 2**20), (found and found.groups())
    assert "memory.limit_in_bytes (2,600 MiB) shared by 2 rank(s)" in found.group(2)
    assert kills is not None and kills.group(1) == "0"  # the kernel killed nothing in the group


def _damaged_source(tmp_path):
    """A Zarr source whose chunk row 1 (rank 1's first slab of 16 rows) is damaged: only rank 1 reads it."""
    import zarr

    from conftest import smooth_image

    src = tmp_path / "src.zarr"
    arr = zarr.create_array(src, shape=(64, 64, 3), chunks=(16, 16, 1), dtype="uint8")  # copied, not linked
    arr[...] = smooth_image(64, 64)
    (src / "c" / "1" / "0" / "0").write_bytes(b"not a zstd frame")
    return ["--config", "configs/demo.toml", "model.hidden=16", "model.layers=2", "train.steps=10",
            f"signal.path={src}", "signal.chunk=16", f"run.dir={tmp_path / 'run'}"]


def _one_error_line(proc, tmp_path) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-3000:]
    assert "cannot read" in lines[0] and "16..32" in lines[0], lines
    assert not (tmp_path / "run").exists()  # the folder that start made is gone


@pytest.mark.slow
def test_a_start_up_error_on_rank_1_reaches_the_screen_under_torchrun(tmp_path):
    """Rank 1 alone fails while copying its share of the signal (a damaged chunk of a Zarr source that only
    it reads). torchrun stops the other workers as soon as one exits: the line used to die with them, and
    the user saw only torchrun's ChildFailedError. Now the failing rank prints it before any rank leaves."""
    _one_error_line(run_train(_damaged_source(tmp_path), nproc=2), tmp_path)


@pytest.mark.slow
def test_dist_int_train_starts_its_ranks_and_reports_a_failure_in_one_line(tmp_path):
    """`dist-int train --nproc-per-node 2` runs torchrun itself: a worker's failure is that worker's one
    line and exit code 2, with none of torchrun's traceback; a good run ends as under torchrun."""
    import subprocess
    import sys

    from conftest import ROOT, read_summary, train_env

    def dist_int(args):
        return subprocess.run([sys.executable, "-m", "dist_int", "train", "--nproc-per-node", "2", *args],
                              cwd=ROOT, env=train_env(), capture_output=True, text=True, timeout=600)

    proc = dist_int(_damaged_source(tmp_path))
    _one_error_line(proc, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, \
        proc.stderr[-3000:]
    proc = dist_int([*T, f"run.dir={tmp_path / 'good'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_summary(tmp_path / "good")["world_size"] == 2


@pytest.mark.slow
def test_dist_int_train_passes_a_stop_signal_on_and_exits_75(tmp_path):
    """SIGTERM to `dist-int train --nproc-per-node 2`: the ranks checkpoint and the command exits 75, as under
    torchrun (docs/usage.md, "Faults"); the same command resumes."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT, train_env

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "dist_int", "train", "--nproc-per-node", "2", *T, "train.steps=100000",
           "checkpoint.every=0", f"run.dir={run_dir}"]
    with open(tmp_path / "out.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=train_env(), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.time() + 300
        while not (run_dir / "metrics.jsonl").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=300)
    out = (tmp_path / "out.log").read_text()
    assert code == 75 and "stopped by SIGTERM" in out and "Traceback" not in out, out[-3000:]
    assert (run_dir / "checkpoints" / "latest").is_file()


def test_command_line_niceties():
    """--help through a closed pipe ends quietly; an unknown key suggests the nearest; the progress line
    says at which step its PSNR was measured."""
    import subprocess
    import sys

    from conftest import ROOT
    from dist_int.config import load_config
    from dist_int.errors import ConfigError
    from dist_int.progress import Progress

    proc = subprocess.Popen([sys.executable, "-m", "dist_int", "--help"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**__import__("os").environ, "PYTHONUNBUFFERED": "1"})
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and "BrokenPipeError" not in err and "Traceback" not in err, err
    with pytest.raises(ConfigError, match=r"'teacher\.rato'; did you mean teacher\.ratio\?$"):
        load_config(None, ["teacher.rato=0.3"])
    with pytest.raises(ConfigError, match=r"the keys of \[train\] are steps, "):
        load_config(None, ["train.zzz=1"])
    progress = Progress(100, 0, enabled=False, tty=False)
    progress.update(50, 0.1, 31.5, 1e6)
    progress.update(60, 0.1, None, 1e6)
    assert "psnr 31.50 dB (at step 50)" in progress.line(60) and "(at step" not in progress.line(50)
