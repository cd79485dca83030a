"""Several hosts on this machine: the bed of slurm/local-cluster.sh --nodes 2 (network namespaces with
their own address, hostname and /etc/hosts on a private bridge, a slurmd each; docs/cluster.md). Real
processes, real SLURM, one bed for the module. Skipped, with the reason, only where namespaces cannot be
made (not root, or no `ip netns`)."""

import os
import shutil
import subprocess
import time

import pytest
from PIL import Image

from conftest import ROOT, free_port, read_metrics, read_summary, run_train, smooth_image, train_env
from test_slurm import (job_field, local_cluster, preempt_and_finish, sbatch, start_requeued, wait_requeued,
                        wait_running_until, wait_state)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # a real SLURM / network-namespace hosts (root)

BED = ROOT / "slurm" / "local-cluster.sh"
ARGS = ["--config", "configs/demo.toml", "signal.chunk=16", "model.hidden=32", "model.layers=4",
        "train.log_every=20", "train.eval_every=0", "checkpoint.every=100"]
STEPS = 1000


def _namespaces_work() -> str | None:
    """None when network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        return "no `ip` or `nsenter` command (iproute2, util-linux)"
    name = f"dintprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


@pytest.fixture(scope="module")
def bed(tmp_path_factory):
    why = _namespaces_work()
    if why:
        pytest.skip(f"cannot make separate hosts here: {why}")
    state = tmp_path_factory.mktemp("bed")
    with local_cluster(state, "--nodes", "2"):
        yield state
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(_namespace(state, k) in left for k in (1, 2)), left  # stop removed what it made


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray(smooth_image()).save(path)
    return path


@pytest.fixture(scope="module")
def reference(image, tmp_path_factory):
    """The same run on one host with 2 ranks."""
    run = tmp_path_factory.mktemp("ref") / "run"
    r = run_train([*ARGS, f"signal.path={image}", f"run.dir={run}", f"train.steps={STEPS}"], nproc=2)
    assert r.returncode == 0, r.stdout + r.stderr
    return read_summary(run)


def on_host(bed, k: int, cmd: list[str], log) -> subprocess.Popen:
    """Starts cmd on host node-k of the bed (its namespace, hostname and /etc/hosts)."""
    return subprocess.Popen([str(BED), "exec", str(bed), str(k), *cmd], cwd=ROOT, env=train_env(),
                            stdout=log, stderr=subprocess.STDOUT, text=True)


def two_host_torchrun(bed, tmp_path, args: list[str], port: int) -> list[subprocess.Popen]:
    cmd = ["python3", "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=node-1:{port}", f"--rdzv-id=t{port}", "launch/train.py", *args]
    return [on_host(bed, k, cmd, open(tmp_path / f"host{k}.log", "w")) for k in (1, 2)]


def test_the_bed_has_two_hosts_that_resolve_each_other(bed):
    out = subprocess.run([str(BED), "exec", str(bed), "2", "sh", "-c", "hostname; getent hosts node-1 node-2"],
                         capture_output=True, text=True, timeout=30)
    lines = out.stdout.split("\n")
    assert lines[0] == "node-2" and "node-1" in out.stdout and "node-2" in lines[2], out.stdout + out.stderr
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True).stdout.split("\n")
    assert [n.split()[0] for n in nodes if n] == ["node-1", "node-2"], nodes


def test_torchrun_across_two_hosts_ends_where_one_host_ends(bed, image, reference, tmp_path):
    """The teaching set does not depend on placement: 2 hosts x 1 rank = 1 host x 2 ranks."""
    run = tmp_path / "run"
    procs = two_host_torchrun(bed, tmp_path, [*ARGS, f"signal.path={image}", f"run.dir={run}",
                                              f"train.steps={STEPS}"], free_port())
    codes = [p.wait(timeout=300) for p in procs]
    logs = "".join((tmp_path / f"host{k}.log").read_text() for k in (1, 2))
    assert codes == [0, 0], logs
    s = read_summary(run)
    assert s["world_size"] == 2 and abs(s["psnr_db"] - reference["psnr_db"]) <= 0.05, (s["psnr_db"], reference)


def test_sbatch_on_two_nodes_ends_where_one_host_ends(bed, image, reference, tmp_path):
    run = tmp_path / "run"
    job = sbatch([f"--output={tmp_path}/job.out", "--nodes=2", "slurm/train.sbatch", *ARGS[1:2],
                  *ARGS[2:], f"signal.path={image}", f"run.dir={run}", f"train.steps={STEPS}"],
                 env={"PROCS_PER_NODE": "1"})
    state = wait_state(job, {"COMPLETED", "FAILED", "CANCELLED"})
    log = (tmp_path / "job.out").read_text()
    assert state == "COMPLETED", log
    assert "on node-[1-2]" in log  # one task per node, each running torchrun
    s = read_summary(run)
    assert s["world_size"] == 2 and abs(s["psnr_db"] - reference["psnr_db"]) <= 0.05, (s["psnr_db"], reference)


def test_preempting_a_two_node_job_requeues_and_resumes_to_the_same_result(bed, image, reference, tmp_path):
    run = tmp_path / "run"
    job = sbatch([f"--output={tmp_path}/job.out", "--nodes=2", "slurm/train.sbatch", *ARGS[1:2], *ARGS[2:],
                  f"signal.path={image}", f"run.dir={run}", f"train.steps={STEPS}"], env={"PROCS_PER_NODE": "1"})
    state, log = preempt_and_finish(job, run / "metrics.jsonl", 4, tmp_path / "job.out")
    assert state == "COMPLETED", log
    assert "stopped by SIGUSR1" in log and "resuming" in log
    s = read_summary(run)
    assert s["steps"] == STEPS and abs(s["psnr_db"] - reference["psnr_db"]) <= 0.05, (s["psnr_db"], reference)


def two_node_job(image, run, out, *extra: str):
    """A 2-node sbatch of train.sbatch, returned once its metrics reach step 120."""
    job = sbatch([f"--output={out}", "--nodes=2", "slurm/train.sbatch", *ARGS[1:2], *ARGS[2:],
                  f"signal.path={image}", f"run.dir={run}", "train.timeout_s=30", *extra], env={"PROCS_PER_NODE": "1"})
    wait_running_until(job, out, lambda: (run / "metrics.jsonl").exists()
                       and any(m.get("step", 0) >= 120 for m in read_metrics(run)))
    return job


def processes_end(run, since: float, bound: float) -> tuple[list[str], float]:
    """Waits until no process has the run folder in its arguments (trainers, torchrun agents, srun, the
    batch script), at most until `since` + `bound`; returns those left and the seconds since `since`."""
    left = ["?"]
    while left and time.time() - since <= bound:
        time.sleep(1)
        left = subprocess.run(["pgrep", "-f", f"run.dir={run}"], capture_output=True, text=True).stdout.split()
    return left, time.time() - since


def test_a_cut_link_ends_every_process_and_the_slurm_job_requeues_and_resumes(bed, image, reference, tmp_path):
    """Host 2's link goes down mid-run of a 2-node SLURM job: every process of the run on both hosts ends
    within train.timeout_s + 60 s, the job's output names the lost host in one line, and the job requeues
    itself at once (srun alone would wait for the controller to declare node-2 down); with the link back the
    requeued job resumes from the last complete checkpoint and ends where the uninterrupted run ends."""
    run, out = tmp_path / "run", tmp_path / "job.out"
    job = two_node_job(image, run, out, f"train.steps={STEPS}", "checkpoint.every=40")
    ns = _namespace(bed, 2)
    subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "down"], check=True)
    try:
        left, took = processes_end(run, time.time(), 30 + 60)
        wait_requeued(job, out, timeout=30)
    finally:
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
    log = out.read_text()
    assert not left, (left, log[-3000:])
    assert "rank 0 on node-1" in log and "lost contact with node-2 (rank 1)" in log, log[-3000:]
    assert "a host was lost" in log and "requeueing job" in log, log[-3000:]
    # The link is back: node-2 answers, the requeued job starts and resumes.
    state, log = start_requeued(job, out)
    assert state == "COMPLETED" and "resuming" in log, log[-3000:]
    s = read_summary(run)
    assert s["steps"] == STEPS and abs(s["psnr_db"] - reference["psnr_db"]) <= 0.05, (s["psnr_db"], reference)
    print(f"every process ended {took:.0f} s after the cut (train.timeout_s = 30)")


def _namespace(bed, k: int) -> str:
    """The namespace of host node-k (local-cluster.sh names them from the bed's folder)."""
    tag = int(subprocess.run(["sh", "-c", f"printf '%s' '{bed}' | cksum"], capture_output=True, text=True)
              .stdout.split()[0]) % 100000
    return f"din{tag}-{k}"


def test_an_array_job_spread_over_two_nodes_collects_into_one_table(bed, image, tmp_path):
    """Two array tasks at once: SLURM puts them on different nodes; `collect` reads both runs."""
    manifest = tmp_path / "manifest.txt"
    manifest.write_text(f"{image}\n{image}\n")
    root = tmp_path / "runs"
    job = sbatch(["--wait", "--array=0-1", "--exclusive", f"--output={tmp_path}/%A_%a.out", "slurm/array.sbatch",
                  str(manifest), *ARGS[1:2], str(root), *ARGS[2:], "train.steps=100"])
    hosts = {job_field(f"{job}_{i}", "BatchHost") for i in (0, 1)}
    assert hosts == {"node-1", "node-2"}, hosts
    out = subprocess.run(["python3", "-m", "dist_int", "collect", str(root)], cwd=ROOT, capture_output=True,
                         text=True)
    rows = [line for line in out.stdout.splitlines() if line.startswith("| 000")]
    assert out.returncode == 0 and len(rows) == 2 and all("complete" in r for r in rows), out.stdout + out.stderr


def test_a_trainer_killed_on_a_live_host_fails_the_job_without_requeueing(bed, image, tmp_path):
    """The trainer on node-2 killed, its host alive: node-1's rank loses its peer as when a host is lost,
    but srun reaches both nodes and ends the step by itself, so this is a dead process, not a lost host:
    the job fails, saying why, instead of requeueing into the same failure (slurm/run-with-requeue.sh)."""
    run, out = tmp_path / "run", tmp_path / "job.out"
    job = two_node_job(image, run, out, "train.steps=100000")
    pids = subprocess.run(["ip", "netns", "pids", _namespace(bed, 2)], capture_output=True, text=True).stdout.split()
    trainers = [p for p in pids if f"run.dir={run}".encode() in open(f"/proc/{p}/cmdline", "rb").read()
                and b"torch.distributed.run" not in open(f"/proc/{p}/cmdline", "rb").read()]
    assert len(trainers) == 1, trainers
    subprocess.run(["kill", "-9", *trainers])
    state = wait_state(job, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=120)
    log = out.read_text()
    assert state == "FAILED" and job_field(job, "Restarts") == "0", (state, log[-3000:])
    assert "lost contact with node-2 (rank 1)" in log, log[-3000:]
    assert "srun ended by itself" in log and "not requeueing" in log, log[-3000:]


def test_a_crashed_host_ends_every_process_and_the_slurm_job_requeues(bed, image, tmp_path):
    """Every process on node-2 killed at once, its slurmd included (a host whose processes all died; its
    network stays up, so the connections close): the run's processes on node-1 end within
    train.timeout_s + 60 s, naming node-2, and the job requeues itself. Last in the module: node-2's
    slurmd is started again, but its old job may keep it busy a while."""
    run, out = tmp_path / "run", tmp_path / "job.out"
    job = two_node_job(image, run, out, "train.steps=100000")
    ns = _namespace(bed, 2)
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    assert any(b"slurmd" in open(f"/proc/{p}/cmdline", "rb").read() for p in pids), pids
    subprocess.run(["kill", "-9", *pids])
    try:
        left, took = processes_end(run, time.time(), 30 + 60)
        wait_requeued(job, out, timeout=30)
    finally:
        subprocess.run(["scancel", str(job)])
        # node-2 boots again: its slurmd comes back and the bed is whole for whatever runs next
        on_host(bed, 2, ["slurmd", "-f", str(bed / "slurm.conf"), "-N", "node-2"], subprocess.DEVNULL).wait(30)
    log = out.read_text()
    assert not left, (left, log[-3000:])
    assert "lost contact with node-2 (rank 1)" in log and "a host was lost" in log, log[-3000:]
    print(f"every process ended {took:.0f} s after the crash (train.timeout_s = 30)")


def test_a_host_lost_while_the_outputs_are_written_ends_the_job(bed, tmp_path):
    """Host 2's link goes down once training is over and the outputs are being written: the ranks wait on
    each other there under a timeout of days (rendering and exporting may take long), so only the heartbeat
    sees the loss. Every process of the run on both hosts ends within train.timeout_s + 60 s, one line names
    the lost host, and with the link back the same command finishes the outputs without training again."""
    big = tmp_path / "big.png"
    Image.fromarray(smooth_image(256, 256)).save(big)
    run = tmp_path / "run"
    args = [*ARGS, f"signal.path={big}", f"run.dir={run}", "train.steps=20", "train.timeout_s=20",
            "train.eval_chunk=1024"]
    procs = two_host_torchrun(bed, tmp_path, args, free_port())
    tmp = run / ".reconstruction.zarr.tmp"
    deadline = time.time() + 300
    while not tmp.exists() and time.time() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.01)
    assert tmp.exists(), "".join((tmp_path / f"host{k}.log").read_text() for k in (1, 2))
    # Host 1's trainer holds still while the link goes: it certainly has collectives of the outputs left.
    trainer = next(p for p in psutil_processes(run) if "torch.distributed.run" not in " ".join(p.cmdline())
                   and _namespace(bed, 2) not in _netns_of(p.pid))
    trainer.suspend()
    ns = _namespace(bed, 2)
    subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "down"], check=True)
    trainer.resume()
    try:
        left, took = processes_end(run, time.time(), 20 + 60)
    finally:
        subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "up"], check=True)
    logs = "".join((tmp_path / f"host{k}.log").read_text() for k in (1, 2))
    assert not left, (left, logs[-3000:])
    assert "while writing the outputs" in logs and "lost contact with node-2 (rank 1)" in logs, logs[-3000:]
    assert not (run / "summary.json").exists()
    procs = two_host_torchrun(bed, tmp_path, args, free_port())
    codes = [p.wait(timeout=300) for p in procs]
    logs = "".join((tmp_path / f"host{k}.log").read_text() for k in (1, 2))
    assert codes == [0, 0] and "resuming" in logs, logs[-3000:]
    assert read_summary(run)["steps"] == 20 and (run / "reconstruction.png").is_file()
    print(f"every process ended {took:.0f} s after the cut (train.timeout_s = 20)")


def psutil_processes(run) -> list:
    import psutil

    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if f"run.dir={run}" in " ".join(p.info["cmdline"] or []):
                out.append(p)
        except psutil.NoSuchProcess:
            continue
    return out


def _netns_of(pid: int) -> str:
    """The name of the network namespace process `pid` is in ("" for this host's own)."""
    out = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True)
    return out.stdout.strip()


def _cksum(data: bytes) -> int:
    """POSIX cksum (CRC-32, polynomial 0x04C11DB7, the length appended), as local-cluster.sh computes it."""
    table = []
    for i in range(256):
        c = i << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) if c & 0x80000000 else c << 1
        table.append(c & 0xFFFFFFFF)
    crc = 0
    for b in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[((crc >> 24) ^ b) & 0xFF]
    n = len(data)
    while n:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[((crc >> 24) ^ n) & 0xFF]
        n >>= 8
    return ~crc & 0xFFFFFFFF


def _subnet(bed) -> str:
    """The /24 a bed's hosts live on, from its hosts file (10.x.y)."""
    line = next(line for line in (bed / "hosts").read_text().splitlines() if line.endswith(" node-1"))
    return line.split()[0].rsplit(".", 1)[0]


def test_a_second_bed_whose_subnet_would_collide_takes_another(bed, tmp_path):
    """Two beds once shared a subnet with probability 1/250 (the second octet followed from the third): a
    bed takes the next free /24 when an address of this host already lies in its own."""
    probe = subprocess.run(["sh", "-c", f"printf '%s' '{bed}' | cksum"], capture_output=True, text=True)
    assert int(probe.stdout.split()[0]) == _cksum(str(bed).encode())  # the same checksum as the script's
    mine = _cksum(str(bed).encode())
    other = next(tmp_path / f"bed{i}" for i in range(10**6)
                 if _cksum(str(tmp_path / f"bed{i}").encode()) % 12500 == mine % 12500
                 and _cksum(str(tmp_path / f"bed{i}").encode()) % 100000 != mine % 100000)
    old = os.environ.get("SLURM_CONF")
    with local_cluster(other, "--nodes", "1"):
        assert _subnet(other) != _subnet(bed), (_subnet(other), _subnet(bed))
        out = subprocess.run([str(BED), "exec", str(other), "1", "getent", "hosts", "node-1"], capture_output=True,
                             text=True, timeout=30)
        assert out.stdout.startswith(_subnet(other) + "."), out.stdout + out.stderr
    assert os.environ.get("SLURM_CONF") == old
    out = subprocess.run([str(BED), "exec", str(bed), "2", "getent", "hosts", "node-1"], capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.startswith(_subnet(bed) + "."), out.stdout + out.stderr  # the first bed is untouched
