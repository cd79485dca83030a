"""Ratio and interval schedules of INT (Zhang et al., ICML 2024, sec. 4 and appendix; docs/method.md).

`t` counts from 0 to `total - 1`: steps in whole-signal mode, epochs in mini-batch mode.
"""

from __future__ import annotations

import math


def ratio_at(schedule: str, t: int, total: int, r0: float) -> float:
    """Fraction of the candidates the teacher selects at time t."""
    frac = t / total
    if schedule == "constant":
        r = r0
    elif schedule == "step":
        # The paper's best ("incremental"): 10 equal phases, +(1 - r0)/10 per phase: 0.20, 0.28 ... 0.92.
        r = r0 + math.floor(t / (total / 10)) * (1 - r0) / 10
    elif schedule == "linear":
        r = r0 + frac * (1 - r0)
    elif schedule == "cosine":
        r = 1 - (1 - r0) * (1 + math.cos(math.pi * frac)) / 2
    elif schedule == "reverse-cosine":
        r = r0 + (1 - r0) * (1 + math.cos(math.pi * frac)) / 2
    else:
        raise ValueError(f"unknown ratio schedule {schedule!r}")
    return min(max(r, 0.0), 1.0)


def _phase(t: int, start: int, length: float, last: int) -> tuple[int, int]:
    """(phase index, first step of that phase) for equal phases of `length` beginning at `start`."""
    p = min(int((t - start) // length), last)
    return p, start + math.ceil(p * length)


def interval_at(schedule: str, t: int, total: int) -> tuple[int, int]:
    """(interval, step the current interval phase began): selection reruns when (t - begin) % interval == 0."""
    if schedule == "dense":
        return 1, 0
    if schedule == "incremental":
        # Authors' code: every step for the first 25 %, then 5 equal phases with intervals 10, 20 ... 50.
        dense_end = math.ceil(0.25 * total)
        if t < dense_end:
            return 1, 0
        p, begin = _phase(t, dense_end, (total - dense_end) / 5, last=4)
        return 10 * (p + 1), begin
    if schedule == "step-incremental":
        # Paper appendix: 10 equal phases with intervals 1, 11, 21 ... 91.
        p, begin = _phase(t, 0, total / 10, last=9)
        return 1 + 10 * p, begin
    if schedule == "decremental":
        # The incremental schedule played backwards: 5 phases with intervals 50 ... 10 over the first
        # 75 %, then every step (the paper shows this order hurts quality).
        dense_start = math.floor(0.75 * total)
        if t >= dense_start:
            return 1, dense_start
        p, begin = _phase(t, 0, dense_start / 5, last=4)
        return 10 * (5 - p), begin
    raise ValueError(f"unknown interval schedule {schedule!r}")


def should_select(schedule: str, t: int, total: int) -> bool:
    interval, begin = interval_at(schedule, t, total)
    return (t - begin) % interval == 0
