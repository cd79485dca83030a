"""SIREN (Sitzmann et al., NeurIPS 2020): an MLP with sine activations. Knows nothing of distribution."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .spec import FieldKind, FieldSpec, mlp_params


class SineLayer(nn.Module):
    def __init__(self, d_in: int, d_out: int, w0: float, is_first: bool):
        super().__init__()
        self.w0 = w0
        self.linear = nn.Linear(d_in, d_out)
        # SIREN sec. 3.2 / supplement 1.5: the first layer spans [-1/d_in, 1/d_in] so that w0 * x covers
        # several periods; later layers use sqrt(6/d_in)/w0 so pre-activations stay ~N(0, 1) through depth.
        bound = 1.0 / d_in if is_first else math.sqrt(6.0 / d_in) / w0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sin(w0 (W x + b)) computed as sin((w0 W) x + w0 b): the same function and gradients, with w0
        # applied to the small weight matrix instead of every activation (about 14 % of a CPU training
        # step at 4x64; docs/training.md).
        return torch.sin(F.linear(x, self.linear.weight * self.w0, self.linear.bias * self.w0))


class Siren(nn.Module):
    """`layers` counts every linear layer, as the paper does: 6 = 5 sine layers + 1 linear output."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 256, layers: int = 6,
                 w0: float = 30.0, w0_first: float = 30.0):
        super().__init__()
        if layers < 2:
            raise ValueError("a SIREN needs at least 2 linear layers (one sine layer and the output)")
        dims = [in_features] + [hidden] * (layers - 1)
        self.net = nn.Sequential(*[
            SineLayer(d_in, d_out, w0_first if i == 0 else w0, is_first=(i == 0))
            for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:]))
        ])
        self.out = nn.Linear(hidden, out_features)
        bound = math.sqrt(6.0 / hidden) / w0
        with torch.no_grad():
            self.out.weight.uniform_(-bound, bound)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        # (N, D) -> (N, hidden): the first layer always runs in fp32, even under autocast. Coordinates and
        # w0 * (W x + b) need more than bf16's 8-bit mantissa, or neighbouring points become the same input.
        # float64 coordinates (an axis too long for float32 to resolve) run it in float64.
        with torch.autocast(coords.device.type, enabled=False):
            if coords.dtype == torch.float64:
                first = self.net[0]
                h = torch.sin(F.linear(coords, first.linear.weight.double() * first.w0,
                                       first.linear.bias.double() * first.w0)).float()
            else:
                h = self.net[0](coords.float())
        # (N, hidden) -> (N, C)
        return self.out(self.net[1:](h))

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def optimizer_groups(self) -> list[dict]:
        """One group: every weight takes the run's Adam settings."""
        return [{"params": list(self.parameters())}]


class SirenKind(FieldKind):
    """model.kind = "siren": the INT paper's field."""
    name = "siren"
    default_size = (256, 6)  # the INT paper's image SIREN

    def spec(self, model, in_dims, out_channels, axis_lengths, hidden, layers) -> FieldSpec:
        return FieldSpec("siren", in_dims, out_channels, hidden, layers,
                         mlp_params(in_dims, hidden, layers, out_channels))

    def build(self, model, spec, axis_lengths) -> Siren:
        return Siren(spec.in_dims, spec.out_channels, spec.hidden, spec.layers, model.w0, model.w0_first)

    def describe(self, spec) -> str:
        return f"SIREN {spec.layers}x{spec.hidden}"

    def too_large(self, model, spec):
        return f"model.hidden={spec.hidden}", "lower model.hidden", f"the {spec.layers}x{spec.hidden} SIREN"


SIREN = SirenKind()
