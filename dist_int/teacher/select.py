"""Exact global top-k over all ranks' candidates (docs/design.md, "Exact global selection").

Every candidate gets one int64 *order key*: the top 32 bits are a monotone image of its score, the low 32
bits the complement of its global id. Order keys are unique, so "the k largest order keys" is one set, the
same on any number of ranks, with ties of the score broken by the smaller global id. The selection is
then a plain `topk` of int64s: no sort, no tie handling, and no value has to reach the host, so a
selection makes no host-device synchronization until the caller asks which rows were chosen.

Across ranks the cut (the k-th largest order key of all ranks) is found by a threshold search: a radix
select over the keys' bits with one all-reduced 256-bin histogram per 8-bit digit, 8 rounds of 2 KiB, so
the bytes moved per selection depend neither on the signal's size nor on the number of ranks. Each rank
then keeps its own candidates at or above the cut: exactly the global top-k, since keys are unique.
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
    inf = float("inf")
    x = (torch.nan_to_num(scores.float(), nan=inf, posinf=inf, neginf=-inf) + 0.0).view(torch.int32)
    x = x.to(torch.int64)
    # Negative floats order backwards in their bit pattern: flip their magnitude bits.
    return torch.where(x < 0, x ^ 0x7FFFFFFF, x)


def hash_order(gids: torch.Tensor, *salt: int) -> torch.Tensor:
    """A uniformly random score order for each gid (top 32 bits of `hash64`, as a signed int32)."""
    return hash64(gids, *salt) >> 32


def order_keys(order32: torch.Tensor, gids: torch.Tensor) -> torch.Tensor:
    """Unique int64 keys: score order in the high 32 bits, larger for a smaller gid in the low 32."""
    return (order32 << 32) | (_LOW32 - gids.to(torch.int64))


RADIX_BITS = 8
_BINS = 1 << RADIX_BITS
ROUNDS = 64 // RADIX_BITS
SEARCH_BYTES = ROUNDS * _BINS * 8  # int64 counts all-reduced per selection (each rank sends this much)


def threshold_search(keys: torch.Tensor, k: int, comm: Comm) -> torch.Tensor:
    """The k-th largest order key over all ranks (0-d int64 on the device; k >= 1, and beyond the number
    of keys it means all of them).

    Digit by digit from the top: every rank counts its keys that match the digits found so far by their
    next 8-bit digit, one all-reduce sums the 256 counts, and every rank reads the same next digit of the
    cut from them. Nothing goes to the host; the same cut comes out on any number of ranks.
    """
    biased = keys ^ _INT64_MIN  # sign bit flipped: unsigned order of `biased` = signed order of `keys`
    prefix = torch.zeros((), dtype=torch.int64, device=keys.device)   # the cut's digits found so far
    need = torch.full((), k, dtype=torch.int64, device=keys.device)   # rank of the cut among the matches
    ones = torch.ones_like(keys)
    for r in range(ROUNDS):
        shift = 64 - RADIX_BITS * (r + 1)
        digit = _shr(biased, shift) & (_BINS - 1)
        if r:  # keys whose higher digits differ from the cut's land in an extra bin that is dropped
            digit = torch.where(_shr(biased, shift + RADIX_BITS) == prefix, digit, _BINS)
        counts = torch.zeros(_BINS + 1, dtype=torch.int64, device=keys.device)
        counts = comm.all_reduce_sum(counts.scatter_add_(0, digit, ones)[:_BINS])
        if not r:  # k beyond all ranks' keys: the cut is the smallest key, and every key is in
            need = torch.minimum(need, counts.sum())
        at_or_above = counts.flip(0).cumsum(0)            # [i]: keys whose digit >= 255 - i
        i = (at_or_above >= need).int().argmax()           # the largest digit that reaches `need`
        d = (_BINS - 1) - i
        need = need - (at_or_above[i] - counts[d])         # keys with a larger digit are in
        prefix = (prefix << RADIX_BITS) | d                 # all 64 bits after the last round
    return prefix ^ _INT64_MIN


def global_topk(keys: torch.Tensor, k: int, comm: Comm, num_keys: int | None = None) -> torch.Tensor:
    """Indices (ascending) of this rank's candidates whose order keys are among the k largest of all
    ranks' candidates. keys: (n,) int64 from `order_keys`; k: the global budget; num_keys: the number of
    candidates on all ranks (known without communication from the batch plan)."""
    n = keys.numel()
    if comm.world_size == 1:
        if k >= n:
            return torch.arange(n, device=keys.device)
        return torch.sort(torch.topk(keys, k, sorted=False).indices).values
    if num_keys is not None and k >= num_keys:
        return torch.arange(n, device=keys.device)
    cut = threshold_search(keys, k, comm)
    return torch.nonzero(keys >= cut).squeeze(1)  # ascending; the one host sync of a selection
