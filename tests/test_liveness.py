"""Liveness is judged by heartbeats, not by how long local work takes (engine/watchdog.py): a paused
job, long local work on one rank and a long wait for it go on; a peer that stops answering ends the job
within train.timeout_s + the grace. Real processes over gloo on loopback, stopped and resumed with real
signals. (A host lost during the outputs, on the two-host bed: tests/test_cluster.py.)"""

import pytest
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from conftest import ROOT, free_port, read_summary, train_cmd, train_env

# Two ranks with a heartbeat of train.timeout_s = 1 s and a 1 s grace: silent for 2 s means lost.
WORKER = textwrap.dedent("""
    import os, sys, time
    import torch, torch.distributed as dist
    from datetime import timedelta
    from dist_int.comm import DistComm
    from dist_int.engine.watchdog import Watchdog
    rank, mode = int(os.environ["RANK"]), sys.argv[1]
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    comm = DistComm(rank, 2, torch.device("cpu"), timeout_s=60)
    dog = Watchdog(comm, 1.0, comm.gather_strings("host"), grace_s=1.0)
    print("ready", flush=True)
    if mode == "work" and rank == 0:
        time.sleep(6)              # long local work: a compile, a large window, a TIFF
    comm.barrier(long=True)        # the other rank waits for it, beyond the 2 s bound
    if mode == "wait":
        time.sleep(8)              # both ranks sit idle while the test pauses them, or one of them
    comm.barrier(long=True)
    dog.close()
    dist.destroy_process_group()
    print("done", flush=True)
""")


def _start(mode: str) -> list[subprocess.Popen]:
    port = str(free_port())
    procs = []
    for rank in range(2):
        env = train_env(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, mode], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    return procs


def _finish(procs, timeout=60) -> list[tuple[int, str, str]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=timeout)
        out.append((p.returncode, stdout, stderr))
    return out


@pytest.mark.slow
def test_long_local_work_and_a_long_wait_for_it_are_not_a_lost_peer():
    results = _finish(_start("work"))
    assert [r[0] for r in results] == [0, 0] and all("done" in r[1] for r in results), results


@pytest.mark.slow
def test_a_paused_job_goes_on_when_it_is_resumed():
    """SIGSTOP to every process of the job (a SLURM suspend) for 4 s, twice the bound: no rank mistakes
    the pause for a lost peer."""
    procs = _start("wait")
    time.sleep(1)
    for p in procs:
        p.send_signal(signal.SIGSTOP)
    time.sleep(4)
    for p in procs:
        p.send_signal(signal.SIGCONT)
    results = _finish(procs)
    assert [r[0] for r in results] == [0, 0], results


@pytest.mark.slow
def test_a_peer_that_stops_answering_ends_the_job_within_the_bound():
    procs = _start("wait")
    procs[1].send_signal(signal.SIGSTOP)  # stopped alone: for rank 0, as silent as a lost host
    started = time.time()
    try:
        code = procs[0].wait(timeout=30)
        took = time.time() - started
    finally:
        procs[1].send_signal(signal.SIGCONT)
        procs[1].kill()
    err = procs[0].stderr.read()
    assert code == 1 and took < 2 + 5, (code, took, err)  # the bound, plus a heartbeat round and a poll
    assert "error: rank 0 on host" in err and "another rank on this host stopped answering" in err, err


def test_an_error_that_quotes_a_timeout_is_no_lost_peer():
    """A user-facing error (another rank's NFS "Connection timed out", shared through the agreement) is
    one error line, not a lost host."""
    from dist_int.engine.watchdog import peer_lost
    from dist_int.errors import PeerFailed

    assert peer_lost(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer"))
    assert not peer_lost(PeerFailed("rank 1 failed to read: [Errno 110] Connection timed out"))


@pytest.mark.slow
def test_a_single_rank_run_paused_past_its_timeout_finishes(tmp_path):
    """A single rank stopped for 35 s with train.timeout_s = 1 was killed as if a peer were lost ("another
    rank on this host stopped answering"). A single process has no peer to lose."""
    run = tmp_path / "run"
    args = ["--config", "configs/demo.toml", "model.hidden=16", "model.layers=2", "train.steps=3000",
            "signal.chunk=32", "train.log_every=100", "train.eval_every=0", "signal.path=builtin:camera@48",
            "train.timeout_s=1", f"run.dir={run}"]
    proc = subprocess.Popen(train_cmd(args), cwd=ROOT, env=train_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    process = psutil.Process(proc.pid)
    process.suspend()
    time.sleep(35)  # beyond train.timeout_s + the 30 s grace
    process.resume()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped answering" not in err and read_summary(run)["steps"] == 3000
