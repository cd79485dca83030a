"""The training step's host waits, in process, on any device: on a CPU by the census (dist_int/census.py),
on a GPU also under torch.cuda.set_sync_debug_mode("error") with torch.cuda.synchronize patched to raise.
The same code runs both ways, so a GPU finds no bug the CPU could have found (bench/gpu_check.py --part 1
runs the GPU side first).

Cases: resident and streamed shards, `int` (selects, then reuses its set), `full` in mini-batches, gradient
clipping, tf32 and bf16 (autocast inside the DeepSpeed engine), eager and compiled, the SIREN and the hash
field (configs/gigapixel.toml's: `full` in mini-batches at bf16)."""

import os

import pytest
import torch

from dist_int.census import SyncCensus, optimizer_host_tensors

CUDA = torch.cuda.is_available()
def needs_gpu(test):
    """GPU-only (marked `gpu`; skipped without a CUDA GPU)."""
    return pytest.mark.gpu(pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")(test))

CASES = [  # strategy, mini-batches, grad_clip, precision, compile, streamed, field
    ("int", 1, 0.0, "tf32", False, False, "siren"),
    ("full", 4, 0.0, "tf32", False, False, "siren"),
    ("int", 1, 0.1, "bf16", False, False, "siren"),
    ("int", 1, 0.0, "bf16", True, False, "siren"),
    ("full", 8, 0.0, "tf32", False, True, "siren"),
    ("full", 4, 0.0, "bf16", False, False, "hash"),
    ("int", 1, 0.0, "tf32", False, False, "hash"),
]


@pytest.fixture(scope="module")
def process_group():
    """One process group for the module (DeepSpeed needs one), on the GPU when there is one."""
    from conftest import free_port
    from dist_int.engine.launch import detect_launch, init_distributed, pick_device, shutdown

    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    try:
        device = pick_device(detect_launch())
        init_distributed(detect_launch(), device, 120)
        yield device
        shutdown()
    finally:  # later tests start runs from this process: they must not inherit a rank or a port
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from PIL import Image

    from conftest import smooth_image
    from dist_int.modality import ingest
    from dist_int.signal import SignalStore

    folder = tmp_path_factory.mktemp("gpu")
    Image.fromarray(smooth_image()).save(folder / "img.png")
    ingest(str(folder / "img.png"), folder / "s.zarr", 16)  # 16 chunks of 16x16
    return SignalStore(folder / "s.zarr")


def run_steps(device, store, strategy, num_batches, grad_clip, precision, compiled, streamed, field="siren",
              on_gpu_check=None, check_selecting=False):
    """Trains 40 steps; returns {"reusing": [syncs], "selecting": [syncs]} from the census of steps 30-39
    (after the warm-up, and past the incremental phase of every interval schedule's first quarter).
    on_gpu_check: a context manager factory wrapped around each counted step (the GPU's own checks)."""
    from dist_int.comm import Comm
    from dist_int.config import Config
    from dist_int.engine.deepspeed_engine import build_engine
    from dist_int.engine.precision import Precision
    from dist_int.engine.step import TrainStep
    from dist_int.model import HashField, Siren
    from dist_int.signal import Shard, assign_chunks
    from dist_int.signal.stream import StreamedShard
    from dist_int.teacher import BatchPlan, Teacher

    cfg = Config()
    cfg.train.steps = 40
    cfg.train.compile = compiled
    cfg.teacher.strategy, cfg.teacher.num_batches, cfg.optim.grad_clip = strategy, num_batches, grad_clip
    prec = Precision(precision, device)
    prec.apply()
    torch.manual_seed(0)
    if field == "hash":  # dense and hashed levels both (the 64^2 image has 63 cells per axis)
        model = HashField(2, 3, 16, 3, levels=4, log2_table=8, base_resolution=4, finest_resolution=63,
                          axis_lengths=store.spatial)
    else:
        model = Siren(2, 3, 32, 3)
    engine, _ = build_engine(model.to(device), cfg, prec)
    own = assign_chunks(store.num_chunks, 1, 0)[0]
    windows = 2 if streamed else 1
    if streamed:  # room for two windows of 8 chunks: the shard streams a window at a time
        shard = StreamedShard(store, own, device, cache_bytes=4 * 8 * 256 * 3)
    else:
        shard = Shard.load(store, own, device)
    plan = BatchPlan([store.chunk_size(c) for c in range(store.num_chunks)], shard.chunk_ids, shard.chunk_start,
                     num_batches, 0, device, windows, epochs=40)
    teacher = Teacher(cfg.teacher, 40, 0, Comm(), plan, store.num_points)
    step = TrainStep(engine, 1, 3, device)

    def score(x):
        with prec.scoring():
            return engine.module(x)

    def one(t):
        shard.stage(plan, t) if streamed else None
        batch = teacher.teaching_set(t, shard, score)
        step(shard.coords(batch.rows), shard.targets(batch.rows), batch.count, batch.max_rows)
        return batch

    if precision == "bf16":  # autocast inside the engine: bf16 activations, fp32 weights and gradients
        out = engine(torch.zeros(4, 2, device=device))
        assert out.dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in engine.module.parameters())
    counts = {"reusing": [], "selecting": []}
    try:
        for t in range(30):
            one(t)
        for t in range(30, 40):
            census = SyncCensus(device)
            census.mark_host(optimizer_host_tensors(engine.optimizer))
            selects = teacher.selects_at(t)
            with (on_gpu_check() if on_gpu_check and (check_selecting or not selects) else _nothing()), census:
                one(t)
            counts["selecting" if selects else "reusing"].append(census.syncs)
    finally:
        shard.close() if streamed else None
    return counts


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _sync_forbidden:
    """Any implicit sync raises (sync debug mode), and so does an explicit synchronize (patched)."""

    def __enter__(self):
        def forbidden(*args, **kwargs):
            raise AssertionError("explicit device synchronization in a step")

        torch.cuda.synchronize()
        self.real = torch.cuda.synchronize, torch.cuda.Event.synchronize
        torch.cuda.synchronize = torch.cuda.Event.synchronize = forbidden
        torch.cuda.set_sync_debug_mode("error")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize, torch.cuda.Event.synchronize = self.real
        return False


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_a_step_that_reuses_its_set_makes_no_host_wait(process_group, store, case):
    """Reusing (or `full`) steps: no host wait at all. Selecting steps on one rank: none either (the
    top-k sizes are known on the host). On a GPU the reusing steps also run under sync debug mode."""
    counts = run_steps(process_group, store, *case, on_gpu_check=_sync_forbidden if CUDA else None)
    assert len(counts["reusing"]) >= 3, counts
    assert counts["reusing"] == [0] * len(counts["reusing"]) and not any(counts["selecting"]), counts


@needs_gpu
def test_the_census_agrees_with_cuda_on_a_selecting_step(process_group, store):
    """On a GPU, a step that selects on one rank runs under sync debug mode too (the census says 0)."""
    counts = run_steps(process_group, store, "int", 1, 0.0, "tf32", False, False, "siren",
                       on_gpu_check=_sync_forbidden, check_selecting=True)
    assert counts["selecting"] and not any(counts["selecting"])


@needs_gpu
@pytest.mark.parametrize("dims,axes", [(2, (32768, 32768)), (3, (1024, 1024, 1024))])
def test_hash_rows_on_the_gpu_equal_the_cpus(dims, axes):
    """The int32 corner rows (docs/fields.md, "Index arithmetic in int32"): a hashed level's products
    wrap modulo 2^32 on the GPU as on the CPU, so both find the same rows and the same features."""
    from dist_int.model import HashEncoding

    torch.manual_seed(0)
    enc = HashEncoding(dims, levels=16, log2_table=19, finest_resolution=max(axes) - 1, axis_lengths=axes)
    coords = torch.rand(100_003, dims) * 2 - 1
    idx, w = enc.corners(coords)
    gpu = enc.to("cuda")
    idx_gpu, w_gpu = gpu.corners(coords.to("cuda"))
    assert idx.dtype == idx_gpu.dtype == torch.int32
    assert torch.equal(idx, idx_gpu.cpu())
    torch.testing.assert_close(w, w_gpu.cpu())
