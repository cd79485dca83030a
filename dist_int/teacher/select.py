"""Exact global top-k over all ranks' candidates (docs/design.md, "Exact global selection").

Every candidate gets one int64 *order key*: the top 32 bits are a monotone image of its score, the low 32
bits the complement of its global id. Order keys are unique, so "the k largest order keys" is one set, the
same on any number of ranks, with ties of the score broken by the smaller global id. The selection is
then a plain `topk` of int64s: no sort, no tie handling, and no value has to reach the host, so a
selection makes no host-device synchronization until the caller asks which rows were chosen.

Across ranks each rank sends its local top-k order keys (padded to k, so every rank sends the same size),
the k-th largest of the gathered keys is the global cut, and each rank keeps its own candidates at or
above it. The global top-k lies inside the union of the local top-k sets, so the cut is exact.
"""

from __future__ import annotations

import torch

from ..comm import Comm
from ..errors import SignalError

MAX_POINTS = 1 << 32  # global ids must fit the 32 low bits of an order key
_LOW32 = (1 << 32) - 1
_INT64_MIN = -(1 << 63)

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


def hash64(gids: torch.Tensor, *salt: int) -> torch.Tensor:
    """A counter-based 64-bit hash of (salt..., gid) for each gid: no generator state, so any rank computes
    the same value for the same point (docs/design.md, "Global identities")."""
    h = torch.zeros((), dtype=torch.int64, device=gids.device)
    for s in salt:
        h = mix64(h + _GOLDEN + int(s))
    return mix64(gids.to(torch.int64) + _GOLDEN2 + h)


def hash_uniform(gids: torch.Tensor, *salt: int) -> torch.Tensor:
    """A uniform in [0, 1) for each gid from `hash64`, float64."""
    return _shr(hash64(gids, *salt), 11).to(torch.float64) * (1.0 / (1 << 53))


def check_num_points(num_points: int) -> None:
    if num_points > MAX_POINTS:
        raise SignalError(f"the signal has {num_points:,} points; selection supports at most 2^32 "
                          f"({MAX_POINTS:,}) points per signal. Split the signal into parts")


def score_order(scores: torch.Tensor) -> torch.Tensor:
    """int64 in [-2^31, 2^31) that orders like the float32 scores (NaN counts as +inf: a point whose error
    is not finite is taught first)."""
    # + 0.0 turns -0.0 into +0.0, so the two zeros tie (and the global id decides), as they compare equal.
    x = (torch.nan_to_num(scores.float(), nan=float("inf")) + 0.0).view(torch.int32).to(torch.int64)
    # Negative floats order backwards in their bit pattern: flip their magnitude bits.
    return torch.where(x < 0, x ^ 0x7FFFFFFF, x)


def hash_order(gids: torch.Tensor, *salt: int) -> torch.Tensor:
    """A uniformly random score order for each gid (top 32 bits of `hash64`, as a signed int32)."""
    return hash64(gids, *salt) >> 32


def order_keys(order32: torch.Tensor, gids: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys: score order in the high 32 bits, larger for a smaller gid in the low 32."""
    return (order32 << 32) | (_LOW32 - gids.to(torch.int64))


def global_topk(keys: torch.Tensor, k: int, comm: Comm) -> torch.Tensor:
    """Indices (ascending) of this rank's candidates whose order keys are among the k largest of all
    ranks' candidates. keys: (n,) int64 from `order_keys`; k is the global budget."""
    n = keys.numel()
    if comm.world_size == 1:
        if k >= n:
            return torch.arange(n, device=keys.device)
        return torch.sort(torch.topk(keys, k, sorted=False).indices).values
    local = torch.topk(keys, min(k, n), sorted=False)
    # Pad to k so that every rank sends the same size (gloo needs it), with a key below every real one.
    sent = torch.full((k,), _INT64_MIN, dtype=torch.int64, device=keys.device)
    sent[: local.values.numel()] = local.values
    gathered = comm.all_gather(sent).flatten()                               # (world_size * k,)
    cut = torch.topk(gathered, k, sorted=False).values.min()                 # the k-th largest key
    # Padding can only be the cut when fewer than k candidates exist in all; those are all in.
    keep = local.values >= cut
    return torch.sort(local.indices[keep]).values
