"""The fields a run can fit, by `model.kind` (docs/fields.md; adding one: docs/extending.md).

Each kind is one module with its nn.Module and its FieldKind (model/spec.py); FIELDS lists them, and the
rest of the code reaches a field through `field_spec` and `build_field` only. `field_spec` resolves a model
config against the signal (input axes, channels, axis lengths) into the numbers the memory check, the
summary and `build_field` need, without allocating anything: a hash table larger than the memory budget is
refused before a byte of it exists.
"""

from __future__ import annotations

import torch
from torch import nn

from .hash import HASH
from .siren import SIREN
from .spec import FieldKind, FieldSpec

FIELDS: dict[str, FieldKind] = {kind.name: kind for kind in (SIREN, HASH)}


def field_spec(model, in_dims: int, out_channels: int, axis_lengths: tuple[int, ...] | None) -> FieldSpec:
    """The field `model` (a config.ModelConfig) describes, for a signal with `in_dims` coordinates,
    `out_channels` values per point and `axis_lengths` samples per axis (None: a point table).
    model.hidden / model.layers = 0 take the kind's own default size."""
    kind = FIELDS[model.kind]
    hidden, layers = kind.default_size
    return kind.spec(model, in_dims, out_channels, axis_lengths, model.hidden or hidden, model.layers or layers)


def build_field(model, in_dims: int, out_channels: int, axis_lengths: tuple[int, ...] | None,
                spec: FieldSpec | None = None) -> nn.Module:
    """The field of `model.kind` for the signal (see field_spec; `spec`: that spec, computed already),
    initialized from torch's current seed."""
    spec = spec or field_spec(model, in_dims, out_channels, axis_lengths)
    return FIELDS[spec.kind].build(model, spec, axis_lengths)


def native_note(spec: FieldSpec, device: torch.device) -> str:
    """For the run's log: what the kind says of how it runs on `device` (a hash field's CPU kernel)."""
    return spec.field_kind.log_note(spec, device)


def bits_per_sample(num_bytes: int, num_points: int) -> float:
    """What the fidelity costs: the field's bits per point of the signal (a point has C values)."""
    return 8 * num_bytes / max(num_points, 1)
