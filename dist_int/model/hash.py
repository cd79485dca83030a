"""A multiresolution hash-grid field (instant-ngp: Mueller et al., SIGGRAPH 2022) for 1-D to 4-D signals.

L levels of grids, from `base_resolution` cells per axis to `finest_resolution`, the resolution growing by
a constant factor per level (eq. 2 and 3 of the paper). Each grid vertex holds F trainable features; a
point takes the linear (bi-, tri-linear) interpolation of the features at the 2^D corners of its cell on
every level, and a small MLP maps the L*F concatenated features to the signal's channels. A coarse level
whose vertices fit in the table (T = 2^log2_table entries) is stored densely, one row per vertex; finer
levels share a table of T rows through the spatial hash xor_d(v_d * pi_d) mod T (sec. 3 of the paper), so
collisions are resolved by the gradient: the points with the most error win the entry.

Why it is written this way (docs/fields.md):
- Every level's rows live in one flat fp32 parameter (sum of the level sizes, F), so DeepSpeed sees one
  tensor to keep in sync and checkpoint, and one gather serves all levels.
- The index computation is one set of tensor ops for all levels and corners at once (no Python loop over
  corners or levels on the hot path; the small loop over the D axes combines per-axis terms). The forward
  interpolation is one `embedding_bag` (a weighted sum of C = 2^D rows per point and level); the backward
  is one `index_add_` of the weighted output gradient into the rows. Coordinates never need a gradient, so
  neither do the weights.
- Resolutions are capped per axis at the signal's own sample spacing: a level finer than the samples adds
  parameters that no sample can tell apart.
- With no gradient wanted on a CPU (the teacher's scoring, evaluation, rendering), one fused C kernel
  computes the same bits as these ops; the field's forward runs 1.35-2.5x faster with it (model/native.py;
  docs/fields.md, "A native kernel for scoring"; bench/results/hash_kernel.md).
- On CUDA devices two fused Triton kernels (forward, backward) replace the ops (`model.encoding`,
  model/hash_triton.py; docs/fields.md, "Triton kernels"); the ops stay the reference they are tested
  against.
The model knows nothing of distribution (docs/design.md).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import native
from .spec import FieldKind, FieldSpec, mlp_activation_bytes, mlp_params

# The paper's hashing primes (pi_1 = 1 keeps the first axis coherent in memory), one per axis.
PRIMES = (1, 2654435761, 805459861, 3674653429)
ENCODINGS = ("auto", "torch", "triton")  # model.encoding
MAX_DIMS = len(PRIMES)
INIT_SCALE = 1e-4  # table entries start at U(-1e-4, 1e-4) (the paper, sec. 4)
# The paper's Adam for the tables: beta2 = 0.99 and eps = 1e-15, since a table row sees a gradient only
# in the steps that touch it, and most of its gradients are tiny (sec. 4).
TABLE_ADAM = {"betas": (0.9, 0.99), "eps": 1e-15, "weight_decay": 0.0}


def _wrap(value: int, bits: int) -> int:
    """value modulo 2^bits as a signed integer of that width (a prime above 2^31 as an int32)."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def level_resolutions(levels: int, base: int, finest: float, growth: float = 0.0) -> list[int]:
    """Cells per axis on each level: floor(base * b^l) with b = (finest / base)^(1 / (levels - 1)) (the
    paper's eq. 2-3), or b = `growth` when it is given."""
    if growth <= 0:
        growth = math.exp((math.log(finest) - math.log(base)) / (levels - 1)) if levels > 1 else 1.0
    return [max(1, int(math.floor(base * growth ** level + 1e-9))) for level in range(levels)]


def level_grid(resolution: int, axis_lengths: tuple[int, ...] | None, dims: int) -> tuple[int, ...]:
    """Cells along each axis on a level: the level's resolution, capped at the signal's sample spacing
    (n samples on an axis are n - 1 cells apart; a point table has no spacing and is not capped)."""
    if axis_lengths is None:
        return (resolution,) * dims
    return tuple(max(1, min(resolution, n - 1)) for n in axis_lengths)


def table_rows(grid: tuple[int, ...], log2_table: int) -> tuple[int, bool]:
    """(rows, dense) of a level: one row per vertex when they fit in 2^log2_table, else the hashed table."""
    vertices = math.prod(c + 1 for c in grid)
    return (vertices, True) if vertices <= (1 << log2_table) else (1 << log2_table, False)


class _Interpolate(torch.autograd.Function):
    """Weighted table rows: out[f, p] = sum_c w[c, p] * table[f, idx[c, p]] for every point-and-level p.

    The table is held feature-major, (F, rows), so the gather, the weighting and the gradient's scatter are
    ops over long contiguous rows whose only broadcast is over leading dimensions; on CPUs broadcasting
    over a trailing dimension of 2 features costs several times more. The corners are summed one after
    the other, the same order for every point: torch's sum over the corner axis adds the last few values of
    a tensor in another order than the rest, so a point's features would depend on its place in the piece
    (and the C kernel, model/native.py, could not match them). Backward: one index_add_ of the weighted
    gradient (with int64 rows: CPU's index_add_ is many times slower with int32 ones)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx, w)
        ctx.rows = table.shape[1]
        rows = table.index_select(1, idx.view(-1)).view(table.shape[0], *idx.shape)      # (F, C, P)
        out = rows[:, 0] * w[0]                                                           # (F, P)
        for c in range(1, idx.shape[0]):
            out += rows[:, c] * w[c]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        idx, w = ctx.saved_tensors
        contrib = (w * grad.unsqueeze(1)).view(grad.shape[0], -1)                          # (F, C * P)
        out = torch.zeros(grad.shape[0], ctx.rows, dtype=grad.dtype, device=grad.device)
        out.index_add_(1, idx.view(-1).long(), contrib)
        return out, None, None


class HashEncoding(nn.Module):
    """(N, D) coordinates in [-1, 1] -> (N, levels * features) interpolated features, fp32."""

    def __init__(self, in_dims: int, levels: int = 16, features: int = 2, log2_table: int = 18,
                 base_resolution: int = 16, finest_resolution: float = 2048, growth: float = 0.0,
                 axis_lengths: tuple[int, ...] | None = None, encoding: str = "auto"):
        super().__init__()
        if not 1 <= in_dims <= MAX_DIMS:
            raise ValueError(f"a hash grid takes 1 to {MAX_DIMS} coordinate axes, not {in_dims}")
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, not {encoding!r}")
        self.in_dims, self.levels, self.features = in_dims, levels, features
        # auto: the Triton kernels on CUDA devices once they pass a check against the ops there, the ops
        # elsewhere; torch / triton: always that path.
        self.encoding, self._triton_checked = encoding, {}
        grids = [level_grid(r, axis_lengths, in_dims)
                 for r in level_resolutions(levels, base_resolution, finest_resolution, growth)]
        rows, dense = zip(*(table_rows(g, log2_table) for g in grids))
        self.grids, self.dense = grids, list(dense)
        self.max_cells = max(max(g) for g in grids)  # the most cells along any axis of any level
        # Resolutions grow level by level, so the dense levels come first. In the flat table the hashed
        # levels come first instead: hashed level j starts at row j * T, a multiple of T, so its offset can
        # be added to the first axis' term before the xor with the others (offset + (a ^ b) = (offset + a)
        # ^ b when a, b < T), and no pass over the corner tensor is spent on offsets.
        self.num_dense = nd = sum(dense)
        hashed_rows = (levels - nd) << log2_table
        offsets = list(itertools.accumulate(rows[:nd], initial=hashed_rows))[:nd] + \
            [j << log2_table for j in range(levels - nd)]
        num_rows = hashed_rows + sum(rows[:nd])
        # Feature-major, (F, rows): see _Interpolate.
        self.table = nn.Parameter(torch.empty(features, num_rows).uniform_(-INIT_SCALE, INIT_SCALE))
        # Per axis and level: cells, and the multiplier of a vertex coordinate (dense: the row-major stride
        # of the vertex grid; hashed: the axis' prime).
        mult = [[math.prod(c + 1 for c in g[:d]) if is_dense else PRIMES[d] for d in range(in_dims)]
                for g, is_dense in zip(grids, dense)]
        # Row indices in int32 when every vertex coordinate and row fits one (always, but for a 1-D signal
        # of 2^31 samples and more): half the memory traffic of int64 in the index arithmetic, measured
        # 30 % off its time (docs/fields.md, "Index arithmetic in int32"). A hashed level's product of a
        # coordinate and a prime wraps modulo 2^32 there, which keeps its low log2_table bits exact: the
        # same rows as int64.
        bits = 32 if self.max_cells + 1 < 1 << 31 and num_rows < 1 << 31 else 64
        self.index_dtype = torch.int32 if bits == 32 else torch.int64
        # Hashed levels keep the low log2_table bits of each axis' term (the xor of masked terms is the
        # masked xor); a dense level's terms are below its row count already.
        mask = [(1 << (bits - 1)) - 1 if is_dense else (1 << log2_table) - 1 for is_dense in dense]
        # Contiguous (D, L) underneath, so the C kernel reads them as they are (no copy per call).
        self.register_buffer("cells", torch.tensor(grids, dtype=torch.float64).t().contiguous().unsqueeze(-1),
                             persistent=False)                                                # (D, L, 1)
        self.register_buffer("mult", torch.tensor([[_wrap(m, bits) for m in row] for row in mult],
                                                  dtype=self.index_dtype).t().contiguous().unsqueeze(-1),
                             persistent=False)                                                # (D, L, 1)
        self.register_buffer("mask", torch.tensor(mask, dtype=self.index_dtype).view(levels, 1), persistent=False)
        self.register_buffer("offset", torch.tensor(offsets, dtype=self.index_dtype).view(levels, 1),
                             persistent=False)

    @property
    def out_features(self) -> int:
        return self.levels * self.features

    def corners(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Table rows and interpolation weights of every point's cell corners on every level: (2^D, L * N)
        int32 (int64 for axes of 2^31 cells) and fp32, corner-major then level-major. No gradient flows
        through either.

        Every op runs over long contiguous rows of (L, N) values, broadcasting only over leading
        dimensions (on CPUs, broadcasting over a short trailing dimension is several times slower)."""
        n, levels, dims, nd = coords.shape[0], self.levels, self.in_dims, self.num_dense
        # Positions in cells: float64 when the coordinates are (an axis longer than float32 resolves;
        # signal/store.py, LONG_AXIS), else fp32.
        dtype = torch.float64 if coords.dtype == torch.float64 else torch.float32
        cells = self.cells.to(dtype)
        pos = ((coords.to(dtype).t() + 1) * 0.5).unsqueeze(1) * cells                 # (D, L, N)
        cell = torch.minimum(pos.floor(), cells - 1).clamp_(min=0)                     # the point's cell
        frac = (pos - cell).float()
        low = cell.to(self.index_dtype) * self.mult                                    # the cell's vertex
        terms = torch.empty((dims, 2, levels, n), dtype=self.index_dtype, device=coords.device)
        torch.bitwise_and(low, self.mask, out=terms[:, 0])
        torch.bitwise_and(low.add_(self.mult), self.mask, out=terms[:, 1])             # the next vertex
        terms[0] += self.offset
        weights = torch.empty((dims, 2, levels, n), dtype=torch.float32, device=coords.device)
        torch.sub(1, frac, out=weights[:, 0])
        weights[:, 1] = frac
        # Combine the axes' terms over the 2^D corners, axis 0 varying fastest: dense levels add the
        # strided terms, hashed levels xor the prime products (the paper's eq. 4).
        idx, w = terms[0], weights[0]
        for d in range(1, dims):
            shape = (2,) + (1,) * d + (levels, n)
            term = terms[d].view(shape)
            out = torch.empty((2,) * (d + 1) + (levels, n), dtype=idx.dtype, device=idx.device)
            torch.add(idx[..., :nd, :], term[..., :nd, :], out=out[..., :nd, :])
            torch.bitwise_xor(idx[..., nd:, :], term[..., nd:, :], out=out[..., nd:, :])
            idx, w = out, w * weights[d].view(shape)
        return idx.view(1 << dims, levels * n), w.view(1 << dims, levels * n)

    def uses_native(self, coords: torch.Tensor) -> bool:
        """Whether this forward can take the fused C kernel (model/native.py): on the CPU, with no gradient
        wanted (scoring, evaluation, rendering), (n, in_dims) coordinates in fp32 (every level's cells then
        below 2^24, exact in fp32) or float64, int32 rows and at most 8 features. It computes the same bits as
        the ops below, so the choice never changes a result; anything else takes the ops, which also raise
        the errors (a wrong shape, tensors on two devices)."""
        return (coords.device.type == "cpu" and self.table.device.type == "cpu" and coords.dim() == 2
                and coords.shape[1] == self.in_dims and (coords.dtype == torch.float64 or (
                    coords.dtype == torch.float32 and self.max_cells < 1 << 24))
                and not (torch.is_grad_enabled() and self.table.requires_grad)
                and self.index_dtype == torch.int32 and self.table.dtype == torch.float32
                and self.features <= native.MAX_FEATURES and not torch.compiler.is_compiling())

    def uses_triton(self, coords: torch.Tensor) -> bool:
        """Whether this forward takes the Triton kernels (model/hash_triton.py): always with encoding =
        "triton" (where they cannot run, the error says why), and with "auto" on a CUDA device where they
        passed their check against the ops (the first call on each device makes it)."""
        if self.encoding == "torch" or (self.encoding == "auto" and coords.device.type != "cuda"):
            return False
        from . import hash_triton

        why = hash_triton.available(coords.device)
        if self.encoding == "triton":
            if why:
                raise RuntimeError(f"model.encoding = \"triton\": {why}")
            return True
        if why or self.table.dtype != torch.float32 or coords.dtype not in (torch.float32, torch.float64):
            return False
        key = (str(coords.device), coords.dtype)  # fp32 and float64 coordinates are kernels of their own
        if key not in self._triton_checked:
            self._triton_checked[key] = hash_triton.check(self, coords.device, coords.dtype)
            if self._triton_checked[key]:
                import warnings

                warnings.warn(f"model.encoding = \"auto\": the Triton kernels failed their check on {key[0]} "
                              f"with {key[1]} coordinates ({self._triton_checked[key]}); the torch ops encode "
                              f"instead")
        return not self._triton_checked[key]

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        if self.uses_triton(coords):
            from . import hash_triton

            return hash_triton.encode(self, coords)
        if self.uses_native(coords):
            out = native.hash_encode(coords, self.cells.squeeze(-1).double(), self.mult.squeeze(-1),
                                     self.mask.view(-1), self.offset.view(-1), self.num_dense, self.table.detach())
            if out is not None:
                return out
        with torch.no_grad():
            idx, w = self.corners(coords)
        return self.interpolate(self.table, idx, w, coords.shape[0])

    def interpolate(self, table: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
        """The torch ops' features from `corners`: (N, L * F), every level's features side by side (sizes
        spelled out: N may be 0)."""
        out = _Interpolate.apply(table, idx, w)                                        # (F, L * N)
        return out.view(self.features, self.levels, n).permute(2, 1, 0).reshape(n, self.out_features)


class HashField(nn.Module):
    """Hash encoding + a small MLP (ReLU, or sine with its own w0). `layers` counts the MLP's linear layers
    (2 hidden + output = 3, the paper's image MLP); the encoding runs in fp32 outside any autocast, the MLP
    at the training precision."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 64, layers: int = 3,
                 activation: str = "relu", w0: float = 30.0, levels: int = 16, features: int = 2,
                 log2_table: int = 18, base_resolution: int = 16, finest_resolution: float = 2048,
                 growth: float = 0.0, axis_lengths: tuple[int, ...] | None = None, encoding: str = "auto"):
        super().__init__()
        self.encoding = HashEncoding(in_features, levels, features, log2_table, base_resolution,
                                     finest_resolution, growth, axis_lengths, encoding)
        dims = [self.encoding.out_features] + [hidden] * (layers - 1) + [out_features]
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.activation, self.w0 = activation, w0
        if activation == "sine":
            # SIREN's hidden-layer init (sec. 3.2): pre-activations ~ N(0, 1) through depth.
            with torch.no_grad():
                for lin in self.linears[1:]:
                    bound = math.sqrt(6.0 / lin.in_features) / w0
                    lin.weight.uniform_(-bound, bound)

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        with torch.autocast(coords.device.type, enabled=False):
            h = self.encoding(coords)                                                  # (N, L * F) fp32
        for i, lin in enumerate(self.linears):
            h = lin(h)
            if i < len(self.linears) - 1:
                h = torch.sin(self.w0 * h) if self.activation == "sine" else F.relu(h)
        return h                                                                       # (N, C)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def optimizer_groups(self) -> list[dict]:
        """The tables with the paper's Adam settings (TABLE_ADAM, no weight decay), the MLP with the run's."""
        return [{"params": [self.encoding.table], **TABLE_ADAM},
                {"params": [p for lin in self.linears for p in lin.parameters()]}]


# A point table (shapes) has no sample spacing to follow: its finest hash level then has this many cells
# per axis (the fine half of the samples lies within ~0.002 of the surface on [-1, 1]).
TABLE_FINEST = 1024


class HashKind(FieldKind):
    """model.kind = "hash": the multiresolution hash grid and a small MLP (docs/fields.md)."""
    name = "hash"
    default_size = (64, 3)  # instant-ngp's image MLP: 2 hidden layers of 64 + output
    follows_signal = True   # its levels follow the signal's axes (a table's size needs the signal)

    @staticmethod
    def finest(model, axis_lengths) -> float:
        finest = model.finest_resolution or (max(axis_lengths) - 1 if axis_lengths else TABLE_FINEST)
        return max(finest, model.base_resolution)

    def spec(self, model, in_dims, out_channels, axis_lengths, hidden, layers) -> FieldSpec:
        if in_dims > MAX_DIMS:
            from ..errors import ConfigError

            raise ConfigError(f"model.kind = \"hash\" takes signals of 1 to {MAX_DIMS} coordinate axes; this one "
                              f"has {in_dims}; use model.kind = \"siren\"")
        grids = [level_grid(r, axis_lengths, in_dims) for r in level_resolutions(
            model.levels, model.base_resolution, self.finest(model, axis_lengths), model.growth)]
        rows = [table_rows(g, model.log2_table) for g in grids]
        num_rows = sum(r for r, _ in rows)
        mlp = mlp_params(model.levels * model.features, hidden, layers, out_channels)
        return FieldSpec("hash", in_dims, out_channels, hidden, layers, num_rows * model.features + mlp, {
            "table_rows": num_rows,                          # rows of all levels' tables
            "table_params": num_rows * model.features,
            "finest": float(max(max(g) for g in grids)),     # the finest level's cells per axis
            "levels_dense": sum(d for _, d in rows),         # levels stored one row per vertex
            "table_levels": model.levels,
            "encoding": model.encoding})

    def build(self, model, spec, axis_lengths) -> HashField:
        return HashField(spec.in_dims, spec.out_channels, spec.hidden, spec.layers, model.activation, model.w0,
                         model.levels, model.features, model.log2_table, model.base_resolution,
                         self.finest(model, axis_lengths), model.growth, axis_lengths, model.encoding)

    def describe(self, spec) -> str:
        return (f"hash grid ({spec.table_levels} levels, {spec.levels_dense} dense, finest {spec.finest:g} cells, "
                f"{spec.table_rows:,} rows) + MLP {spec.layers}x{spec.hidden}")

    def activation_bytes(self, spec, points, train) -> int:
        # Per point and level, 2^D corner rows (int32, or int64: 8 bytes charged) and weights (fp32), the
        # per-axis terms and the interpolated features; in training, also the weighted gradient of every
        # corner row (32 bytes charged, which also covers the backward's int64 copy of the rows).
        corners = 2 ** spec.in_dims
        per_level = corners * 12 + spec.in_dims * 40 + 8 * 4 + (corners * 4 * 8 if train else 0)
        return points * (mlp_activation_bytes(spec, train) + spec.table_levels * per_level)

    def log_note(self, spec, device) -> str:
        # Which path the encoding takes: the Triton kernels (model/hash_triton.py), or the ops and, on a
        # CPU, the native kernel for no-grad passes (model/native.py).
        mode = spec.extra.get("encoding", "auto")
        if mode == "triton" or (mode == "auto" and device.type == "cuda"):
            from . import hash_triton

            why = hash_triton.available(device)
            if not why:
                how = "interpreted (TRITON_INTERPRET=1)" if device.type == "cpu" else "compiled"
                return f"; encoding: Triton kernels, {how}" + (", once they pass their check" if mode == "auto" else "")
            return f"; encoding: torch ops ({why})"
        return f"; encoding: torch ops, no-grad passes: {native.status()}" if device.type == "cpu" else \
            "; encoding: torch ops"

    def check_device(self, model, device) -> None:
        if model.kind == self.name and model.encoding == "triton":
            from . import hash_triton

            why = hash_triton.available(device)
            if why:
                from ..errors import ConfigError

                raise ConfigError(f"model.encoding = \"triton\": {why}; or set model.encoding = \"auto\" "
                                  f"(the Triton kernels on CUDA devices, the torch ops elsewhere)")

    def too_large(self, model, spec):
        table = spec.table_params
        if table >= spec.num_params - table:  # the tables, or the MLP: the larger
            return (f"model.log2_table={model.log2_table}",
                    "lower model.log2_table (or model.levels / model.features)",
                    f"the hash field ({spec.table_levels} levels, {spec.table_rows:,} table rows of "
                    f"{model.features} features)")
        return (f"model.hidden={spec.hidden}", "lower model.hidden (or model.layers)",
                f"the hash field's {spec.layers}x{spec.hidden} MLP ({spec.num_params - table:,} parameters)")


HASH = HashKind()
