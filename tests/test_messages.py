"""Advice that works: an error or warning names the setting that causes it, and the fix it suggests
changes the outcome."""

import pytest

from conftest import run_train

T = ["--config", "configs/demo.toml", "train.steps=10", "signal.chunk=32", "train.log_every=10",
     "train.eval_every=0", "signal.path=builtin:camera@48"]


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
