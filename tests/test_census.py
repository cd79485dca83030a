"""The sync census (dist_int/census.py): what it counts, and the counts per step kind of real runs on 1
and 2 ranks (docs/design.md, "No host waits per step"): 0 on a step that reuses its teaching set or
trains every point, 1 on a selecting step on several ranks (0 on one), 0 copies from pageable memory
on streamed shards."""

import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_train, smooth_image
from dist_int.census import SyncCensus, host_buffer, host_side, to_device


def _count(fn) -> dict:
    with SyncCensus("cpu") as c:
        fn()
    return dict(c.counts)


def test_the_census_counts_what_makes_a_gpu_host_wait():
    x = torch.arange(10.0) * 2  # made before the census: a device tensor in a GPU run
    i = torch.zeros((), dtype=torch.long) + 3
    assert _count(lambda: x[i]) == {"read a device value": 1}  # indexing with a 0-d tensor reads it
    assert _count(lambda: x.gather(0, i.view(1))) == {}          # the device-side way
    assert _count(lambda: float(x.sum())) == {"read a device value": 1}
    assert _count(lambda: x.tolist()) == {"read a device value (tolist)": 1}
    assert _count(lambda: torch.nonzero(x > 3)) == {"data-dependent size (nonzero)": 1}
    assert _count(lambda: torch.nonzero_static(x > 3, size=4)) == {}
    assert _count(lambda: x[x > 3]) == {"boolean indexing": 1}
    assert _count(lambda: torch.from_numpy(np.arange(3)).to("cpu")) == {"pageable host data copied to the device": 1}
    assert _count(lambda: torch.tensor([1, 2], device="cpu")) == {"host data sent to the device (torch.tensor)": 1}
    assert _count(lambda: to_device(np.arange(3), torch.device("cpu"))) == {}  # pinned, non-blocking
    assert _count(lambda: host_buffer((4,), torch.float32, "cpu").numpy()) == {}
    # Host work on host tensors (control values) and other threads (the prefetcher) are not the step.
    with host_side():
        pass
    assert _count(lambda: _host_work(x)) == {}
    t = threading.Thread(target=lambda: x.tolist())
    assert _count(lambda: (t.start(), t.join())) == {}


def _host_work(x):
    with host_side():
        torch.argsort(torch.arange(5) * 7 % 5).numpy()


def _census(run_dir) -> dict:
    """{rank: [(step, selected, syncs, where)]} from the run's census files, warm-up step 0 left out (it
    builds the optimizer's state)."""
    out = {}
    for path in sorted((run_dir / "census").glob("rank-*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        out[path.stem] = [(r["step"], r["selected"], r["syncs"], r["where"]) for r in rows if r["step"] > 0]
    return out


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("census") / "img.png"
    Image.fromarray(smooth_image()).save(path)
    return path


SMALL = ["signal.chunk=16", "model.hidden=16", "model.layers=2", "train.steps=40", "train.log_every=20",
         "train.eval_every=20", "train.sync_census=true"]


@pytest.mark.slow
@pytest.mark.parametrize("nproc, strategy", [(0, "int"), (2, "soft"), (2, "mix")])
def test_selecting_steps_read_once_and_reusing_steps_never(tmp_path, image, nproc, strategy):
    run = tmp_path / "run"
    r = run_train([f"signal.path={image}", f"run.dir={run}", *SMALL, f"teacher.strategy={strategy}",
                   "teacher.interval_schedule=incremental"], nproc=nproc)
    assert r.returncode == 0, r.stdout + r.stderr
    census = _census(run)
    assert len(census) == max(nproc, 1)
    for rank, steps in census.items():
        reusing = [s for s in steps if not s[1]]
        selecting = [s for s in steps if s[1]]
        assert len(reusing) >= 10 and len(selecting) >= 5, (rank, steps)
        assert all(s[2] == 0 for s in reusing), [s for s in reusing if s[2]]
        # One host read per selection on several ranks (this rank's share and the largest, together);
        # none on one rank, whose top-k sizes are known on the host.
        expect = 1 if nproc > 1 else 0
        assert all(s[2] == expect for s in selecting), [s for s in selecting if s[2] != expect]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["full", "mix"])
def test_streamed_shards_copy_nothing_from_pageable_memory(tmp_path, image, strategy):
    """2 ranks streaming windows of 512 points in mini-batches: the window swaps are queued copies from
    pinned buffers; `full` makes no wait at all, `mix` one per selection."""
    from test_stream import _streaming_budget_mb

    args = [f"signal.path={image}", *SMALL, "teacher.num_batches=16", "teacher.window_points=512",
            f"teacher.strategy={strategy}"]
    run = tmp_path / "run"
    r = run_train([f"run.dir={run}", *args, f"train.memory_mb={_streaming_budget_mb(args, image, 2)}"], nproc=2)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "streamed from disk" in r.stdout + r.stderr
    for rank, steps in _census(run).items():
        assert len(steps) == 39
        expect = 0 if strategy == "full" else 1
        assert all(s[2] == expect and (s[1] or expect == 0) for s in steps), [s for s in steps if s[2] != expect]
