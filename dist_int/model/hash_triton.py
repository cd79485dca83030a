"""The hash encoding as two fused Triton kernels: one forward, one backward (docs/fields.md, "Triton kernels").

The torch ops in model/hash.py are the reference; these kernels compute the same rows, weights and sums,
point by point and level by level, without the (2^D, L * N) corner tensors those ops materialize. Each
program takes a block of points on one level: per axis it computes the cell, the fraction and the two
vertex terms (dense levels: row-major strides; hashed levels: the primes, wrapping as int32 or int64 as
the module's index dtype does), then walks the 2^D corners in the reference's order (axis 0 fastest),
gathers the F feature rows of each corner from the feature-major (F, rows) table and sums them weighted.
The backward recomputes the corners (nothing but the coordinates is saved) and adds the weighted output
gradient into the table gradient with fp32 atomics (half-precision atomics are slow; instant-ngp and
tiny-cuda-nn accumulate in fp32 as well).

On a GPU Triton compiles the kernels. On a CPU, with TRITON_INTERPRET=1 in the environment before this
module is imported, Triton's interpreter runs them on CPU tensors: that is how they are tested where there
is no GPU (tests/test_triton.py). Without either, `available()` says why and the field keeps the torch ops.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError as e:  # an optional extra: `pip install triton` (CUDA builds of torch bring it)
    triton, tl, _MISSING = None, None, str(e)
else:
    _MISSING = ""

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# Points per program: on a GPU a block a few warps wide; under the interpreter, where each program is a
# round of numpy calls, large blocks (few programs) are what keeps it usable.
BLOCK_GPU, BLOCK_INTERPRET = 128, 4096
WIDE_FROM = 1 << 31  # F x rows from which table offsets are computed in int64


def available(device: torch.device) -> str:
    """"" when the kernels can run on `device`, else why not (one line, with what to do)."""
    if triton is None:
        return f"triton is not installed ({_MISSING}); pip install triton"
    if device.type == "cuda" or (device.type == "cpu" and INTERPRET):
        return ""
    if device.type == "cpu":
        return ("the Triton kernels need a CUDA device; on a CPU they run only under Triton's interpreter "
                "(TRITON_INTERPRET=1 in the environment: slow, for tests)")
    return f"the Triton kernels run on CUDA devices, not {device.type}"


if triton is not None:

    @triton.jit
    def _axis(coords, cells, mult, offs, inside, d: tl.constexpr, level, L: tl.constexpr, lmask,
              D: tl.constexpr, F64: tl.constexpr, IDX64: tl.constexpr):
        """Axis d of a block on `level`: the low and high vertex terms (masked) and the fraction (fp32),
        computed as HashEncoding.corners does."""
        x = tl.load(coords + offs * D + d, mask=inside, other=0.0)
        c = tl.load(cells + d * L + level)  # float64
        if not F64:
            c = c.to(tl.float32)
        pos = (x + 1) * 0.5 * c
        cell = tl.maximum(tl.minimum(tl.floor(pos), c - 1), 0.0)
        frac = (pos - cell).to(tl.float32)
        m = tl.load(mult + d * L + level)
        if IDX64:
            low = cell.to(tl.int64) * m
        else:
            low = cell.to(tl.int32) * m
        return low & lmask, (low + m) & lmask, frac

    @triton.jit
    def _pick(c: tl.constexpr, d: tl.constexpr, lo, hi, frac):
        """Corner c's term and weight on axis d: the high vertex where bit d of c is set."""
        if (c >> d) & 1:
            return hi, frac
        return lo, 1.0 - frac

    @triton.jit
    def _corner(c: tl.constexpr, D: tl.constexpr, dense, lo0, hi0, f0, lo1, hi1, f1, lo2, hi2, f2, lo3, hi3, f3):
        """Row and weight of corner c: dense levels add the axes' terms, hashed levels xor them (the paper's
        eq. 4); the weight is the product of the axes' weights, in axis order (as the reference)."""
        idx, w = _pick(c, 0, lo0, hi0, f0)
        if D > 1:
            t, v = _pick(c, 1, lo1, hi1, f1)
            idx = tl.where(dense, idx + t, idx ^ t)
            w = w * v
        if D > 2:
            t, v = _pick(c, 2, lo2, hi2, f2)
            idx = tl.where(dense, idx + t, idx ^ t)
            w = w * v
        if D > 3:
            t, v = _pick(c, 3, lo3, hi3, f3)
            idx = tl.where(dense, idx + t, idx ^ t)
            w = w * v
        return idx, w

    @triton.jit
    def _terms(coords, cells, mult, lmasks, offsets, offs, inside, level, L: tl.constexpr, D: tl.constexpr,
               F64: tl.constexpr, IDX64: tl.constexpr):
        """Every axis' terms on `level` (axes beyond D repeat axis 0's; they are never read)."""
        lmask = tl.load(lmasks + level)
        lo0, hi0, f0 = _axis(coords, cells, mult, offs, inside, 0, level, L, lmask, D, F64, IDX64)
        off = tl.load(offsets + level)  # the level's first row, on axis 0's term (see HashEncoding)
        lo0 += off
        hi0 += off
        lo1, hi1, f1 = lo0, hi0, f0
        lo2, hi2, f2 = lo0, hi0, f0
        lo3, hi3, f3 = lo0, hi0, f0
        if D > 1:
            lo1, hi1, f1 = _axis(coords, cells, mult, offs, inside, 1, level, L, lmask, D, F64, IDX64)
        if D > 2:
            lo2, hi2, f2 = _axis(coords, cells, mult, offs, inside, 2, level, L, lmask, D, F64, IDX64)
        if D > 3:
            lo3, hi3, f3 = _axis(coords, cells, mult, offs, inside, 3, level, L, lmask, D, F64, IDX64)
        return lo0, hi0, f0, lo1, hi1, f1, lo2, hi2, f2, lo3, hi3, f3

    @triton.jit
    def _block(n, rows, F: tl.constexpr, FP: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
        """This program's points (int64 positions, so that position x L x F never wraps), which of them and
        of the FP feature lanes are real, and where each feature's rows start in the (F, rows) table."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < n
        feats = tl.arange(0, FP)
        both = inside[:, None] & (feats < F)[None, :]
        if WIDE:
            feat_rows = feats.to(tl.int64) * rows
        else:
            feat_rows = feats * rows
        return offs, inside, feats, both, feat_rows

    @triton.jit
    def _forward(coords, table, out, cells, mult, lmasks, offsets, n, rows, num_dense,
                 D: tl.constexpr, L: tl.constexpr, F: tl.constexpr, FP: tl.constexpr, F64: tl.constexpr,
                 IDX64: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
        """out[p, level * F + f] = sum over corners c of w_c * table[f, row_c], for a block of points."""
        level = tl.program_id(1)
        offs, inside, feats, both, feat_rows = _block(n, rows, F, FP, WIDE, BLOCK)
        lo0, hi0, f0, lo1, hi1, f1, lo2, hi2, f2, lo3, hi3, f3 = _terms(
            coords, cells, mult, lmasks, offsets, offs, inside, level, L, D, F64, IDX64)
        dense = level < num_dense
        acc = tl.zeros((BLOCK, FP), dtype=tl.float32)
        for c in tl.static_range(1 << D):
            idx, w = _corner(c, D, dense, lo0, hi0, f0, lo1, hi1, f1, lo2, hi2, f2, lo3, hi3, f3)
            if WIDE:  # F * rows beyond int32: the feature's offset and the row in int64
                idx = idx.to(tl.int64)
            vals = tl.load(table + feat_rows[None, :] + idx[:, None], mask=both, other=0.0)
            acc += vals * w[:, None]
        tl.store(out + offs[:, None] * (L * F) + level * F + feats[None, :], acc, mask=both)

    @triton.jit
    def _backward(coords, grad, table_grad, cells, mult, lmasks, offsets, n, rows, num_dense,
                  D: tl.constexpr, L: tl.constexpr, F: tl.constexpr, FP: tl.constexpr, F64: tl.constexpr,
                  IDX64: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
        """table_grad[f, row_c] += w_c * grad[p, level * F + f], with fp32 atomics."""
        level = tl.program_id(1)
        offs, inside, feats, both, feat_rows = _block(n, rows, F, FP, WIDE, BLOCK)
        g = tl.load(grad + offs[:, None] * (L * F) + level * F + feats[None, :], mask=both, other=0.0)
        lo0, hi0, f0, lo1, hi1, f1, lo2, hi2, f2, lo3, hi3, f3 = _terms(
            coords, cells, mult, lmasks, offsets, offs, inside, level, L, D, F64, IDX64)
        dense = level < num_dense
        for c in tl.static_range(1 << D):
            idx, w = _corner(c, D, dense, lo0, hi0, f0, lo1, hi1, f1, lo2, hi2, f2, lo3, hi3, f3)
            if WIDE:
                idx = idx.to(tl.int64)
            tl.atomic_add(table_grad + feat_rows[None, :] + idx[:, None], g * w[:, None], mask=both)


def _launch(kernel, enc, coords: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> None:
    n, levels, features = coords.shape[0], enc.levels, enc.features
    if n == 0:
        return
    rows = enc.table.shape[1]
    block = BLOCK_INTERPRET if coords.device.type == "cpu" else BLOCK_GPU
    kernel[(triton.cdiv(n, block), levels)](
        coords, first, second, enc.cells, enc.mult, enc.mask, enc.offset, n, rows, enc.num_dense,
        D=enc.in_dims, L=levels, F=features, FP=triton.next_power_of_2(features),
        F64=coords.dtype == torch.float64, IDX64=enc.index_dtype == torch.int64,
        WIDE=features * rows >= WIDE_FROM, BLOCK=block)


class _Encode(torch.autograd.Function):
    """(N, D) coordinates -> (N, L * F) features; the table's gradient from the kernels' backward."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, coords: torch.Tensor, enc) -> torch.Tensor:
        out = torch.empty(coords.shape[0], enc.levels * enc.features, dtype=torch.float32, device=coords.device)
        _launch(_forward, enc, coords, table.detach(), out)
        ctx.save_for_backward(coords)
        ctx.enc = enc
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (coords,) = ctx.saved_tensors
        enc = ctx.enc
        table_grad = torch.zeros_like(enc.table, dtype=torch.float32)
        _launch(_backward, enc, coords, grad.float().contiguous(), table_grad)
        return table_grad, None, None


@torch.compiler.disable  # under train.compile the kernels run as they are, the MLP around them compiled
def encode(enc, coords: torch.Tensor) -> torch.Tensor:
    """The features of `coords` on HashEncoding `enc` through the kernels (fp32 table; fp32 or float64
    coordinates, float64 where an axis is longer than fp32 resolves)."""
    if coords.dtype not in (torch.float32, torch.float64):
        coords = coords.float()
    return _Encode.apply(enc.table, coords.contiguous(), enc)


CHECK_POINTS = 4096  # points of the check `auto` makes on a device before it trusts the kernels there


@torch.compiler.disable  # a check of its own, never part of a compiled graph
def check(enc, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """"" when the kernels' features and table gradient match the torch ops' on `device` for random points
    with `dtype` coordinates (each dtype is a kernel of its own), within fp32 rounding (sums in another
    order, fused multiply-adds); else what failed: a compile or launch error, or the largest difference.
    The table and torch's random state are left as they were. A kernel that faults on the device (an
    illegal address) leaves CUDA unusable for the process; the check cannot recover from that."""
    try:
        generator = torch.Generator(device=device).manual_seed(0)
        coords = (torch.rand(CHECK_POINTS, enc.in_dims, device=device, generator=generator,
                             dtype=torch.float64) * 2 - 1).to(dtype)
        grad = torch.randn(CHECK_POINTS, enc.out_features, device=device, generator=generator)
        with torch.enable_grad():
            table = enc.table.detach().requires_grad_(True)
            ours = _Encode.apply(table, coords.contiguous(), enc)
            (ours_grad,) = torch.autograd.grad(ours, table, grad)
            idx, w = enc.corners(coords)
            ref = enc.interpolate(table, idx, w, CHECK_POINTS)
            (ref_grad,) = torch.autograd.grad(ref, table, grad)
    except Exception as e:  # a kernel that does not compile or launch on this device
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    for what, a, b in (("features", ours, ref), ("table gradient", ours_grad, ref_grad)):
        scale = float(b.abs().max()) or 1.0
        err = float((a - b).abs().max())
        if not err <= 1e-5 * scale:  # also NaN
            return f"{what} differ by {err:.3g} (largest value {scale:.3g})"
    return ""
