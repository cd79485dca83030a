import math

import pytest

from dist_int.teacher.schedules import interval_at, ratio_at, should_select

T = 5000


@pytest.mark.parametrize("t, expected", [(0, 0.2), (499, 0.2), (500, 0.28), (2500, 0.6), (4999, 0.92)])
def test_step_ratio(t, expected):
    assert ratio_at("step", t, T, 0.2) == pytest.approx(expected)


@pytest.mark.parametrize("schedule, t, expected", [
    ("constant", 3000, 0.2),
    ("linear", 0, 0.2), ("linear", 2500, 0.6), ("linear", 5000, 1.0),
    ("cosine", 0, 0.2), ("cosine", 2500, 0.6), ("cosine", 5000, 1.0),
    ("reverse-cosine", 0, 1.0), ("reverse-cosine", 2500, 0.6), ("reverse-cosine", 5000, 0.2),
])
def test_other_ratios(schedule, t, expected):
    assert ratio_at(schedule, t, T, 0.2) == pytest.approx(expected)


def test_incremental_interval_matches_authors_code():
    # Every step for the first 25 %, then 5 equal phases with intervals 10..50.
    assert interval_at("incremental", 0, T)[0] == 1
    assert interval_at("incremental", 1249, T)[0] == 1
    assert interval_at("incremental", 1250, T)[0] == 10
    assert interval_at("incremental", 2000, T)[0] == 20
    assert interval_at("incremental", 4999, T)[0] == 50
    passes = sum(should_select("incremental", t, T) for t in range(T))
    assert 1350 <= passes <= 1450  # "about 1,400 selection passes in 5,000 steps"


def test_step_incremental_interval_matches_paper_appendix():
    assert [interval_at("step-incremental", p * 500, T)[0] for p in range(10)] == list(range(1, 100, 10))
    assert should_select("step-incremental", 500, T) and not should_select("step-incremental", 501, T)
    assert should_select("step-incremental", 511, T)


def test_dense_and_decremental():
    assert all(should_select("dense", t, T) for t in range(0, T, 7))
    assert interval_at("decremental", 0, T)[0] == 50
    assert interval_at("decremental", 3749, T)[0] == 10
    assert interval_at("decremental", 3750, T)[0] == 1


@pytest.mark.parametrize("schedule", ["dense", "incremental", "step-incremental", "decremental"])
@pytest.mark.parametrize("total", [1, 7, 100, 5000])
def test_first_step_always_selects(schedule, total):
    assert should_select(schedule, 0, total)
    assert all(math.isfinite(interval_at(schedule, t, total)[0]) for t in range(total))
