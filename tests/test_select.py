"""Single-process checks of the selection pieces; the 2-process versions are in test_distributed.py."""

import numpy as np
import pytest
import torch

from conftest import PointTable
from dist_int.comm import Comm
from dist_int.config import TeacherConfig
from dist_int.errors import ConfigError
from dist_int.teacher import Teacher, make_plan, global_topk, hash_uniform, order_keys, score_order
from dist_int.teacher.select import tie_break


def reference_topk(keys, gids, k, salt=()):
    """The definition: the k points with the largest score, ties broken by the larger tie_break(gid)."""
    tie = tie_break(torch.as_tensor(gids), *salt).tolist()
    order = sorted(range(len(keys)), key=lambda i: (-float(keys[i]), -tie[i]))
    return set(int(gids[i]) for i in order[:k])


def select(scores, gids, k, salt=()):
    return global_topk(order_keys(score_order(scores), gids, *salt), k, Comm())


@pytest.mark.parametrize("k", [1, 17, 500, 999, 1000, 5000])
def test_topk_exact_with_ties(k):
    g = torch.Generator().manual_seed(k)
    keys = torch.randint(0, 7, (1000,), generator=g).float()  # many ties
    gids = torch.randperm(1000, generator=g) * 3
    rows = select(keys, gids, k)
    assert rows.numel() == min(k, 1000) and torch.equal(rows, torch.sort(rows).values)
    assert set(gids[rows].tolist()) == reference_topk(keys, gids, k)


def test_order_keys_order_like_the_scores_for_any_float():
    """Negative, zero, subnormal, huge and infinite scores (soft teachers use log-scores), and large ids."""
    g = torch.Generator().manual_seed(3)
    special = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38, float("inf"), -float("inf"), 1.0, -1.0])
    scores = torch.cat([special, torch.randn(2000, generator=g) * 10.0 ** torch.randint(-30, 30, (2000,),
                                                                                         generator=g),
                        torch.zeros(50), -torch.zeros(50)])
    gids = torch.randperm(scores.numel(), generator=g) + (1 << 32) - scores.numel()  # up to 2^32 - 1
    keys = order_keys(score_order(scores), gids)
    assert keys.unique().numel() == keys.numel()
    ranked = gids[torch.argsort(keys, descending=True)].tolist()
    tie = tie_break(gids).tolist()
    expect = sorted(range(scores.numel()), key=lambda i: (-float(scores[i]), -tie[i]))
    assert ranked == [int(gids[i]) for i in expect]


def test_ties_go_by_a_hash_of_seed_step_and_id_not_by_position():
    """bf16 scores tie over whole regions: ties must not favour the first rows of the grid. The tie order
    is a bijection of 32-bit ids (keys stay unique), changes with (seed, step), and is the same function
    on every rank (it depends on the id alone)."""
    gids = torch.arange(1 << 16)
    assert tie_break(gids, 1, 2).unique().numel() == gids.numel()
    top32 = torch.tensor([0, 1, (1 << 32) - 2, (1 << 32) - 1])
    assert tie_break(top32, 5, 6).unique().numel() == 4 and int(tie_break(top32, 5, 6).max()) < (1 << 32)
    flat = torch.zeros(gids.numel())  # every score equal
    picks = [set(gids[select(flat, gids, 4096, (7, step))].tolist()) for step in range(3)]
    for p in picks:
        assert abs(np.mean(sorted(p)) - gids.numel() / 2) < gids.numel() * 0.03  # not the top rows
        assert len(p & set(range(4096))) < 4096 * 0.15
    assert picks[0] != picks[1] != picks[2]
    # The same points win on a permuted shard: the order depends on the id, not on where it is held.
    perm = torch.randperm(gids.numel(), generator=torch.Generator().manual_seed(1))
    assert set(gids[perm][select(flat, gids[perm], 4096, (7, 0))].tolist()) == picks[0]


def test_nan_error_is_taught_first():
    keys = torch.tensor([0.1, float("nan"), 0.3, 0.2])
    assert select(keys, torch.arange(4), 1).tolist() == [1]


def test_hash_is_a_pure_function():
    gids = torch.arange(100_000)
    a, b = hash_uniform(gids, 1, 2), hash_uniform(gids.flip(0), 1, 2).flip(0)
    assert torch.equal(a, b)
    assert not torch.equal(a, hash_uniform(gids, 1, 3))
    assert 0 <= a.min() and a.max() < 1 and abs(a.mean().item() - 0.5) < 0.01
    # uniform enough: each decile holds ~10 %
    counts = torch.histc(a.float(), bins=10, min=0, max=1)
    assert (counts / len(gids) - 0.1).abs().max() < 0.01


def _plan(chunk_sizes, owners, rank, num_batches, seed=0, windows=1):
    own = owners[rank]
    start = np.concatenate([[0], np.cumsum([chunk_sizes[c] for c in own])])
    return make_plan(chunk_sizes, own, start, num_batches, seed, windows=windows)


def _global_ids(chunk_sizes, owners, rank):
    """gid of each shard row: chunk c holds ids c*1000 + offset (a stand-in for the store's gids)."""
    return torch.cat([torch.arange(chunk_sizes[c]) + 1000 * c for c in owners[rank]])


def test_minibatches_visit_every_point_once_per_epoch_for_any_world_size():
    sizes = [37, 64, 64, 50, 11, 64]
    batches_by_world = {}
    for world in (1, 2, 3):
        owners = [list(range(r, 6, world)) for r in range(world)]
        per_batch = [[] for _ in range(5)]
        for rank in range(world):
            plan, gids = _plan(sizes, owners, rank, 5), _global_ids(sizes, owners, rank)
            for step in range(5, 10):  # epoch 1
                per_batch[step - 5] += gids[plan.rows(step)].tolist()
                assert plan.count(step) == sum(len(np.array_split(range(n), 5)[step % 5])
                                                          for n in sizes)
        everything = sorted(g for b in per_batch for g in b)
        assert everything == sorted(_global_ids(sizes, [list(range(6))], 0).tolist())
        batches_by_world[world] = [sorted(b) for b in per_batch]
    assert batches_by_world[1] == batches_by_world[2] == batches_by_world[3]


@pytest.mark.parametrize("windows, batches", [(4, 4), (3, 6)])
def test_windows_visit_every_point_and_ignore_world_size(windows, batches):
    """Windows of whole chunks: every batch of a window draws from its chunks only (with one batch a
    window, all of each chunk), every point once per epoch, the same on 1, 2 or 3 ranks."""
    sizes = [37, 64, 64, 50, 11, 64, 64, 20, 5]
    per_window = batches // windows
    batches_by_world = {}
    for world in (1, 2, 3):
        owners = [list(range(r, len(sizes), world)) for r in range(world)]
        per_batch = [[] for _ in range(batches)]
        for rank in range(world):
            plan, gids = _plan(sizes, owners, rank, batches, windows=windows), _global_ids(sizes, owners, rank)
            assert plan.num_batches == batches and plan.per_window == per_window and plan.per_epoch
            for step in range(2 * batches, 3 * batches):  # epoch 2
                got = gids[plan.rows(step)]
                per_batch[step - 2 * batches] += got.tolist()
                window = {plan.own_chunks[i] for i in plan.chunk_indices(step)}
                assert set((got // 1000).tolist()) <= window
                if per_window == 1:  # whole chunks: a chunk's points are all in the batch or none are
                    assert sum(sizes[c] for c in window) == got.numel()
        for step in range(2 * batches, 3 * batches):
            assert plan.count(step) == len(per_batch[step - 2 * batches])
        assert sorted(g for b in per_batch for g in b) == sorted(_global_ids(sizes, [list(range(9))], 0).tolist())
        batches_by_world[world] = [sorted(b) for b in per_batch]
    assert batches_by_world[1] == batches_by_world[2] == batches_by_world[3]
    epoch0 = _plan(sizes, [list(range(9))], 0, batches, windows=windows)
    assert [g.tolist() for g in epoch0.window_chunks(0)] != [g.tolist() for g in epoch0.window_chunks(1)]
    assert sorted(len(w) for w in epoch0.window_chunks(0)) == sorted(np.diff(np.linspace(0, 9, windows + 1)
                                                                            .astype(int)).tolist())  # near-equal
    with pytest.raises(ConfigError, match="exceed the 9 chunks"):
        _plan(sizes, [list(range(9))], 0, 10, windows=10)


def test_a_batch_is_a_keyed_random_draw_of_each_chunk():
    """The keyed order of a chunk's offsets is a bijection (checked against its forward map) and mixes:
    a batch takes points from all over a chunk, not a run of neighbours."""
    from dist_int.teacher.batches import order_forward, order_inverse

    for n in (1, 2, 37, 64, 1000, 4096, 5000):
        q, nn = torch.arange(n), torch.full((n,), n)
        key = torch.full((n,), 0x1234567, dtype=torch.int64)
        p = order_inverse(q, nn, key)
        assert sorted(p.tolist()) == list(range(n)) and torch.equal(order_forward(p, nn, key), q)
    rows = _plan([4096], [[0]], 0, 16).rows(0)  # group 0 of 16 of one 64x64 chunk: 256 points
    assert rows.numel() == 256 and rows.float().std() > 0.25 * 4096  # spread over the chunk
    assert len(set((rows // 64).tolist())) > 40  # many of its 64 rows of pixels


def test_a_shuffle_round_equals_its_definition_in_integer_arithmetic():
    """One swap-or-not round (x and its partner (offset - x) mod n swap when the keyed coin of the larger
    says so; batches.py) against Python integers, for chunks of up to 2^31 points: the tensor code takes
    the mod without a division and hashes in place, and must give the same offsets (the batches of every
    earlier run and checkpoint depend on them)."""
    from dist_int.teacher.batches import _M1, _M2, _swap_or_not

    def signed(v):  # an integer modulo 2^64 as the int64 torch holds
        v %= 1 << 64
        return v - (1 << 64) if v >= 1 << 63 else v

    def reference(x, n, offset, coin):
        partner = (offset - x) % n
        c = signed((max(x, partner) ^ coin) * _M1)
        c = signed((c ^ (c >> 29)) * _M2)  # >> of a signed value: arithmetic, as torch's
        return partner if c < 0 else x

    g = torch.Generator().manual_seed(3)
    for n_max in (1, 7, 1000, 1 << 18, (1 << 31) - 1):
        n = torch.randint(1, n_max + 1, (2000,), generator=g)
        x = (torch.rand(2000, generator=g, dtype=torch.float64) * n).long()
        offset = (torch.rand(2000, generator=g, dtype=torch.float64) * n).long()
        coin = torch.randint(-(1 << 62), 1 << 62, (2000,), generator=g) * 2 + torch.randint(0, 2, (2000,), generator=g)
        got = _swap_or_not(x, n, offset, coin).tolist()
        want = [reference(*v) for v in zip(x.tolist(), n.tolist(), offset.tolist(), coin.tolist())]
        assert got == want


def test_the_batches_rows_are_the_ones_earlier_versions_drew():
    """A run's batches (and a checkpoint's cached sets) depend on the exact keyed order: the rows of a
    3-window plan over three epochs, uneven chunks included, hash to the digest the code drew before its
    shuffle was rewritten for speed (commit 33a8cb3)."""
    import hashlib

    sizes = [4096, 4096, 1000, 4096, 2500, 4096, 4096, 77, 4096]
    own = [1, 3, 4, 7, 8]
    start = np.concatenate([[0], np.cumsum([sizes[c] for c in own])])
    plan = make_plan(sizes, own, start, 12, 5, windows=3, steps=36)
    rows = torch.cat([plan.rows(s).long() for s in range(36)])
    assert rows.numel() == 44595
    assert hashlib.sha256(rows.numpy().tobytes()).hexdigest() == \
        "32c2b71287783500771a5ef1c7204c33ab0f6103925f96292ec39aa02efd9972"


def test_epochs_differ():
    plan = _plan([64, 64], [[0, 1]], 0, 4)
    assert not torch.equal(plan.rows(0), plan.rows(4))


def _teacher(strategy, num_batches, steps=20, world_rank=(1, 0), sizes=(64,) * 4, interval="incremental"):
    world, rank = world_rank
    owners = [list(range(r, len(sizes), world)) for r in range(world)]
    cfg = TeacherConfig(strategy=strategy, ratio=0.25, ratio_schedule="step", interval_schedule=interval,
                        num_batches=num_batches)
    plan = _plan(list(sizes), owners, rank, num_batches)
    gids = _global_ids(list(sizes), owners, rank)
    return Teacher(cfg, steps, 0, Comm(), plan, 1000 * len(sizes)), gids


def test_int_teaches_the_largest_errors():
    teacher, gids = _teacher("int", 1)
    n = gids.numel()
    coords = torch.zeros(n, 1)
    values = torch.rand(n, 3, generator=torch.Generator().manual_seed(0))
    batch = teacher.teaching_set(0, PointTable(coords, values, gids), lambda x: torch.zeros(x.shape[0], 3))
    rows, k = batch.rows, batch.count
    err = values.sum(1)
    assert batch.selected and k == round(0.25 * n) == rows.numel()
    assert err[rows].min() >= err[~torch.isin(torch.arange(n), rows)].max()


def test_mix_and_soft_select_as_defined():
    """mix: round(0.3 k) of the largest errors plus uniform picks among the rest; soft: at a low temperature
    nearly top-k, at a high one nearly uniform (the mean error of the set tells)."""
    n = 256
    values = torch.rand(n, 3, generator=torch.Generator().manual_seed(0))
    err = values.sum(1)
    zero = lambda x: torch.zeros(x.shape[0], 3)  # noqa: E731
    teacher, gids = _teacher("mix", 1)
    batch = teacher.teaching_set(0, PointTable(torch.zeros(n, 1), values, gids), zero)
    k, k_top = batch.count, round(0.3 * batch.count)
    assert batch.rows.numel() == k == round(0.25 * n) and len(set(batch.rows.tolist())) == k
    top = set(torch.topk(err, k_top).indices.tolist())
    assert top <= set(batch.rows.tolist())  # the top-k part is there, the rest is not all top errors
    assert set(batch.rows.tolist()) != set(torch.topk(err, k).indices.tolist())
    means = {}
    for temperature in (0.01, 100.0):
        teacher, gids = _teacher("soft", 1)
        teacher.cfg.temperature = temperature
        batch = teacher.teaching_set(0, PointTable(torch.zeros(n, 1), values, gids), zero)
        assert batch.rows.numel() == k
        means[temperature] = err[batch.rows].mean().item()
    assert means[0.01] == pytest.approx(err[torch.topk(err, k).indices].mean().item(), rel=0.02)
    assert means[100.0] == pytest.approx(err.mean().item(), rel=0.1)


def test_one_cached_selection_per_batch():
    teacher, gids = _teacher("uniform", 4, steps=400, interval="step-incremental")
    n = gids.numel()
    coords, values = torch.zeros(n, 1), torch.zeros(n, 1)
    predict = lambda x: torch.zeros(x.shape[0], 1)  # noqa: E731
    # Schedules run per epoch in mini-batch mode: epoch 10 (steps 40..43) begins phase 1 with interval
    # 11, so it selects; epoch 11 (steps 44..47) reuses the cache of each batch.
    points = PointTable(coords, values, gids)
    fresh = [teacher.teaching_set(s, points, predict) for s in range(40, 44)]
    reused = [teacher.teaching_set(s, points, predict) for s in range(44, 48)]
    assert all(b.selected for b in fresh) and not any(b.selected for b in reused)
    for b1, b2 in zip(fresh, reused):
        assert torch.equal(b1.rows, b2.rows) and b1.count == b2.count
    assert len({tuple(b.rows.tolist()) for b in fresh}) == 4  # not one stale cache for all batches


def test_full_strategy_takes_everything():
    teacher, gids = _teacher("full", 1)
    batch = teacher.teaching_set(3, PointTable(torch.zeros(gids.numel(), 1), None, gids), None)
    assert batch.rows is None and batch.count == 256


def test_teacher_state_moves_between_world_sizes(tmp_path):
    """Caches saved per chunk by one rank load on 3 ranks as the same global teaching set, split by
    ownership; each rank reads only its own chunks' files (the others are not even there)."""
    import shutil

    t, gids = _teacher("uniform", 2)
    n = gids.numel()
    for s in range(2):
        t.teaching_set(s, PointTable(torch.zeros(n, 1), torch.zeros(n, 1), gids), None)
    t.save_chunks(tmp_path / "all")
    state = t.state_dict()
    loaded = []
    for rank in range(3):
        t3, gids3 = _teacher("uniform", 2, world_rank=(3, rank))
        mine = tmp_path / f"rank{rank}"
        mine.mkdir()
        for cid in t3.plan.own_chunks:
            name = f"chunk-{cid:08d}.npy"
            shutil.copy(tmp_path / "all" / name, mine / name)
        t3.load_chunks(mine, state)
        loaded.append({b: set(gids3[c.rows].tolist()) for b, c in t3.cache.items()})
    for b, c in t.cache.items():
        assert set().union(*(part[b] for part in loaded)) == set(gids[c.rows].tolist())
        assert sum(len(part[b]) for part in loaded) == c.count == state["batches"][str(b)]


@pytest.mark.parametrize("k", [1, 2, 255, 256, 257, 4000, 9999, 10000])
def test_threshold_search_finds_the_kth_largest_key(k):
    """The radix search by histograms (what several ranks use) on one rank: the k-th largest key, for keys
    spread over the whole int64 range, clustered keys sharing their high digits, and the extremes."""
    from dist_int.teacher.select import threshold_search

    g = torch.Generator().manual_seed(k)
    spread = torch.randint(-(1 << 62), 1 << 62, (9990,), generator=g) * 2
    extremes = torch.tensor([-(1 << 63), (1 << 63) - 1, -1, 0, 1, 2, 3, 4, 5, 6])
    for keys in (torch.cat([spread, extremes]), torch.arange(10000) + (123 << 40)):
        keys = keys[torch.randperm(keys.numel(), generator=g)].unique()
        k_eff = min(k, keys.numel())
        cut = threshold_search(keys, k_eff, Comm())
        assert int(cut) == int(torch.topk(keys, k_eff).values.min())
        assert int((keys >= cut).sum()) == k_eff
