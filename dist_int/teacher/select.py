"""Exact global top-k over all ranks' candidates, with ties broken by global id (DESIGN.md sec. 1).

The order is (key descending, gid ascending), a total order, so the selected set is unique and the same
for any world size. Each rank takes its local top-k, the ranks all-gather those (key, gid) pairs, every
rank finds the same global cut, and each keeps its own candidates above the cut. The global top-k lies
inside the union of the local top-k sets, so the result is exact.
"""

from __future__ import annotations

import torch

from ..comm import Comm

_M1 = -0x40A7B892E31B1A47  # 0xBF58476D1CE4E5B9 as int64
_M2 = -0x6B2FB644ECCEEE15  # 0x94D049BB133111EB as int64
_GOLDEN = -0x61C8864680B583EB  # 0x9E3779B97F4A7C15 as int64
_GOLDEN2 = 0x3C6EF372FE94F82A  # 2 * 0x9E3779B97F4A7C15 mod 2^64


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 tensors (multiplication wraps mod 2^64)."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def hash_uniform(gids: torch.Tensor, *salt: int) -> torch.Tensor:
    """A counter-based uniform in [0, 1) for each gid: a pure function of (salt..., gid), float64."""
    h = torch.zeros((), dtype=torch.int64, device=gids.device)
    for s in salt:
        h = mix64(h + _GOLDEN + int(s))
    x = mix64(gids.to(torch.int64) + _GOLDEN2 + h)
    return _shr(x, 11).to(torch.float64) * (1.0 / (1 << 53))


def cut(keys: torch.Tensor, gids: torch.Tensor, k: int) -> tuple[float, int]:
    """(key threshold, gid cutoff) of the top-k under (key desc, gid asc): a point is in when
    key > threshold, or key == threshold and gid <= cutoff."""
    n = keys.numel()
    if k >= n:
        return -float("inf"), torch.iinfo(torch.int64).max
    thr = torch.topk(keys, k, sorted=False).values.min()
    need = k - int((keys > thr).sum())  # >= 1: the k-th largest key equals thr
    tied = gids[keys == thr]
    gcut = torch.kthvalue(tied.cpu(), need).values if tied.numel() > need else tied.max()
    return float(thr), int(gcut)


def in_cut(keys: torch.Tensor, gids: torch.Tensor, thr: float, gcut: int) -> torch.Tensor:
    return (keys > thr) | ((keys == thr) & (gids <= gcut))


def global_topk(keys: torch.Tensor, gids: torch.Tensor, k: int, comm: Comm) -> torch.Tensor:
    """Mask of this rank's candidates that belong to the global top-k of all ranks' candidates.

    keys: (n,) float (NaN counts as +inf, so a diverged point is taught first); gids: (n,) int64.
    """
    keys = torch.nan_to_num(keys.double(), nan=float("inf"))
    if comm.world_size == 1:
        return in_cut(keys, gids, *cut(keys, gids, k))
    # Local top-k: no point outside it can be in the global top-k.
    local = in_cut(keys, gids, *cut(keys, gids, k))
    # keys are exact in float64, gids are exact below 2^53: one gather carries both.
    pairs = torch.stack([keys[local], gids[local].double()], dim=1)          # (m, 2)
    gathered, lengths = comm.all_gather_varlen(pairs, fill=-float("inf"))    # (W, max_m, 2)
    valid = torch.arange(gathered.shape[1], device=gathered.device)[None, :] < lengths.to(gathered.device)[:, None]
    all_pairs = gathered[valid]
    thr, gcut = cut(all_pairs[:, 0], all_pairs[:, 1].long(), k)
    return in_cut(keys, gids, thr, gcut)
