"""Inference in pieces: the one chunked, no-grad forward that scoring, evaluation and rendering share."""

from __future__ import annotations

from typing import Callable, Iterator

import torch

Predict = Callable[[torch.Tensor], torch.Tensor]


# torch.compile(dynamic=True) still specializes inputs of 0 and 1 rows: each would be a graph of its own,
# and the recompile limit ends in a silent fallback to eager on one rank while the others wait (docs/
# training.md, "torch.compile"). Shorter inputs are padded with zero rows to this many, and the output cut.
MIN_ROWS = 2


def padded(fn, x: torch.Tensor) -> torch.Tensor:
    """fn(x) for x of any number of rows, never calling fn with fewer than MIN_ROWS (the size is known on
    the host: no device read)."""
    n = x.shape[0]
    if n >= MIN_ROWS:
        return fn(x)
    full = torch.cat([x, x.new_zeros((MIN_ROWS - n, *x.shape[1:]))])
    # A view stays a view: compiled graphs guard on whether their input is one (a slice of the step's rows).
    return fn(full[:MIN_ROWS] if x._is_view() else full)[:n]


@torch.no_grad()
def forward_rows(predict: Predict, points, rows: torch.Tensor, chunk: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(part, predict(points.coords(part))) for consecutive pieces `part` of at most `chunk` of the rows:
    coordinates are made and predicted piece by piece, so memory stays bounded however many rows."""
    for part in rows.split(chunk):
        yield part, padded(predict, points.coords(part))
