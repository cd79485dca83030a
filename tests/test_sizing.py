"""Parts sized from the budget (engine/sizing.py): a user sets the signal and at most a budget. The config's
sizes are kept where they fit; where they do not, passes, then batches, then windows are made smaller, and
the run fits. Signals here are stores with metadata and no data (the sizing reads no value), so sizes of
real media (a 4 s 720p clip, 1 Gpx) are checked in a moment; tests/test_stream.py and the benchmarks run
such configs for real."""

import numpy as np
import pytest
import torch
import zarr

from conftest import ROOT


def virtual_store(path, shape, chunks, dtype="uint8", kind="image", meta=None):
    """A signal store as ingest writes it, without its values (Zarr writes no chunk until one is set)."""
    from dist_int.signal import SignalStore
    from dist_int.signal.source import ATTR

    arr = zarr.create_array(path, shape=shape, chunks=chunks, dtype=dtype)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    arr.attrs[ATTR] = {"kind": kind, "source": "virtual", "source_sha256": "", "source_dtype": np.dtype(dtype).name,
                       "data_range": [0.0, 1.0] if info is None else [float(info.min), float(info.max)],
                       "dtype_range": None if info is None else [float(info.min), float(info.max)],
                       "value_range": [0.0, 1.0] if info is None else [float(info.min), float(info.max)],
                       **(meta or {})}
    return SignalStore(path)


def fits(cfg, store, world_size, total):
    """Whether every rank's budget check passes with these sizes, and where a rank's shard streams, two of
    its windows fit the training share of the signal's budget (as the trainer, then each streamed shard,
    decide: engine/budget.py, rank_budget; signal/stream.py, check_plan)."""
    from dist_int.engine.budget import rank_budget
    from dist_int.signal.store import held_dtype
    from dist_int.signal.stream import TRAIN_SHARE

    point_bytes = store.channels * held_dtype(store).itemsize
    for rank in range(world_size):
        own, plan, budget = rank_budget(cfg, store, rank, world_size, torch.device("cpu"), total)  # raises
        if sum(store.chunk_size(c) for c in own) * point_bytes > budget.signal_bytes:  # streamed
            assert 2 * plan.most_window_points() * point_bytes <= budget.signal_bytes * TRAIN_SHARE, rank
    return True


def test_sizes_that_fit_are_kept(tmp_path):
    from dist_int.config import load_config
    from dist_int.engine.sizing import size_parts

    store = virtual_store(tmp_path / "s.zarr", (512, 512, 3), (128, 128, 3))
    cfg = load_config(ROOT / "configs" / "image.toml")
    sized, notes = size_parts(cfg, store, 2, torch.device("cpu"), 16 << 30)
    assert notes == [] and sized.to_dict() == cfg.to_dict()
    # At 1.5 GB the 131,072-point scoring pass of the 512-wide SIREN (about 2 GiB) does not fit: passes are
    # cut first, and nothing else changes.
    sized, notes = size_parts(cfg, store, 2, torch.device("cpu"), 1536 << 20)
    assert notes and all(n.split()[0] in ("teacher.score_chunk", "train.eval_chunk", "train.max_points_per_pass")
                         for n in notes), notes
    assert sized.teacher.batch_points == cfg.teacher.batch_points and fits(sized, store, 2, 1536 << 20)


def test_a_4s_720p_clip_fits_1_5_gb_per_rank_with_no_flag(tmp_path):
    """configs/video.toml on 132 frames of 1280x720 (122 M points) was refused: 'this run needs about 58,353
    MiB on each rank ... make the parts smaller'. Sized, it fits 1.5 GB a rank on 2 ranks."""
    from dist_int.config import load_config
    from dist_int.engine.budget import rank_budget
    from dist_int.engine.sizing import size_parts

    store = virtual_store(tmp_path / "v.zarr", (132, 720, 1280, 3), (8, 128, 128, 3), kind="video",
                          meta={"fps_fraction": "30/1"})
    cfg = load_config(ROOT / "configs" / "video.toml")
    total = 1536 << 20
    with pytest.raises(Exception, match="make the parts smaller|needs about"):
        rank_budget(cfg, store, 0, 2, torch.device("cpu"), total)  # as shipped, unsized
    sized, notes = size_parts(cfg, store, 2, torch.device("cpu"), total)
    assert notes and any("batch_points" in n for n in notes), notes
    assert fits(sized, store, 2, total)


@pytest.mark.parametrize("mib, ranks", [(550, 2), (600, 2), (650, 4), (700, 4)])
def test_streamed_windows_fit_every_rank_at_tight_budgets(tmp_path, mib, ranks):
    """Windows are uneven (a rank's share of one varies from epoch to epoch), and every rank checks its own:
    the sizes must fit every rank's check, not only an average or the largest shard's."""
    from dist_int.config import load_config
    from dist_int.engine.sizing import size_parts

    store = virtual_store(tmp_path / "v.zarr", (2000, 720, 1280, 3), (8, 128, 128, 3), kind="video",
                          meta={"fps_fraction": "30/1"})
    cfg = load_config(ROOT / "configs" / "video.toml")
    sized, notes = size_parts(cfg, store, ranks, torch.device("cpu"), mib << 20)
    assert any("window_points" in n for n in notes) and fits(sized, store, ranks, mib << 20), notes


def test_a_resumed_run_keeps_its_batch_plan_on_other_ranks_and_budgets(tmp_path):
    """Batches and windows lowered to fit depend on the ranks and their memory; a resume keeps those of the
    first start (they decide the teacher's cached sets and schedules), and sizes only the passes anew."""
    from dist_int.config import load_config
    from dist_int.engine.sizing import plan_of, size_parts

    store = virtual_store(tmp_path / "v.zarr", (2000, 720, 1280, 3), (8, 128, 128, 3), kind="video",
                          meta={"fps_fraction": "30/1"})
    cfg = load_config(ROOT / "configs" / "video.toml")
    first, _ = size_parts(cfg, store, 2, torch.device("cpu"), 1536 << 20)
    fresh, _ = size_parts(cfg, store, 3, torch.device("cpu"), 1024 << 20)
    assert plan_of(fresh) != plan_of(first)  # sized anew, the plan would change
    kept, notes = size_parts(cfg, store, 3, torch.device("cpu"), 1024 << 20, keep_plan=plan_of(first))
    assert plan_of(kept) == plan_of(first) and not any("batch_points" in n or "window_points" in n for n in notes)


@pytest.mark.parametrize("config, shape, chunks, kind", [
    ("gigapixel.toml", (32768, 32768, 3), (512, 512, 3), "image"),
    ("hash.toml", (16384, 16384, 3), (128, 128, 3), "image"),
    ("audio.toml", (3600 * 48000, 1), (65536, 1), "audio"),
    ("volume.toml", (1024, 1024, 1024, 1), (32, 32, 32, 1), "volume"),
    ("video.toml", (2000, 720, 1280, 3), (8, 128, 128, 3), "video"),
    ("shape.toml", (4_000_000, 4), (10000, 4), "shape"),
])
def test_every_shipped_config_fits_any_size_of_its_kind_at_1_5_gb(tmp_path, config, shape, chunks, kind):
    from dist_int.config import load_config
    from dist_int.engine.sizing import size_parts

    meta = {"samplerate": 48000, "subtype": "PCM_16"} if kind == "audio" else (
        {"fps_fraction": "30/1"} if kind == "video" else {})
    dtype = {"audio": "int16", "shape": "float32"}.get(kind, "uint8")
    store = virtual_store(tmp_path / "s.zarr", shape, chunks, dtype=dtype, kind=kind, meta=meta)
    overrides = ["model.log2_table=18"] if config == "gigapixel.toml" else []
    cfg = load_config(ROOT / "configs" / config, overrides)
    sized, notes = size_parts(cfg, store, 2, torch.device("cpu"), 1536 << 20)
    assert fits(sized, store, 2, 1536 << 20), notes
    # Sizes a run can live with: batches and windows of many chunks, not a point or two at a time.
    chunk = int(np.prod(chunks[:-1]))
    assert sized.num_batches(store.num_points) <= store.num_points // chunk, notes
    assert sized.num_windows(store.num_points, store.num_chunks) <= store.num_chunks // 8, notes


def test_a_field_that_cannot_fit_is_refused_naming_the_field(tmp_path):
    """configs/gigapixel.toml's 2^22-row table (57.9 M parameters on 32768^2 geometry) took about 2 GB with
    9 copies of its parameters; with the guard's copy on disk (engine/budget.py, guard_place) it fits a
    1.5 GB rank. Below what its weights, gradients and moments need, it is refused, naming the table."""
    from dist_int.config import load_config
    from dist_int.engine.budget import guard_place, rank_budget
    from dist_int.engine.sizing import size_parts
    from dist_int.errors import ConfigError
    from dist_int.model import field_spec

    store = virtual_store(tmp_path / "s.zarr", (32768, 32768, 3), (512, 512, 3))
    cfg = load_config(ROOT / "configs" / "gigapixel.toml")
    cpu = torch.device("cpu")
    assert guard_place(cpu, field_spec(cfg.model, *store.geometry).num_params, 1536 << 20) == "disk"
    assert fits(size_parts(cfg, store, 2, cpu, 1536 << 20)[0], store, 2, 1536 << 20)
    sized, _ = size_parts(cfg, store, 2, cpu, 1024 << 20)
    with pytest.raises(ConfigError, match="model.log2_table=22: the field needs about 1,104 MiB .* lower "
                                          "model.log2_table"):
        rank_budget(sized, store, 0, 2, cpu, 1024 << 20)
