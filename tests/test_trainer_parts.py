"""The trainer's pieces on their own: target range, run folder paths, metrics log, stateful parts."""

import json
import os

import pytest
import torch

from conftest import ROOT
from dist_int.comm import Comm
from dist_int.config import Config, TeacherConfig
from dist_int.engine.deepspeed_engine import CosineLR
from dist_int.engine.metrics import MetricsLog
from dist_int.engine.state import RunState
from dist_int.render import psnr_db
from dist_int.rundir import RunDir
from conftest import PointTable
from dist_int.signal import TargetRange
from dist_int.teacher import BatchPlan, Teacher


@pytest.mark.parametrize("name, lo, hi", [("symmetric", -1.0, 1.0), ("unit", 0.0, 1.0)])
def test_target_range_round_trip_and_unit_scale_error(name, lo, hi):
    tr = TargetRange.named(name)
    assert (tr.lo, tr.hi) == (lo, hi)
    unit = torch.rand(1000, 3, generator=torch.Generator().manual_seed(0))
    enc = tr.encode(unit)
    assert enc.min() >= lo and enc.max() <= hi
    torch.testing.assert_close(tr.decode(enc), unit)
    # The error on the [0, 1] scale does not depend on the training range: PSNR compares across ranges.
    noisy_unit = (unit + 0.05 * torch.randn(1000, 3, generator=torch.Generator().manual_seed(1)))
    sse = tr.squared_error_unit(tr.encode(noisy_unit), enc)
    expect = (noisy_unit.clamp(0, 1) - unit).double().square().sum()
    torch.testing.assert_close(sse, expect, rtol=1e-5, atol=1e-7)
    assert psnr_db(float(sse), unit.numel()) == pytest.approx(psnr_db(float(expect), unit.numel()), abs=1e-4)


def test_run_dir_owns_every_path(tmp_path):
    run = RunDir(tmp_path / "r")
    assert run.config.name == "config.toml" and run.metrics.name == "metrics.jsonl"
    assert run.checkpoint(42) == run.checkpoints / "step-00000042"
    assert run.latest.parent == run.checkpoints and run.signal_store.parent == run.path
    assert run.check(Config()) is False  # no folder yet: a fresh run


def test_metrics_log_never_repeats_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (10, 20, 30, 40)) + "not json\n")
    with MetricsLog(path, enabled=True, resume_step=20) as log:  # resumed from the step-20 checkpoint
        log.write({"step": 30, "again": True})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10, 20, 30]
    with MetricsLog(path, enabled=True, resume_step=0) as log:  # a rerun with no checkpoint starts over
        log.write({"step": 10})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [10]
    MetricsLog(tmp_path / "other.jsonl", enabled=False, resume_step=0).write({"step": 1})
    assert not (tmp_path / "other.jsonl").exists()  # ranks other than 0 write nothing


def test_stateful_parts_round_trip():
    state = RunState(step=7, train_time_s=1.5, best_psnr_db=30.25, best_step=5)
    fresh = RunState()
    fresh.load_state_dict(json.loads(json.dumps(state.state_dict())))  # as meta.json stores it
    assert fresh == state
    # No best PSNR yet is "-inf" by name in plain JSON (-Infinity is not JSON) and -inf again when loaded.
    blank = json.loads(json.dumps(RunState().state_dict(), allow_nan=False))
    assert blank["best_psnr_db"] == "-inf"
    fresh.load_state_dict(blank)
    assert fresh.best_psnr_db == -float("inf")
    sched = CosineLR(100, 1e-3, 1e-6)
    sched.scale = 0.25
    other = CosineLR(100, 1e-3, 1e-6)
    other.load_state_dict(sched.state_dict())
    assert other(10) == sched(10) and other.scale == 0.25


def test_teacher_state_round_trips_through_chunk_files(tmp_path):
    sizes = [64] * 4
    own = [0, 1, 2, 3]
    start = torch.tensor([0, 64, 128, 192, 256]).numpy()
    gids = torch.arange(256)
    cfg = TeacherConfig(strategy="uniform", ratio=0.25, num_batches=2)
    t = Teacher(cfg, 10, 0, Comm(), BatchPlan(sizes, own, start, 2, 0), 256)
    for s in range(2):
        t.teaching_set(s, PointTable(torch.zeros(256, 1), torch.zeros(256, 1), gids), None)
    t2 = Teacher(cfg, 10, 0, Comm(), BatchPlan(sizes, own, start, 2, 0), 256)
    t.save_chunks(tmp_path / "teacher")
    assert sorted(p.name for p in (tmp_path / "teacher").iterdir()) == [f"chunk-{c:08d}.npy" for c in own]
    t2.load_chunks(tmp_path / "teacher", json.loads(json.dumps(t.state_dict())))  # as meta.json keeps it
    assert t2.cache.keys() == t.cache.keys()
    for b in t.cache:
        assert torch.equal(t2.cache[b].rows, t.cache[b].rows) and t2.cache[b].count == t.cache[b].count


def test_signal_too_large_for_order_keys_is_refused():
    from dist_int.errors import SignalError

    with pytest.raises(SignalError, match="at most 2\\^32"):
        Teacher(TeacherConfig(), 10, 0, Comm(), BatchPlan([4], [0], torch.tensor([0, 4]).numpy(), 1, 0),
                (1 << 32) + 1)


def test_collect_reports_a_stopped_run_from_its_checkpoint(tmp_path):
    """A run stopped before its summary (interrupted, or still running) shows its last checkpoint."""
    from dist_int.collect import collect
    from dist_int.rundir import to_toml

    run = RunDir(tmp_path / "runs" / "0-a")
    run.checkpoint(40).mkdir(parents=True)
    run.config.write_text(to_toml(Config().to_dict()))
    meta = {"format": 3, "step": 40, "status": "interrupted", "world_size": 2,
            "shared": {"run": RunState(step=40, train_time_s=12.3456).state_dict()}}
    run.checkpoint_meta(run.checkpoint(40).name).write_text(json.dumps(meta))
    run.latest.write_text(run.checkpoint(40).name)
    (row,) = collect(tmp_path / "runs")
    assert (row["steps"], row["train_time_s"], row["status"]) == (40, 12.346, "not finished (stopped)")


@pytest.mark.parametrize("mode, env, visible, expect", [
    # torchrun on a node of 8 GPUs: every GPU visible, LOCAL_RANK from torchrun.
    ("torchrun", {"RANK": "13", "WORLD_SIZE": "16", "LOCAL_RANK": "5"}, 8, (13, 16, 5)),
    # srun, one task per node, each running torchrun: torchrun's variables win over SLURM's.
    ("torchrun", {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "RANK": "10",
                  "WORLD_SIZE": "16", "LOCAL_RANK": "2"}, 8, (10, 16, 2)),
    # srun, one task per GPU with --gpus-per-task=1: each task sees one GPU (index 0), SLURM_LOCALID = 3.
    ("srun", {"SLURM_PROCID": "11", "SLURM_NTASKS": "16", "SLURM_LOCALID": "3", "MASTER_ADDR": "node-1"},
     1, (11, 16, 0)),
    # srun, one task per GPU without per-task binding: every GPU visible, the local id picks one.
    ("srun", {"SLURM_PROCID": "11", "SLURM_NTASKS": "16", "SLURM_LOCALID": "3", "MASTER_ADDR": "node-1"},
     8, (11, 16, 3)),
])
def test_the_device_and_the_local_rank_deepspeed_reads_agree_in_every_launch_mode(mode, env, visible, expect):
    """DeepSpeed calls set_device(LOCAL_RANK) itself: LOCAL_RANK must name the device we picked, or a task
    of `srun` with one GPU per task fails with "invalid device ordinal" (engine/launch.py)."""
    from dist_int.engine.launch import detect_launch, device_index

    env = dict(env)
    launch = detect_launch(env)
    index = device_index(launch.local_rank, visible, env)
    assert (launch.how, launch.rank, launch.world_size, index) == (mode, *expect)
    assert env["LOCAL_RANK"] == str(index) and env["RANK"] == str(expect[0]) and 0 <= index < visible


def test_a_host_that_would_publish_a_loopback_address_is_refused_with_the_fix():
    """Across hosts, gloo publishes the address the host's name resolves to; 127.0.1.1 (a common
    /etc/hosts entry) makes the other hosts wait until the timeout. One error line naming the variables."""
    from dist_int.engine.launch import check_host_address
    from dist_int.errors import ConfigError

    loop, lan = (lambda name: "127.0.1.1"), (lambda name: "10.1.2.3")
    two_hosts = {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}
    with pytest.raises(ConfigError, match="GLOO_SOCKET_IFNAME .*NCCL_SOCKET_IFNAME"):
        check_host_address(two_hosts, loop, lambda: "node-a")
    check_host_address(two_hosts, lan, lambda: "node-a")                                 # a routable address
    check_host_address({**two_hosts, "GLOO_SOCKET_IFNAME": "eth0"}, loop, lambda: "node-a")  # interface named
    check_host_address({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, loop, lambda: "node-a")  # one host


@pytest.mark.parametrize("strategy, snapshots, charged", [("uniform", 0, 2048), ("full", 0, 2048),
                                                          ("soft", 0, 262144), ("uniform", 5, 262144)])
def test_the_memory_check_charges_scoring_pieces_only_where_something_scores(strategy, snapshots, charged):
    """teacher.score_chunk (262144 by default) sizes the no-grad pass only for the error-driven teachers and
    for teaching-set snapshots; a run that lowered train.eval_chunk and never scores is charged for that."""
    from dist_int.config import Config
    from dist_int.engine.budget import plan_budget
    from dist_int.model import field_spec

    cfg = Config()
    cfg.teacher.strategy, cfg.train.eval_chunk, cfg.train.snapshot_every = strategy, 2048, snapshots
    cfg.train.memory_mb = 4096
    spec = field_spec(cfg.model, 2, 3, (2048, 2048))
    budget = plan_budget(cfg, torch.device("cpu"), spec, 1 << 22, 1024, 1, 0)  # batches of 1024 points
    part = next(k for k in budget.parts if k.startswith("for the activations"))
    assert f"({charged:,} points)" in part, part
    assert budget.parts[part] == max(spec.activation_bytes(1024, True), spec.activation_bytes(charged, False))


# Peaks of one call measured in a fresh process: the RSS's high-water mark (VmHWM), reset just before the
# call, above the RSS before it. With a fixed mmap threshold glibc maps every large tensor on its own and
# unmaps it when freed, so the RSS follows what is live (by default it raises the threshold after the
# first frees and serves the next allocations from memory it kept, which hides them from the RSS).
MEASURE_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
MEASURE_PEAK = """
import re, sys
import numpy as np, torch
sys.path.insert(0, "tests")
torch.set_num_threads(1)
def kib(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
def peak_of(call):
    base = kib("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
    call()
    return kib("VmHWM") - base
"""
MEASURE_ROWS = """
from dist_int.teacher import make_plan
sizes = [1 << 18] * 64                        # 16 M points in 64 chunks, 4 windows of 4 batches
start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
plan = make_plan(sizes, list(range(64)), start, 16, 0, "cpu", windows=4, steps=64)
plan.rows(0)                                  # warm: the window's state and the previous batch's rows
rows = []
peak = peak_of(lambda: rows.append(plan.rows(1)))
print(rows[0].numel(), peak)
"""
MEASURE_SELECTION = """
from conftest import PointTable
from dist_int.comm import Comm
from dist_int.config import TeacherConfig
from dist_int.teacher import Teacher, make_plan
n = 1 << 21
start = np.arange(0, n + 1, n // 16, dtype=np.int64)
plan = make_plan([n // 16] * 16, list(range(16)), start, 1, 0, "cpu", steps=10)
table = PointTable(torch.zeros(n, 1), torch.zeros(n, 1), torch.arange(n))
cfg = TeacherConfig(strategy=sys.argv[1], ratio=0.2, ratio_schedule="constant", interval_schedule="dense",
                    score_chunk=16384)
teacher = Teacher(cfg, 10, 0, Comm(), plan, n)
predict = lambda x: torch.ones(x.shape[0], 1)
teacher.teaching_set(0, table, predict)       # warm, then drop the set
teacher.cache.clear()
print(n, peak_of(lambda: teacher.teaching_set(1, table, predict)))
"""


def measured_peak(script: str, *args: str) -> tuple[int, int]:
    """(points, peak bytes) that `script` prints, run after MEASURE_PEAK in a fresh process."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", MEASURE_PEAK + script, *args], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env=MEASURE_ENV)
    assert out.returncode == 0, out.stderr
    n, peak = map(int, out.stdout.split())
    return n, peak


@pytest.mark.parametrize("strategy", ["soft", "mix"])
def test_the_memory_check_charges_what_a_selection_takes(strategy):
    """engine/budget.py's SELECT_BYTES per candidate covers a selection's peak (ids, scores, noise, order
    keys and their temporaries); soft and mix are the teachers that hold the most per candidate."""
    from dist_int.engine.budget import SELECT_BYTES

    n, peak = measured_peak(MEASURE_SELECTION, strategy)
    assert peak > 30 * n and peak <= SELECT_BYTES * n, (peak / n, SELECT_BYTES)


def test_the_memory_check_charges_what_a_batch_s_rows_take():
    """engine/budget.py's ROW_BYTES per point of a batch covers what BatchPlan.rows holds at its peak (the
    keyed order's temporaries and the previous batch's rows)."""
    from dist_int.engine.budget import ROW_BYTES

    rows, peak = measured_peak(MEASURE_ROWS)
    assert rows == 1 << 20 and peak > 40 * rows  # the measurement sees the temporaries at all
    assert peak <= ROW_BYTES * rows, (peak / rows, ROW_BYTES)


def test_a_whole_signal_plan_gives_the_same_rows_every_epoch():
    """One batch of one window: rows(step) is kept between steps, and equals a fresh plan's rows at any
    epoch (teacher/batches.py)."""
    import numpy as np

    from dist_int.teacher import BatchPlan

    sizes, own = [5, 7, 3, 6], [0, 2, 3]
    start = np.concatenate([[0], np.cumsum([sizes[c] for c in own])])
    plan = BatchPlan(sizes, own, start, 1, 0)
    first = plan.rows(0)
    assert plan.rows(7) is first
    assert torch.equal(BatchPlan(sizes, own, start, 1, 0).rows(7), first)
    assert torch.equal(first, torch.arange(int(start[-1]), dtype=first.dtype))


@pytest.mark.parametrize("kind", ["hash", "siren"])
def test_cpu_inference_pieces_keep_every_score_and_the_teaching_set(kind):
    """On a CPU the no-grad forward runs in cache-sized pieces (model/infer.py, CPU_PIECE): every point's
    score matches the one-call forward and the top-k of the scores is the same set."""
    from dist_int.model import HashField, Siren
    from dist_int.model.infer import CPU_PIECE, padded
    from dist_int.teacher.teacher import l1_error, point_l1

    torch.manual_seed(0)
    model = (HashField(2, 3, hidden=64, layers=3, levels=16, log2_table=14, finest_resolution=4095,
                       axis_lengths=(4096, 4096)) if kind == "hash" else Siren(2, 3, 64, 3))
    if kind == "hash":
        with torch.no_grad():
            model.encoding.table.normal_(0, 0.1)
    n = 2 * CPU_PIECE + 1234
    points = PointTable(torch.rand(n, 2) * 2 - 1, torch.rand(n, 3), torch.arange(n))
    calls = []

    def predict(x):
        calls.append(x.shape[0])
        return model(x)

    rows = torch.arange(n)
    scores = l1_error(predict, points, rows, n)          # one piece of rows: its forward in sub-pieces
    assert len(calls) == 3 and sum(calls) == n and max(calls) <= CPU_PIECE and min(calls) >= CPU_PIECE // 2
    with torch.no_grad():
        whole = point_l1(padded(model, points.coords()), points.targets())
    torch.testing.assert_close(scores, whole, rtol=1e-6, atol=1e-7)
    k = n // 5
    assert torch.equal(torch.sort(torch.topk(scores, k).indices).values, torch.sort(torch.topk(whole, k).indices).values)
