"""The sbatch scripts on a real one-node SLURM cluster that this module starts (slurm/local-cluster.sh)."""

import contextlib
import os
import re
import shutil
import subprocess
import time

import pytest
from PIL import Image

from conftest import ROOT, read_summary, smooth_image

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # a real SLURM / network-namespace hosts (root)

PSNR_FLOOR_DB = 25.0  # 4x32 SIREN, 200 steps: the three images reach 27-34 dB
TINY = ["signal.chunk=16", "model.hidden=32", "model.layers=4", "train.log_every=10", "train.eval_every=0"]


@contextlib.contextmanager
def local_cluster(state, *options: str):
    """slurm/local-cluster.sh started in `state` (with `options`, e.g. --nodes 2), SLURM_CONF pointing at
    it; jobs cancelled and the cluster stopped afterwards."""
    if shutil.which("slurmctld") is None:
        pytest.fail("SLURM is not installed: apt-get install slurm-wlm munge (.ci/run does this)")
    script = str(ROOT / "slurm" / "local-cluster.sh")
    out = subprocess.run([script, "start", str(state), *options], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        yield state
    finally:
        subprocess.run(["scancel", "--user", "root"], capture_output=True)
        subprocess.run([script, "stop", str(state)], capture_output=True)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with local_cluster(tmp_path_factory.mktemp("slurm")) as state:
        yield state


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("imgs")
    paths = []
    for i in range(3):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(smooth_image(seed=i)).save(paths[-1])
    return paths


def sbatch(args: list[str], env: dict | None = None) -> int:
    out = subprocess.run(["sbatch", "--parsable", *args], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().split(";")[0])


def job_field(job: int, field: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", str(job)], capture_output=True, text=True).stdout
    m = re.search(rf"\b{field}=(\S+)", out)
    return m.group(1) if m else ""


def wait_state(job: int, states: set[str], timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = job_field(job, "JobState")
        if s in states:
            return s
        time.sleep(0.5)
    raise AssertionError(f"job {job} not in {states} after {timeout} s (last: {job_field(job, 'JobState')})")


def preempt_and_finish(job: int, metrics, lines: int, out) -> tuple[str, str]:
    """Once `metrics` has `lines` lines, USR1 to the batch shell (what SLURM does before a time limit with
    --signal=B:USR1@...); waits for the requeue, starts the requeued job as soon as every node is idle,
    and returns its final state and the job's output."""
    wait_running_until(job, out, lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= lines)
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(job)], check=True)
    wait_requeued(job, out)
    return start_requeued(job, out)


def wait_running_until(job: int, out, ready, timeout: float = 300) -> None:
    """Waits until ready() while the job is pending or running (its output in the error otherwise)."""
    deadline = time.time() + timeout
    while not ready():
        assert time.time() < deadline and job_field(job, "JobState") in ("PENDING", "RUNNING"), \
            out.read_text() if out.exists() else "no output"
        time.sleep(0.2)


def wait_requeued(job: int, out, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while job_field(job, "Restarts") in ("", "0"):
        assert time.time() < deadline, out.read_text()
        time.sleep(0.5)


def start_requeued(job: int, out) -> tuple[str, str]:
    """Starts a requeued job as soon as every node is idle; returns its final state and the job's output."""
    # A requeued job waits out a begin-time hold (~2 minutes); once the first run has fully left the nodes
    # (its credential revoked, every node idle again), start it now, as a free cluster would.
    wait_state(job, {"PENDING"}, timeout=120)
    deadline = time.time() + 60
    while set(subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True).stdout.split()) != {"idle"}:
        assert time.time() < deadline, "the nodes did not become idle after the requeue"
        time.sleep(0.5)
    time.sleep(5)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
    return wait_state(job, {"COMPLETED", "FAILED", "CANCELLED"}), out.read_text()


def test_array_job_and_collect(cluster, images, tmp_path):
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("# three small images\n" + "\n".join(map(str, images)) + "\n\n")
    root = tmp_path / "runs"
    job = sbatch(["--wait", "--array=0-2%2", f"--output={tmp_path}/%A_%a.out", "slurm/array.sbatch",
                  str(manifest), "configs/demo.toml", str(root), *TINY, "train.steps=200"])
    logs = "".join(p.read_text() for p in tmp_path.glob("*.out"))
    out = subprocess.run(["python", "-m", "dist_int", "collect", str(root)], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr + logs
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 000")]
    assert len(rows) == 3, out.stdout + logs
    for i, row in enumerate(rows):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == f"{i:04d}-img{i}" and cells[1] == str(images[i])
        assert cells[2] == "siren" and float(cells[3]) > PSNR_FLOOR_DB and cells[10] == "200" and cells[11] == "complete"
    csv = (root / "runs.csv").read_text().splitlines()
    assert csv[0] == "run,signal,field,psnr_db,field_bytes,bits_per_sample,ssim,iou,chamfer,train_time_s,steps," \
        "status" \
        and len(csv) == 4
    assert job > 0


def _train_job(tmp_path, run_dir, image, steps, name):
    return sbatch([f"--output={tmp_path}/{name}.out", "--cpus-per-task=2", "slurm/train.sbatch", "configs/demo.toml",
                   f"run.dir={run_dir}", f"signal.path={image}", *TINY, f"train.steps={steps}",
                   "checkpoint.every=500"], env={"PROCS_PER_NODE": "2"})


STEPS = 1500


@pytest.fixture(scope="module")
def sbatch_reference(cluster, images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref")
    job = _train_job(folder, folder / "run", images[0], STEPS, "ref")
    state = wait_state(job, {"COMPLETED", "FAILED", "CANCELLED"})
    assert state == "COMPLETED", (folder / "ref.out").read_text()
    return folder


def test_train_sbatch_runs_two_ranks_on_one_node(sbatch_reference):
    summary = read_summary(sbatch_reference / "run")
    assert summary["world_size"] == 2 and summary["steps"] == STEPS and summary["psnr_db"] > PSNR_FLOOR_DB
    log = (sbatch_reference / "ref.out").read_text()
    assert "2 rank(s)" in log
    # The node's 2 CPUs shared by the 2 workers: one thread each, not 2 each (slurm/run-with-requeue.sh).
    assert "2 worker(s) per node, 2 CPU(s) on the node, OMP_NUM_THREADS=1" in log, log


def test_a_job_that_cannot_be_requeued_fails_instead_of_completing(cluster, images, tmp_path):
    """Preempted with --no-requeue: the checkpoint is written, SLURM refuses the requeue, and the job ends
    FAILED with a line saying to submit it again, not COMPLETED as if it had finished."""
    run_dir, out = tmp_path / "run", tmp_path / "job.out"
    job = sbatch([f"--output={out}", "--no-requeue", "--cpus-per-task=2", "slurm/train.sbatch", "configs/demo.toml",
                  f"run.dir={run_dir}", f"signal.path={images[0]}", *TINY, "train.steps=100000"],
                 env={"PROCS_PER_NODE": "2"})
    metrics = run_dir / "metrics.jsonl"
    wait_running_until(job, out, lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, 120)
    subprocess.run(["scancel", "--signal=USR1", "--batch", str(job)], check=True)
    state = wait_state(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    log = out.read_text()
    assert state == "FAILED" and "stopped by SIGUSR1" in log, (state, log[-3000:])
    assert "could not requeue job" in log and "submit the same command again" in log, log[-3000:]


def test_usr1_requeues_and_resumes_to_the_same_result(cluster, images, tmp_path, sbatch_reference):
    run_dir = tmp_path / "run"
    job = _train_job(tmp_path, run_dir, images[0], STEPS, "pre")
    state, log = preempt_and_finish(job, run_dir / "metrics.jsonl", 10, tmp_path / "pre.out")
    assert state == "COMPLETED", log
    assert "stopped by SIGUSR1" in log and "requeueing job" in log and "resuming" in log
    resumed, reference = read_summary(run_dir), read_summary(sbatch_reference / "run")
    assert resumed["steps"] == STEPS
    assert abs(resumed["psnr_db"] - reference["psnr_db"]) <= 0.05


def test_stop_makes_nothing_and_kills_only_its_own_daemons(tmp_path):
    """`stop DIR` on a folder with no bed created DIR; a pid file left by a killed bed may name a process
    that got the number since, which `stop` killed."""
    script = str(ROOT / "slurm" / "local-cluster.sh")
    missing = tmp_path / "never-made"
    assert subprocess.run([script, "stop", str(missing)], capture_output=True).returncode == 0
    assert not missing.exists()
    state = tmp_path / "old-bed"
    state.mkdir()
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        (state / "slurmctld.pid").write_text(f"{bystander.pid}\n")
        (state / "slurmd.pid").write_text("not a pid\n")
        assert subprocess.run([script, "stop", str(state)], capture_output=True).returncode == 0
        assert bystander.poll() is None  # still running: not a daemon of the bed
        assert not (state / "slurmctld.pid").exists()  # the stale pid file is gone
    finally:
        bystander.kill()
