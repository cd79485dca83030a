"""The replay teacher: its error record (teacher/record.py), its selections, and the run-level promises it
keeps like every teacher: 1 rank = 2 ranks, resumed = uninterrupted, resident = streamed."""

import signal

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import read_metrics, read_summary, run_train, smooth_image


class _Shard:
    """The geometry an ErrorRecord reads of a shard: chunk extents and rows laid out chunk by chunk."""

    def __init__(self, extents):
        from dist_int.signal.store import Shard

        self.chunk_extents = np.asarray(extents, dtype=np.int64)
        self.device = torch.device("cpu")
        sizes = self.chunk_extents.prod(1)
        self.chunk_start = np.concatenate([[0], np.cumsum(sizes)])
        self._starts = torch.from_numpy(self.chunk_start)
        self._extent = torch.from_numpy(self.chunk_extents.T.copy())
        self.spatial = (0,) * self.chunk_extents.shape[1]
        self.in_chunk = Shard.in_chunk.__get__(self)
        self.num_points = int(self.chunk_start[-1])


def test_the_record_keeps_the_last_error_of_every_point_or_cell():
    from dist_int.teacher.record import ErrorRecord, record_shift

    shard = _Shard([[4, 6], [3, 5]])  # two chunks of a 2-D signal: 24 and 15 points
    record = ErrorRecord(shard)
    rows = torch.arange(39)
    assert record.num_cells == 39 and torch.isinf(record.scores(rows)).all()  # never observed: first
    record.observe(torch.tensor([0, 5, 30]), torch.tensor([0.5, 0.25, 2.0]))
    record.observe(torch.tensor([5]), torch.tensor([0.125]))  # the last observation counts
    assert record.scores(torch.tensor([0, 5, 30, 1])).tolist() == [0.5, 0.125, 2.0, float("inf")]
    # Cells of 2 x 2 samples inside each chunk: 2 x 3 + 2 x 3 cells; a cell keeps its largest error
    coarse = ErrorRecord(shard, shift=1)
    assert coarse.num_cells == 12 and coarse.num_bytes == 24
    first = torch.tensor([0, 1, 6, 7])  # chunk 0's rows (0, 0) (0, 1) (1, 0) (1, 1): its first cell
    assert coarse.cells(first).tolist() == [0, 0, 0, 0] and coarse.cells(torch.tensor([24])).tolist() == [6]
    coarse.observe(first, torch.tensor([0.1, 0.4, 0.2, 0.3]))
    assert coarse.scores(torch.tensor([7])).item() == pytest.approx(0.4, rel=1e-2)
    # Resampled across cell sizes (a checkpoint saved coarser or finer): the largest of merged cells
    fine = ErrorRecord(shard)
    fine.observe(rows, torch.linspace(0.01, 0.39, 39))
    fine.coarsen(1)
    assert fine.num_cells == 12 and fine.scores(torch.tensor([7])).item() == pytest.approx(0.08, rel=1e-2)
    restored = ErrorRecord(shard)
    restored.load_chunk(0, fine.chunk_values(0), 1)  # chunk 0 saved at cells of 2^1: each value repeated
    assert restored.scores(torch.tensor([0, 1, 6, 7])).unique().numel() == 1
    assert record_shift(shard.chunk_extents, 39 * 2) == 0 and record_shift(shard.chunk_extents, 30) == 1


def test_replay_selects_unseen_points_first_then_by_recorded_error():
    from dist_int.comm import Comm
    from dist_int.config import load_config
    from dist_int.teacher import Teacher
    from dist_int.teacher.batches import BatchPlan
    from dist_int.teacher.record import ErrorRecord

    shard = _Shard([[16, 16]])
    shard.gids = lambda rows: rows.long()
    cfg = load_config(None, ["teacher.strategy=replay", "teacher.ratio=0.25", "teacher.ratio_schedule=constant",
                             "teacher.interval_schedule=dense", "teacher.temperature=0.01"]).teacher
    record = ErrorRecord(shard)
    teacher = Teacher(cfg, 10, 0, Comm(), BatchPlan([256], [0], shard.chunk_start, 1, 0), 256, record=record)
    record.observe(torch.arange(200), torch.full((200,), 0.01))
    first = teacher.teaching_set(0, shard, None)  # no model: a replay selection runs no forward pass
    assert first.count == 64 and set(range(200, 256)) <= set(first.rows.tolist())  # the 56 unseen, first
    record.observe(torch.arange(256), torch.where(torch.arange(256) % 4 == 0, 1.0, 0.001))
    second = teacher.teaching_set(1, shard, None)  # sharp sampling (temperature 0.01): the large errors
    assert (second.rows % 4 == 0).all() and second.count == 64


def _image(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(smooth_image()).save(path)
    return path


REPLAY = ["teacher.strategy=replay", "teacher.ratio=0.5", "teacher.ratio_schedule=constant",
          "teacher.interval_schedule=dense"]


@pytest.mark.slow
@pytest.mark.parametrize("importance", [0.0, 1.0])
def test_replay_on_two_streamed_ranks_resumed_equals_one_resident_rank(tmp_path, importance):
    """2 ranks stream their shards, are stopped by SIGTERM and resumed (the record and the cached weights
    come back from the checkpoint); 1 rank holds its shard and runs through. Both end at the same PSNR."""
    from test_stream import _streaming_budget_mb
    from test_train_e2e import TINY, _interrupt

    image = _image(tmp_path)
    args = [f"signal.path={image}", *TINY, *REPLAY, "train.steps=160", "teacher.num_batches=16",
            "teacher.window_points=512", "checkpoint.every=20", f"teacher.importance={importance}",
            "teacher.interval_schedule=incremental" if importance else "teacher.interval_schedule=dense"]
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

