"""Inference in pieces: the one chunked, no-grad forward that scoring, evaluation and rendering share."""

from __future__ import annotations

from typing import Callable, Iterator

import torch

Predict = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def forward_rows(predict: Predict, points, rows: torch.Tensor, chunk: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(part, predict(points.coords(part))) for consecutive pieces `part` of at most `chunk` of the rows:
    coordinates are made and predicted piece by piece, so memory stays bounded however many rows."""
    for part in rows.split(chunk):
        yield part, predict(points.coords(part))
