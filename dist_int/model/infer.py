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


# On a CPU a no-grad forward runs fastest on a few thousand points at a time: the intermediates of a piece
# (a hash field's corner rows and weights, a SIREN's hidden activations) then stay in the core's caches.
# Measured on one core (docs/training.md, "Inference pieces on a CPU"): 4,096 points against 16,384,
# 1.35x faster for the gigapixel image's hash field, 1.15-1.3x for SIRENs. A point's output does not
# depend on the other points of its piece: bit for bit the same on every field measured here, though a
# BLAS may pick another kernel for another size and differ in the last bits (tests/test_trainer_parts.py
# compares within a tolerance and checks the teaching set).
# score_chunk and eval_chunk still bound what a piece of rows holds beside the forward (coordinates,
# targets, predictions); on a GPU, where large launches pay, the forward takes the whole piece.
CPU_PIECE = 4096


def predict_pieces(predict: Predict, coords: torch.Tensor, most: int = CPU_PIECE) -> torch.Tensor:
    """predict(coords) for any number of rows, on a CPU in near-equal pieces of at most `most` rows (no
    small tail piece, which a BLAS could treat with another kernel)."""
    n = coords.shape[0]
    if coords.device.type != "cpu" or n <= most:
        return padded(predict, coords)
    return torch.cat([padded(predict, part) for part in coords.tensor_split(-(-n // most))])


@torch.no_grad()
def forward_rows(predict: Predict, points, rows: torch.Tensor, chunk: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(part, predict(points.coords(part))) for consecutive pieces `part` of at most `chunk` of the rows:
    coordinates are made and predicted piece by piece, so memory stays bounded however many rows."""
    for part in rows.split(chunk):
        yield part, predict_pieces(predict, points.coords(part))
