"""Real 2-process gloo runs of every collective path, each checked against a single-process reference."""

import numpy as np
import pytest
import torch

from conftest import run_distributed


def _comm(rank, world):
    from dist_int.comm import DistComm

    return DistComm(rank, world, torch.device("cpu"))


def _collectives(rank, world):
    comm = _comm(rank, world)
    x = torch.arange(6, dtype=torch.int64).reshape(3, 2) + 100 * rank
    gathered = comm.all_gather(x)
    assert gathered.shape == (world, 3, 2) and gathered.dtype == torch.int64
    for r in range(world):
        assert torch.equal(gathered[r], torch.arange(6).reshape(3, 2) + 100 * r)
    assert comm.all_reduce_sum(torch.tensor([rank + 1.0])).item() == world * (world + 1) / 2
    assert comm.agree_max([float(rank), -float(rank)]) == [world - 1.0, 0.0]
    assert comm.all_gather_scalar(rank * 2).tolist() == [2.0 * r for r in range(world)]


def test_collectives():
    run_distributed(_collectives, 2)


def _selection(rank, world, k, ties):
    from test_select import reference_topk

    from dist_int.teacher import global_topk, order_keys, score_order

    g = torch.Generator().manual_seed(7)
    n = 3000
    keys = (torch.randint(0, 9, (n,), generator=g).float() if ties else torch.rand(n, generator=g))
    gids = torch.randperm(n, generator=g)
    expected = reference_topk(keys, gids, k)  # the definition, on one process
    # Unequal ownership: rank 0 holds 2/3 of the points.
    own = torch.arange(n) % 3 != 0 if rank == 0 else torch.arange(n) % 3 == 0
    comm = _comm(rank, world)
    rows = global_topk(order_keys(score_order(keys[own]), gids[own]), k, comm)
    # Gather every rank's chosen gids (padded to n with -1) to compare the union with the reference.
    chosen = torch.full((n,), -1, dtype=torch.int64)
    chosen[: rows.numel()] = gids[own][rows]
    union = [int(v) for v in comm.all_gather(chosen).flatten().tolist() if v >= 0]
    assert len(union) == len(set(union)) == min(k, n) and set(union) == expected


@pytest.mark.parametrize("k, ties", [(1, False), (900, False), (900, True), (2999, True), (5000, False)])
def test_distributed_selection_equals_single_process_topk(k, ties):
    run_distributed(_selection, 2, (k, ties))


def _update(rank, world, out, max_points_per_pass=0):
    """One DeepSpeed step with 70 points on rank 0 and 30 on rank 1, loss scaled as the trainer does; with
    max_points_per_pass, in pieces (rank 0: 5 pieces of 14, rank 1: 5 pieces of 6) with accumulation."""
    from dist_int.config import Config
    from dist_int.engine.deepspeed_engine import build_engine
    from dist_int.model import Siren

    cfg = Config()
    cfg.optim.lr = 1e-3
    cfg.train.steps = 10
    g = torch.Generator().manual_seed(1)
    coords, values = torch.rand(100, 2, generator=g) * 2 - 1, torch.rand(100, 3, generator=g)
    torch.manual_seed(0)
    engine, _ = build_engine(Siren(2, 3, 32, 3), cfg)
    part = slice(0, 70) if rank == 0 else slice(70, 100)
    x, y = coords[part], values[part]
    if max_points_per_pass:
        from dist_int.engine.step import TrainStep, num_pieces

        step = TrainStep(engine, world, 3, torch.device("cpu"), max_points_per_pass)
        step.accumulate(x, y, 100, num_pieces(70, max_points_per_pass))
        # managed_gradient_accumulation is off: gradients are summed locally, all-reduced in step().
        torch.save([p.grad.clone() for p in engine.module.parameters()], f"{out}.local{rank}")
        engine.step()
        if rank == 0:
            torch.save({"params": [p.detach().clone() for p in engine.module.parameters()]}, out)
        return
    loss = (engine(x) - y).square().sum() * (world / (100 * 3))
    engine.backward(loss)
    # managed_gradient_accumulation is off: backward() leaves this rank's share, step() all-reduces.
    torch.save([p.grad.clone() for p in engine.module.parameters()], f"{out}.local{rank}")
    engine.step()
    if rank == 0:
        torch.save({"params": [p.detach().clone() for p in engine.module.parameters()]}, out)


@pytest.mark.slow
def test_update_in_pieces_equals_the_one_pass_update(tmp_path):
    """train.max_points_per_pass: the teaching set in pieces with gradient accumulation gives the update of
    one pass (to float tolerance), with the same number of pieces on every rank."""
    one, pieces = tmp_path / "one.pt", tmp_path / "pieces.pt"
    run_distributed(_update, 2, (one,))
    run_distributed(_update, 2, (pieces, 16))
    for r in range(2):  # each rank's accumulated share equals its one-pass share
        for a, b in zip(torch.load(f"{pieces}.local{r}"), torch.load(f"{one}.local{r}")):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(torch.load(pieces)["params"], torch.load(one)["params"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_distributed_update_equals_single_process_update(tmp_path):
    from dist_int.config import Config
    from dist_int.engine.deepspeed_engine import CosineLR
    from dist_int.model import Siren

    out = tmp_path / "dist.pt"
    run_distributed(_update, 2, (out,))
    dist = torch.load(out)
    # DeepSpeed averages the ranks' shares: (share0 + share1) / 2 is the gradient the update uses.
    shares = [torch.load(f"{out}.local{r}") for r in range(2)]
    dist["grads"] = [(a + b) / 2 for a, b in zip(*shares)]
    # Single process: plain torch, the MSE over all 100 points, torch Adam with the same schedule.
    g = torch.Generator().manual_seed(1)
    coords, values = torch.rand(100, 2, generator=g) * 2 - 1, torch.rand(100, 3, generator=g)
    torch.manual_seed(0)
    model = Siren(2, 3, 32, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, CosineLR(10, 1e-3, Config().optim.lr_min))
    loss = (model(coords) - values).square().mean()
    loss.backward()
    for ref, got in zip(model.parameters(), dist["grads"]):
        torch.testing.assert_close(got, ref.grad, rtol=1e-5, atol=1e-7)
    opt.step()
    sched.step()
    for ref, got in zip(model.parameters(), dist["params"]):
        torch.testing.assert_close(got, ref.detach(), rtol=1e-5, atol=1e-7)


def _teacher_sets(rank, world, strategy, num_batches, out):
    """The trainer's teacher on a real store: this rank's teaching-set gids for a few steps."""
    from dist_int.config import TeacherConfig
    from dist_int.model import Siren
    from dist_int.signal import Shard, SignalStore, assign_chunks
    from dist_int.teacher import BatchPlan, Teacher
    from dist_int.comm import Comm

    store = SignalStore(out.parent / "s.zarr")
    owners = assign_chunks(store.num_chunks, world, 0)
    shard = Shard.load(store, owners[rank])
    comm = _comm(rank, world) if world > 1 else Comm()
    plan = BatchPlan([store.chunk_size(c) for c in range(store.num_chunks)], shard.chunk_ids,
                     shard.chunk_start, num_batches, 0)
    cfg = TeacherConfig(strategy=strategy, ratio=0.3, num_batches=num_batches)
    teacher = Teacher(cfg, 40, 0, comm, plan, store.num_points)
    torch.manual_seed(0)
    model = Siren(2, 3, 16, 3)
    sets = []
    for step in range(6):
        batch = teacher.teaching_set(step, shard, model)
        sets.append((sorted(shard.gids(batch.rows).tolist()), batch.count))
    torch.save(sets, out.with_name(f"{out.name}.{rank}"))


@pytest.mark.parametrize("strategy, num_batches", [("int", 1), ("uniform", 1), ("int", 3), ("mix", 1),
                                                   ("soft", 3)])
def test_teaching_set_does_not_depend_on_world_size(tmp_path, png_image, strategy, num_batches):
    from dist_int.modality import ingest

    ingest(str(png_image), tmp_path / "s.zarr", 16)
    out1, out2 = tmp_path / "w1", tmp_path / "w2"
    _teacher_sets(0, 1, strategy, num_batches, out1)
    run_distributed(_teacher_sets, 2, (strategy, num_batches, out2))
    one = torch.load(out1.with_name("w1.0"))
    two = [torch.load(out2.with_name(f"w2.{r}")) for r in range(2)]
    for step, (gids, k) in enumerate(one):
        union = sorted(two[0][step][0] + two[1][step][0])
        assert union == gids and len(gids) == k == two[0][step][1] == two[1][step][1]


def _resave(rank, world, root):
    from pathlib import Path

    from dist_int.comm import Comm
    from dist_int.config import Config
    from dist_int.engine.checkpoint import Checkpointer
    from dist_int.engine.deepspeed_engine import build_engine
    from dist_int.engine.state import RunState
    from dist_int.model import Siren
    from dist_int.rundir import RunDir

    cfg = Config()
    cfg.train.steps = 10
    torch.manual_seed(0)
    engine, _ = build_engine(Siren(2, 1, 8, 2), cfg)
    run = RunDir(Path(root))
    state = RunState(step=5)
    ckpt = Checkpointer(engine, run, Comm(), every=5, keep=2, shared={"run": state}, chunked={})
    ckpt.save(5, "first")
    with torch.no_grad():
        engine.module.out.bias.fill_(7.0)
    state.train_time_s = 2.0
    ckpt.save(5, "again")  # a rollback makes the run pass step 5 a second time
    names = sorted(p.name for p in run.checkpoints.iterdir())
    assert names == ["latest", "step-00000005"], names  # no partial or old folder left behind
    with torch.no_grad():
        engine.module.out.bias.fill_(0.0)
    fresh = RunState()
    meta = Checkpointer(engine, run, Comm(), every=5, keep=2, shared={"run": fresh}, chunked={}).load(
        ckpt.latest_tag())
    assert meta["status"] == "again" and fresh.train_time_s == 2.0
    assert float(engine.module.out.bias[0]) == 7.0


def test_a_checkpoint_saved_twice_at_one_step_is_replaced_whole(tmp_path):
    run_distributed(_resave, 1, (str(tmp_path / "run"),))


def _clipped(rank, world, out):
    from dist_int.config import Config
    from dist_int.engine.deepspeed_engine import build_engine
    from dist_int.model import Siren

    cfg = Config()
    cfg.train.steps = 10
    cfg.optim.grad_clip = 1e-3  # far below this gradient's norm: the clip decides the update
    g = torch.Generator().manual_seed(1)
    coords, values = torch.rand(100, 2, generator=g) * 2 - 1, torch.rand(100, 3, generator=g)
    torch.manual_seed(0)
    engine, _ = build_engine(Siren(2, 3, 32, 3), cfg)
    part = slice(0, 70) if rank == 0 else slice(70, 100)
    loss = (engine(coords[part]) - values[part]).square().sum() * (world / (100 * 3))
    engine.backward(loss)
    seen = []  # registered after the clip hook, so it sees the clipped global gradient
    engine.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append([p.grad.clone() for p in engine.module.parameters()]))
    engine.step()
    if rank == 0:
        torch.save(seen[0], out)


@pytest.mark.slow
def test_gradient_clipping_clips_the_global_gradient(tmp_path):
    """optim.grad_clip clips the all-reduced gradient (2 ranks, 70/30 points) exactly as
    torch.nn.utils.clip_grad_norm_ clips the single-process gradient, before the update."""
    from dist_int.model import Siren

    out = tmp_path / "clipped.pt"
    run_distributed(_clipped, 2, (out,))
    g = torch.Generator().manual_seed(1)
    coords, values = torch.rand(100, 2, generator=g) * 2 - 1, torch.rand(100, 3, generator=g)
    torch.manual_seed(0)
    model = Siren(2, 3, 32, 3)
    (model(coords) - values).square().mean().backward()
    norm = torch.nn.utils.clip_grad_norm_(list(model.parameters()), 1e-3)
    assert norm > 1e-2  # the clip really acts
    for ref, got in zip(model.parameters(), torch.load(out)):
        torch.testing.assert_close(got, ref.grad, rtol=1e-5, atol=1e-9)


def _long_work(rank, world, out):
    """Rank 0 works for 4 s while rank 1 waits, under a 1 s collective timeout: a long wait passes, a
    normal one times out; an error on one rank reaches the other with its message."""
    import time

    from dist_int.comm import DistComm
    from dist_int.engine.agree import agree_on_failure as _agree_on_failure, attempt
    from dist_int.errors import PeerFailed

    comm = DistComm(rank, world, torch.device("cpu"), timeout_s=1.0)
    results = {}
    if rank == 0:
        time.sleep(4)
    _agree_on_failure(comm, None, "ingest", long=True)
    results["long"] = "ok"
    try:
        _agree_on_failure(comm, ValueError("chunk 7 is corrupt") if rank == 1 else None, "read chunks", long=True)
    except PeerFailed as e:
        results["peer"] = str(e)
    except ValueError as e:
        results["own"] = str(e)
    # A failure that must not stop the run (an export after training): a message on every rank.
    results["attempt"] = attempt(comm, "exporting", lambda: 1 / (rank - 1))
    if rank == 0:
        time.sleep(4)
    try:
        _agree_on_failure(comm, None, "ingest")  # the control group: its 1 s timeout ends the wait
        results["short"] = "ok"
    except Exception as e:  # noqa: BLE001
        results["short"] = type(e).__name__
    torch.save(results, f"{out}.{rank}")


@pytest.mark.slow
def test_long_work_waits_without_the_collective_timeout_and_errors_reach_every_rank(tmp_path):
    run_distributed(_long_work, 2, (tmp_path / "r",))
    r0, r1 = torch.load(f"{tmp_path / 'r'}.0"), torch.load(f"{tmp_path / 'r'}.1")
    assert r0["long"] == r1["long"] == "ok"
    assert r0["peer"] == "rank 1 failed to read chunks: chunk 7 is corrupt" and r1["own"] == "chunk 7 is corrupt"
    assert r1["short"] != "ok"  # the same wait under the dead-rank timeout fails: the test can fail
    assert r0["attempt"] == r1["attempt"] == (None, "exporting failed on rank 1: division by zero")


def _prepare(rank, world, src, run_dir, out):
    """The trainer's start on `world` ranks: plan, shared ingest, finish, shard."""
    from dist_int.comm import DistComm
    from dist_int.config import load_config
    from dist_int.engine.trainer import _prepare_run
    from dist_int.rundir import RunDir

    cfg = load_config(None, [f"signal.path={src}", f"run.dir={run_dir}", "signal.chunk=16"])
    run = RunDir(run_dir)
    setup = _prepare_run(cfg, DistComm(rank, world, torch.device("cpu"), 60.0), run, torch.device("cpu"))
    store, shard = setup.store, setup.shard
    if rank == 0:
        run.release_lock()  # what train() does when it ends
    torch.save({"shape": store.shape, "chunks": store.chunk_shape, "meta": store.meta,
                "values": store.array[...], "shard_points": shard.num_points}, f"{out}.{rank}")


def _zarr_sources(tmp_path):
    """Sources of every kind the shared ingest reads: a tiled TIFF, float TIFF, Zarr (H, W, C) chunked with
    all channels (linked, not copied), Zarr (H, W), and an OME-Zarr group (c, y, x)."""
    import tifffile
    import zarr

    rng = np.random.default_rng(5)
    img = rng.integers(0, 65535, (70, 50, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "tiled.tif", img, tile=(16, 16), photometric="rgb")
    flt = (rng.random((40, 36)) * 9 - 4).astype(np.float32)
    tifffile.imwrite(tmp_path / "float.tif", flt)
    linked = zarr.create_array(tmp_path / "hwc.zarr", shape=img.shape, chunks=(32, 32, 3), dtype="uint16")
    linked[...] = img
    gray = zarr.create_array(tmp_path / "hw.zarr", shape=(70, 50), chunks=(64, 64), dtype="uint16")
    gray[...] = img[..., 0]
    ome = zarr.open_group(tmp_path / "ome.zarr", mode="w")
    ome.create_array("0", shape=(3, 70, 50), chunks=(1, 32, 32), dtype="uint16")[...] = img.transpose(2, 0, 1)
    ome.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": [{"name": "c"}, {"name": "y"}, {"name": "x"}],
                                                          "datasets": [{"path": "0"}]}]}
    return {"tiled.tif": img, "float.tif": flt[..., None], "hwc.zarr": img, "hw.zarr": img[..., :1],
            "ome.zarr": img}


def test_ranks_share_the_ingest_of_tiff_and_zarr_sources(tmp_path):
    """Every rank copies its bands; the store equals the source (floats normalized by the min/max over all
    ranks' bands); a Zarr array with all channels in each chunk is linked in place, not copied."""
    for name, expect in _zarr_sources(tmp_path).items():
        run = tmp_path / f"run-{name}"
        run_distributed(_prepare, 2, (str(tmp_path / name), str(run), tmp_path / f"out-{name}"))
        r0, r1 = (torch.load(f"{tmp_path / f'out-{name}'}.{r}", weights_only=False) for r in (0, 1))
        assert np.array_equal(r0["values"], expect), name
        assert r0["shard_points"] + r1["shard_points"] == expect.shape[0] * expect.shape[1]
        if name == "float.tif":
            assert r0["meta"]["value_range"] == pytest.approx([float(expect.min()), float(expect.max())])
        linked = name == "hwc.zarr"
        assert (run / "signal.zarr" / "c").is_symlink() == linked, name
        assert r0["chunks"] == ((32, 32) if linked else (16, 16)), name
        assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary folder left
