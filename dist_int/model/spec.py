"""What a field costs before it is built, and what a kind of field provides (docs/extending.md).

A kind of field is one module (model/siren.py, model/hash.py) holding its nn.Module and one FieldKind
object: its default size, how it resolves a model config against a signal into a FieldSpec (the numbers
the memory check, the log and the summary need, computed without allocating anything), how it builds
itself, how to describe it and what to lower when it does not fit. model/field.py lists the kinds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldSpec:
    kind: str
    in_dims: int
    out_channels: int
    hidden: int
    layers: int
    num_params: int
    extra: dict = field(default_factory=dict)  # the kind's own numbers (a hash grid's rows and levels)

    def __getattr__(self, name: str):
        try:  # the kind's own numbers read as attributes: spec.table_rows
            return self.__dict__["extra"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def num_bytes(self) -> int:
        """The field's size as stored: fp32 parameters."""
        return 4 * self.num_params

    @property
    def field_kind(self) -> FieldKind:
        from .field import FIELDS

        return FIELDS[self.kind]

    def describe(self) -> str:
        return self.field_kind.describe(self)

    def activation_bytes(self, points: int, train: bool) -> int:
        """A rough upper estimate of one forward (and backward, when training) pass's memory over `points`."""
        return self.field_kind.activation_bytes(self, points, train)


def mlp_params(in_features: int, hidden: int, layers: int, out_features: int) -> int:
    """Parameters of an MLP of `layers` linear layers (weights and biases)."""
    return in_features * hidden + hidden + (layers - 2) * (hidden * hidden + hidden) + hidden * out_features \
        + out_features


def mlp_activation_bytes(spec: FieldSpec, train: bool) -> int:
    """A point's hidden activations (fp32), kept for the backward (and its temporaries) when training."""
    return spec.hidden * 4 * (spec.layers - 1) * (5 if train else 2)


class FieldKind(ABC):
    """One kind of field. Subclasses set `name` and `default_size` and implement the abstract methods."""
    name = ""
    default_size = (0, 0)  # (hidden, layers) where model.hidden / model.layers are 0
    # Whether the field's size depends on the signal's geometry: when it does not, it is checked before the
    # signal is read (engine/trainer.py).
    follows_signal = False

    @abstractmethod
    def spec(self, model, in_dims: int, out_channels: int, axis_lengths, hidden: int, layers: int) -> FieldSpec:
        """The FieldSpec of this field for the signal, computed without allocating the field."""

    @abstractmethod
    def build(self, model, spec: FieldSpec, axis_lengths):
        """The module, initialized from torch's current seed."""

    @abstractmethod
    def describe(self, spec: FieldSpec) -> str:
        """The few words the run's log gives the field."""

    def activation_bytes(self, spec: FieldSpec, points: int, train: bool) -> int:
        return points * mlp_activation_bytes(spec, train)

    def log_note(self, spec: FieldSpec, device) -> str:
        """More words for the run's log line about how it runs on `device` ("; ..."), or ""."""
        return ""

    def check_device(self, model, device) -> None:
        """Raise ConfigError, before anything is written, when the config asks for what `device` cannot run."""

    @abstractmethod
    def too_large(self, model, spec: FieldSpec) -> tuple[str, str, str]:
        """For the refusal of a field that does not fit: (the setting as set, what to lower, what it is)."""
