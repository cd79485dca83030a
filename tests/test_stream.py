"""Streaming shards: the prefetcher's budget and order, a streamed shard reads what a resident one holds,
and a streamed run on 2 ranks ends where a resident 1-rank run ends (also when stopped and resumed)."""

import signal
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import read_metrics, read_summary, run_train, smooth_image
from dist_int.errors import ConfigError
from dist_int.engine.evaluate import probe_gids
from dist_int.signal import Shard, SignalStore, StreamedShard, assign_chunks
from dist_int.modality import ingest
from dist_int.signal.stream import Prefetcher
from dist_int.teacher import make_plan


def test_prefetcher_reads_in_order_within_its_budget_and_restarts():
    held, peak, lock = [0], [0], threading.Lock()

    def read(idx):
        with lock:
            held[0] += len(idx)
            peak[0] = max(peak[0], held[0])
        time.sleep(0.002)
        return np.array(idx, dtype=np.int64)

    pf = Prefetcher(read, nbytes=len, budget=5)
    pf.start(((k, [k] * (1 + k % 3)) for k in range(20)))
    got = []
    for _ in range(20):
        key, arr = pf.next()
        got.append(key)
        assert arr.tolist() == [key] * (1 + key % 3)
        with lock:
            held[0] -= arr.size  # what the consumer gives back at its next call
        time.sleep(0.004)  # a slow consumer: the reader runs ahead until the budget stops it
    assert got == list(range(20)) and pf.next() is None
    assert peak[0] <= 5 + 3  # the budget, plus the list being handed back
    pf.start(((k, [k]) for k in range(100, 103)))  # a jump (resume, rollback): read from there
    assert [pf.next()[0] for _ in range(3)] == [100, 101, 102]
    pf.close()


def test_prefetcher_hands_read_errors_to_the_consumer():
    def read(idx):
        if idx == [2]:
            raise OSError("disk gone")
        return np.zeros(1)

    pf = Prefetcher(read, nbytes=len, budget=10)
    pf.start(((k, [k]) for k in range(5)))
    assert pf.next()[0] == 0 and pf.next()[0] == 1
    with pytest.raises(OSError, match="disk gone"):
        pf.next()
    pf.close()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("s") / "img.png"
    Image.fromarray(smooth_image(40, 56)).save(path)
    return SignalStore(ingest(str(path), path.with_suffix(".zarr"), chunk=8))  # 5 x 7 chunks, uneven edges


def test_streamed_shard_reads_what_the_resident_one_holds(store):
    own = list(range(1, store.num_chunks, 2))
    resident = Shard.load(store, own)
    streamed = StreamedShard(store, own, cache_bytes=4096)
    plan = make_plan([store.chunk_size(c) for c in range(store.num_chunks)], own, resident.chunk_start, 12,
                     seed=3, windows=6)  # 6 windows of about 6 chunks, each cut into 2 stratified batches
    streamed.check_plan(plan)
    for step in [0, 1, 2, 3, 9, 10, 4]:  # in order, a jump ahead, a jump back
        streamed.stage(plan, step)
        rows = plan.rows(step)
        assert torch.equal(streamed.targets(rows), resident.targets(rows))
        assert torch.equal(streamed.coords(rows), resident.coords(rows))
        others = [i for i in range(len(own)) if i not in plan.chunk_indices(step)]
        if others:  # a chunk of another window is not in memory: reading it fails loudly
            with pytest.raises(IndexError):
                streamed.targets(torch.tensor([int(resident.chunk_start[others[0]])]))
    seen = []
    for idx, rows in streamed.sweep(100):  # groups bounded by the sweep share of the cache, too
        assert torch.equal(streamed.targets(rows), resident.targets(rows))
        assert rows.numel() <= max(100, max(store.chunk_size(c) for c in own))
        seen.append(rows)
    assert torch.equal(torch.cat(seen), resident.all_rows())
    # After a sweep, the training batch is readable again.
    rows = plan.rows(4)
    assert torch.equal(streamed.targets(rows), resident.targets(rows))
    streamed.close()


@pytest.fixture(scope="module")
def uneven_stores(tmp_path_factory):
    """An RGB image whose edge chunks are cut short, and a uint16 volume (held as int16) likewise."""
    from dist_int.synth import synth_volume

    d = tmp_path_factory.mktemp("uneven")
    Image.fromarray(smooth_image(43, 59)).save(d / "img.png")
    return {"image": SignalStore(ingest(str(d / "img.png"), d / "img.zarr", chunk=8)),
            "volume": SignalStore(ingest(str(synth_volume(d / "vol.tif", size=13)), d / "vol.zarr", chunk=4))}


@pytest.mark.parametrize("kind", ["image", "volume"])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_probe_set_is_found_from_its_ids_on_any_number_of_ranks(uneven_stores, kind, world_size):
    # The probe set (engine/evaluate.py): fixed global ids, each found in its owner's shard without a
    # sweep; their targets read from the store for a streamed shard equal the resident shard's.
    store = uneven_stores[kind]
    gids = probe_gids(store.num_points, 300, seed=5)
    assert len(np.unique(gids)) == 300 and gids.max() < store.num_points
    assert np.array_equal(gids, probe_gids(store.num_points, 300, seed=5))
    assert not np.array_equal(gids, probe_gids(store.num_points, 300, seed=6))
    assert np.array_equal(probe_gids(store.num_points, 10**6, seed=5), np.arange(store.num_points))
    most = probe_gids(store.num_points, store.num_points - 3, seed=5)  # nearly all: the draws go on
    assert len(np.unique(most)) == store.num_points - 3
    found = []
    for own in assign_chunks(store.num_chunks, world_size, seed=0):
        resident, streamed = Shard.load(store, own), StreamedShard(store, own, cache_bytes=4096)
        rows = torch.from_numpy(resident.rows_of(gids))
        assert torch.equal(rows, rows.sort().values)
        found.append(resident.gids(rows))
        assert torch.equal(streamed.fetch_targets(rows), resident.targets(rows))
        streamed.close()
    assert torch.equal(torch.cat(found).sort().values, torch.from_numpy(gids))


def test_streaming_needs_windows_that_fit_the_budget(store):
    own = list(range(store.num_chunks))
    streamed = StreamedShard(store, own, cache_bytes=2048)
    sizes = [store.chunk_size(c) for c in own]
    start = Shard.load(store, own).chunk_start
    with pytest.raises(ConfigError, match="lower teacher.window_points"):  # one window: the whole shard
        streamed.check_plan(make_plan(sizes, own, start, 4, 0))
    with pytest.raises(ConfigError, match="lower teacher.window_points"):
        streamed.check_plan(make_plan(sizes, own, start, 2, 0, windows=2))
    streamed.check_plan(make_plan(sizes, own, start, 12, 0, windows=12))
    # When the windows are as many as the batches (or the chunks) allow, the advice names what limits them.
    with pytest.raises(ConfigError, match="lower teacher.batch_points") as e:
        streamed.check_plan(make_plan(sizes, own, start, 2, 0, windows=2), ("batches", 2))
    assert "window_points (e.g." not in str(e.value)
    with pytest.raises(ConfigError, match="smaller signal.chunk"):
        streamed.check_plan(make_plan(sizes, own, start, 2, 0, windows=2), ("chunks", 2))


def test_the_window_limit_names_what_caps_the_windows():
    from dist_int.config import load_config

    # 1 M points in 64 chunks; windows of 10 K points ask for 100 windows
    assert load_config(None, ["teacher.window_points=10000", "teacher.batch_points=1000"]).window_limit(
        10**6, 64) == ("chunks", 64)
    assert load_config(None, ["teacher.window_points=10000"]).window_limit(10**6, 64) == ("batches", 1)
    assert load_config(None, ["teacher.window_points=10000", "teacher.batch_points=500000"]).window_limit(
        10**6, 64) == ("batches", 2)
    assert load_config(None, ["teacher.window_points=100000", "teacher.batch_points=1000"]).window_limit(
        10**6, 64) is None  # 10 windows, as asked


def _streaming_budget_mb(args: list[str], image, world_size: int) -> float:
    """A train.memory_mb that leaves the signal 4 KiB on every rank: the shard (6 KiB a rank) streams, and
    two windows fit (engine/budget.py, rank_budget, as the trainer splits it once the parts are sized to that
    budget: engine/sizing.py cuts the passes of so small a budget to their least)."""
    import torch

    from dist_int.config import load_config
    from dist_int.engine.budget import rank_budget
    from dist_int.engine.sizing import size_parts

    store_dir = image.parent / "budget.zarr"
    if not store_dir.exists():
        ingest(str(image), store_dir, 16)
    store, cpu = SignalStore(store_dir), torch.device("cpu")
    cfg = load_config(None, [a for a in args if not a.startswith("run.")])
    total = None
    for _ in range(2):  # the sizes at the unsized budget, then at the budget of those sizes (the same)
        sized = cfg if total is None else size_parts(cfg, store, world_size, cpu, total)[0]
        total = max(rank_budget(sized, store, r, world_size, cpu, total)[2].fixed for r in range(world_size)) + 4096
    return total / 2**20


@pytest.mark.slow
def test_streamed_two_rank_run_equals_resident_one_rank_run_and_resumes(tmp_path):
    """8 windows of 2 stratified batches each: 1 rank holds its shard; 2 ranks stream theirs (4 KiB for the
    signal), are stopped by SIGTERM at step 30 and resumed. Both end at the same PSNR."""
    from test_train_e2e import TINY, _interrupt

    image = tmp_path / "img.png"
    Image.fromarray(smooth_image()).save(image)
    args = [f"signal.path={image}", *TINY, "train.steps=160", "teacher.num_batches=16", "teacher.window_points=512",
            "checkpoint.every=20", "train.snapshot_every=40"]
    one = run_train([f"run.dir={tmp_path / 'one'}", *args], nproc=0)
    assert one.returncode == 0, one.stdout + one.stderr
    stream = [f"run.dir={tmp_path / 'two'}", *args, f"train.memory_mb={_streaming_budget_mb(args, image, 2)}"]
    rc, out = _interrupt(stream, 2, signal.SIGTERM, tmp_path / "two")
    assert rc != 0 and "stopped by" in out and "(streamed from disk, a window at a time)" in out, out
    two = run_train(stream, nproc=2)
    assert two.returncode == 0, two.stdout + two.stderr
    s1, s2 = read_summary(tmp_path / "one"), read_summary(tmp_path / "two")
    assert s1["psnr_db"] > 16 and abs(s1["psnr_db"] - s2["psnr_db"]) <= 0.05, (s1["psnr_db"], s2["psnr_db"])
    steps = [m["step"] for m in read_metrics(tmp_path / "two")]
    assert steps == sorted(set(steps)) and steps[-1] == 160
    # Teaching-set snapshots of the streamed mini-batch run (resumed) add up to the resident run's.
    from dist_int.teacher.snapshot import read_snapshot

    for step in (0, 40, 80, 120):
        a, b = (read_snapshot(tmp_path / run / "snapshots" / f"step-{step:08d}") for run in ("one", "two"))
        assert b["complete"] and b["ranks"] == 2 and int(a["count"]) == int(b["count"])
        assert np.array_equal(a["selected"], b["selected"]) and np.array_equal(a["points"], b["points"])
        assert int(a["points"].sum()) == 64 * 64 and 0 < int(a["selected"].sum()) < 64 * 64 // 2


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_signal_at_a_fixed_budget(tmp_path):
    """The same train.memory_mb on a 1040^2 and a 2080^2 image (4x the points), both streamed: the peak
    RSS during training and at the end (render, SSIM, export included) stays the same within a margin.
    The budget is so small that the parts are sized down (engine/sizing.py) and both shards still stream
    (docs/design.md, "Memory stays within one budget"; bench/scale.py measures it up to 1 Gpx)."""
    peaks = {}
    for n in (1040, 2080):
        yy, xx = np.mgrid[0:n, 0:n] / n
        img = np.stack([np.sin(30 * xx + 13 * yy), np.cos(25 * yy * xx), np.sin(40 * xx * yy)], -1) * 0.5 + 0.5
        Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / f"{n}.png")
        ingest(str(tmp_path / f"{n}.png"), tmp_path / f"{n}.zarr", 130)
        run = tmp_path / f"run{n}"
        r = run_train([f"signal.path={tmp_path / f'{n}.zarr'}", f"run.dir={run}", "model.hidden=16",
                       "model.layers=2", "train.steps=16", "teacher.strategy=soft", "teacher.batch_points=16384",
                       "teacher.window_points=131072", "train.memory_mb=296", "train.log_every=8",
                       "train.eval_every=0", "checkpoint.every=0", "render.format=zarr",
                       "train.eval_chunk=65536", "teacher.score_chunk=65536"])
        assert r.returncode == 0, r.stdout + r.stderr
        assert "streamed from disk" in r.stdout + r.stderr
        training = max(m["peak_rss_mb"][0] for m in read_metrics(run) if "peak_rss_mb" in m)
        peaks[n] = (training, read_summary(run)["peak_rss_mb"][0])
    (t1, end1), (t2, end2) = peaks[1040], peaks[2080]
    # Training holds only the budget: within 4 %. The end of the run (render, pyramid, SSIM) still grows a
    # little with the signal: +2 % and +7 % over these 4x the points in two sessions' runs (README, "Peak
    # memory at one budget"); a leak of 16 bytes a point would add 50 MiB (+10 %).
    assert t2 <= t1 * 1.04 and end2 <= end1 * 1.10, peaks
