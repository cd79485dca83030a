"""GPU-only checks (skipped on machines without CUDA; bench/gpu_check.py runs the speed side)."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("strategy, num_batches, grad_clip", [("int", 1, 0.0), ("full", 4, 0.0),
                                                               ("int", 1, 0.1)])
def test_a_step_without_selection_never_synchronizes_the_gpu(tmp_path, png_image, strategy, num_batches,
                                                            grad_clip):
    """The step that reuses a cached teaching set queues work and returns: an implicit sync raises
    (sync debug mode), and so does an explicit torch.cuda.synchronize (patched for the check)."""
    import os

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
    from conftest import free_port

    os.environ["MASTER_PORT"] = str(free_port())
    from dist_int.config import Config
    from dist_int.engine.launch import detect_launch, init_distributed, pick_device, shutdown
    from dist_int.signal import Shard, SignalStore, assign_chunks
    from dist_int.modality import ingest

    device = pick_device(detect_launch())
    init_distributed(detect_launch(), device, 60)
    ingest(str(png_image), tmp_path / "s.zarr", 16)
    store = SignalStore(tmp_path / "s.zarr")
    shard = Shard.load(store, assign_chunks(store.num_chunks, 1, 0)[0], device)
    cfg = Config()
    cfg.train.steps = 100
    cfg.teacher.strategy, cfg.teacher.num_batches, cfg.optim.grad_clip = strategy, num_batches, grad_clip

    def forbidden(*args, **kwargs):
        raise AssertionError("explicit device synchronization in a step")

    try:
        _check_steps(cfg, device, store, shard, forbidden)
    finally:
        shutdown()


def _check_steps(cfg, device, store, shard, forbidden):
    from dist_int.comm import Comm
    from dist_int.engine.deepspeed_engine import build_engine
    from dist_int.engine.precision import Precision
    from dist_int.engine.step import TrainStep
    from dist_int.model import Siren
    from dist_int.teacher import BatchPlan, Teacher

    for precision in ("tf32", "bf16"):
        prec = Precision(precision, device)
        engine, _ = build_engine(Siren(2, 3, 32, 3).to(device), cfg, prec)
        plan = BatchPlan([store.chunk_size(c) for c in range(store.num_chunks)], shard.chunk_ids,
                         shard.chunk_start, cfg.teacher.num_batches, 0, device)
        teacher = Teacher(cfg.teacher, 100, 0, Comm(), plan, store.num_points)
        step = TrainStep(engine, 1, 3, device)

        def score(x):
            with prec.scoring():
                return engine.module(x)

        def one(t):
            batch = teacher.teaching_set(t, shard, score)
            step(shard.coords(batch.rows), shard.targets(batch.rows), batch.count, batch.max_rows)
            return batch

        for t in range(28):  # the incremental interval selects every step for the first 25 %; full
            one(t)           # mini-batches build epoch 6's batches at step 24
        torch.cuda.synchronize()
        real = torch.cuda.synchronize, torch.cuda.Event.synchronize
        torch.cuda.synchronize = torch.cuda.Event.synchronize = forbidden
        torch.cuda.set_sync_debug_mode("error")
        try:
            for t in range(28, 32):  # interval 10 from step 25 (reuse the cache); full: epoch 7 is built
                                     # at step 28, inside the checked steps
                assert not one(t).selected
        finally:
            torch.cuda.set_sync_debug_mode(0)
            torch.cuda.synchronize, torch.cuda.Event.synchronize = real
