"""Inference in pieces: the one chunked, no-grad forward that scoring, evaluation and rendering share."""

from __future__ import annotations

from typing import Callable, Iterator

import torch

Predict = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def forward_chunks(predict: Predict, coords: torch.Tensor, chunk: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, predict(coords[rows])) for consecutive pieces of at most `chunk` points, so memory stays
    bounded however many points there are. coords: (n, D); each prediction (rows, C)."""
    for start in range(0, coords.shape[0], chunk):
        rows = slice(start, min(start + chunk, coords.shape[0]))
        yield rows, predict(coords[rows])
