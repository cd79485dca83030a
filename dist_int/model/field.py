"""The fields a run can fit, by `model.kind`, and what each costs before it is built (docs/fields.md).

`field_spec` resolves a model config against the signal (input axes, channels, axis lengths) into the
numbers the memory check, the summary and `build_field` need, without allocating anything: a hash table
larger than the memory budget is refused before a byte of it exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import native
from .hash import MAX_DIMS, HashField, level_grid, level_resolutions, table_rows
from .siren import Siren

FIELDS = ("siren", "hash")
# model.hidden / model.layers = 0 take the field's own default: the INT paper's image SIREN (6 x 256), and
# instant-ngp's image MLP (2 hidden layers of 64 + output).
DEFAULT_SIZE = {"siren": (256, 6), "hash": (64, 3)}
# A point table (shapes) has no sample spacing to follow: its finest hash level then has this many cells
# per axis (the fine half of the samples lies within ~0.002 of the surface on [-1, 1]).
TABLE_FINEST = 1024


@dataclass(frozen=True)
class FieldSpec:
    kind: str
    in_dims: int
    out_channels: int
    hidden: int
    layers: int
    num_params: int
    table_rows: int = 0           # hash: rows of all levels' tables
    finest: float = 0.0           # hash: the finest level's resolution (cells per axis)
    levels_dense: int = 0         # hash: levels stored one row per vertex
    table_levels: int = 0         # hash: levels in all

    def describe(self) -> str:
        if self.kind == "siren":
            return f"SIREN {self.layers}x{self.hidden}"
        return (f"hash grid ({self.table_levels} levels, {self.levels_dense} dense, finest {self.finest:g} cells, "
                f"{self.table_rows:,} rows) + MLP {self.layers}x{self.hidden}")

    @property
    def num_bytes(self) -> int:
        """The field's size as stored: fp32 parameters."""
        return 4 * self.num_params

    def activation_bytes(self, points: int, train: bool) -> int:
        """A rough upper estimate of one forward (and backward, when training) pass's memory over `points`."""
        mlp = self.hidden * 4 * (self.layers - 1) * (5 if train else 2)
        if self.kind == "siren":
            return points * mlp
        # Hash: per point and level, 2^D corner rows (int32, or int64: 8 bytes charged) and weights (fp32),
        # the per-axis terms and the interpolated features; in training, also the weighted gradient of
        # every corner row (32 bytes charged, which also covers the backward's int64 copy of the rows).
        corners = 2 ** self.in_dims
        levels = self.table_levels
        per_level = corners * 12 + self.in_dims * 40 + 8 * 4 + (corners * 4 * 8 if train else 0)
        return points * (mlp + levels * per_level)


def field_spec(model, in_dims: int, out_channels: int, axis_lengths: tuple[int, ...] | None) -> FieldSpec:
    """The field `model` (a config.ModelConfig) describes, for a signal with `in_dims` coordinates,
    `out_channels` values per point and `axis_lengths` samples per axis (None: a point table)."""
    hidden, layers = DEFAULT_SIZE[model.kind]
    hidden, layers = model.hidden or hidden, model.layers or layers
    if model.kind == "siren":
        params = in_dims * hidden + hidden + (layers - 2) * (hidden * hidden + hidden) + hidden * out_channels \
            + out_channels
        return FieldSpec("siren", in_dims, out_channels, hidden, layers, params)
    if in_dims > MAX_DIMS:
        from ..errors import ConfigError

        raise ConfigError(f"model.kind = \"hash\" takes signals of 1 to {MAX_DIMS} coordinate axes; this one "
                          f"has {in_dims}; use model.kind = \"siren\"")
    finest = model.finest_resolution or (max(axis_lengths) - 1 if axis_lengths else TABLE_FINEST)
    finest = max(finest, model.base_resolution)
    grids = [level_grid(r, axis_lengths, in_dims)
             for r in level_resolutions(model.levels, model.base_resolution, finest, model.growth)]
    rows = [table_rows(g, model.log2_table) for g in grids]
    num_rows = sum(r for r, _ in rows)
    feats = model.levels * model.features
    mlp = feats * hidden + hidden + (layers - 2) * (hidden * hidden + hidden) + hidden * out_channels + out_channels
    return FieldSpec("hash", in_dims, out_channels, hidden, layers, num_rows * model.features + mlp, num_rows,
                     float(max(max(g) for g in grids)), sum(d for _, d in rows), model.levels)


def build_field(model, in_dims: int, out_channels: int, axis_lengths: tuple[int, ...] | None) -> nn.Module:
    """The field of `model.kind` for the signal (see field_spec), initialized from torch's current seed."""
    spec = field_spec(model, in_dims, out_channels, axis_lengths)
    if model.kind == "siren":
        return Siren(in_dims, out_channels, spec.hidden, spec.layers, model.w0, model.w0_first)
    finest = model.finest_resolution or (max(axis_lengths) - 1 if axis_lengths else TABLE_FINEST)
    return HashField(in_dims, out_channels, spec.hidden, spec.layers, model.activation, model.w0, model.levels,
                     model.features, model.log2_table, model.base_resolution,
                     max(finest, model.base_resolution), model.growth, axis_lengths)


def native_note(spec: FieldSpec, device: torch.device) -> str:
    """For the run's log: which path a hash field's no-grad encoding takes on a CPU (model/native.py)."""
    return f"; no-grad encoding: {native.status()}" if spec.kind == "hash" and device.type == "cpu" else ""


def bits_per_sample(num_bytes: int, num_points: int) -> float:
    """What the fidelity costs: the field's bits per point of the signal (a point has C values)."""
    return 8 * num_bytes / max(num_points, 1)


