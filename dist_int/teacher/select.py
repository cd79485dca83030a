"""Exact global top-k over all ranks' candidates (docs/design.md, "Exact global selection").

Every candidate gets one int64 *order key*: the top 32 bits are a monotone image of its score, the low 32
bits a keyed permutation of its global id (`tie_break`). Order keys are unique, so "the k largest order
keys" is one set, the same on any number of ranks, with ties of the score broken by a hash of (seed,
step, id). The selection is then a plain `topk` of int64s: no sort, no tie handling.

Across ranks the cut (the k-th largest order key of all ranks) is found by a threshold search: a radix
select over the keys' bits with one all-reduced 256-bin histogram per 8-bit digit, 8 rounds of about
2 KiB, so the bytes moved per selection depend neither on the signal's size nor on the number of ranks.
Each rank then keeps its own candidates at or above the cut: exactly the global top-k, since keys are
unique. The search runs on the device; the host reads one pair of numbers per selection (this rank's
share and the largest share, which the step needs to pad its pieces alike on every rank).
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


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on int64 tensors (multiplication wraps mod 2^64)."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


def _mix64_int(x: int) -> int:
    """mix64 on a Python int (mod 2^64): salts are mixed on the host, so a hash is one fused pass."""
    m = (1 << 64) - 1
    x &= m
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
    return x ^ (x >> 31)


def salt_key(*salt: int) -> int:
    """The 64-bit key of a salt tuple (unsigned Python int), as `hash64` chains it."""
    h = 0
    for s in salt:
        h = _mix64_int(h + 0x9E3779B97F4A7C15 + int(s))
    return h


def _signed(x: int) -> int:
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >> 63 else x


def hash64(gids: torch.Tensor, *salt: int) -> torch.Tensor:
    """A counter-based 64-bit hash of (salt..., gid) for each gid: no generator state, so any rank computes
    the same value for the same point (docs/design.md, "Global identities"). The salts are mixed on the
    host into one constant: a handful of element-wise kernels per call, whatever the number of salts."""
    return mix64(gids.to(torch.int64) + _signed(salt_key(*salt) + 2 * 0x9E3779B97F4A7C15))


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


def tie_break(gids: torch.Tensor, *salt: int) -> torch.Tensor:
    """A keyed random permutation of 32-bit global ids (int64 in [0, 2^32)): which of two points with equal
    scores wins. A bijection (xor and add a key, multiply by odd constants, xorshifts, all mod 2^32), so
    distinct ids keep distinct values; keyed by the salt (seed, step), so a tie goes a different way at
    every selection and never by position: with low-precision scores whole regions tie, and a fixed order
    (the smaller id) would favour the top rows of the grid at every step (docs/design.md, "Exact global
    selection")."""
    key = salt_key(*salt)
    k1, k2 = key & _LOW32, (key >> 32) & _LOW32
    x = gids.to(torch.int64) ^ k1
    x = (x * 0x85EBCA6B) & _LOW32
    x = x ^ (x >> 16)
    x = (x * 0xC2B2AE35 + k2) & _LOW32
    return x ^ (x >> 13)


def order_keys(order32: torch.Tensor, gids: torch.Tensor, *salt: int) -> torch.Tensor:
    """Unique int64 keys: score order in the high 32 bits, `tie_break(gids, *salt)` in the low 32."""
    return (order32 << 32) | tie_break(gids, *salt)


RADIX_BITS = 8
_BINS = 1 << RADIX_BITS
ROUNDS = 64 // RADIX_BITS
# Bytes each rank sends per selection: a 256-bin int64 histogram per round, and in the last round its
# own histogram with one more count (all-gathered, so every rank learns every rank's share of the set).
SEARCH_BYTES = (ROUNDS - 1) * _BINS * 8 + (_BINS + 1) * 8


def _at(t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """t[i] for a 1-element index tensor, as a device gather (indexing with a 0-d tensor reads it on the
    host first)."""
    return t.gather(0, i.view(1)).view(())


def threshold_search(keys: torch.Tensor, k: int, comm: Comm, shares: bool = False):
    """The k-th largest order key over all ranks (0-d int64 on the device; k >= 1, and beyond the number
    of keys it means all of them). With `shares`: (cut, counts) where counts (world_size,) int64 on the
    device holds how many keys at or above the cut each rank has.

    Digit by digit from the top: every rank counts its keys that match the digits found so far by their
    next 8-bit digit, one all-reduce sums the 256 counts, and every rank reads the same next digit of the
    cut from them. The last round all-gathers the ranks' counts instead, with each rank's count of keys
    already known to be above the cut, so every rank also learns every rank's share without another
    collective. Nothing goes to the host; the same cut comes out on any number of ranks.
    """
    dev = keys.device
    biased = keys ^ _INT64_MIN  # sign bit flipped: unsigned order of `biased` = signed order of `keys`
    prefix = torch.zeros((), dtype=torch.int64, device=dev)   # the cut's digits found so far
    need = torch.full((), k, dtype=torch.int64, device=dev)   # rank of the cut among the matches
    above = torch.zeros((), dtype=torch.int64, device=dev)    # this rank's keys known to be above the cut
    bins = torch.arange(_BINS, device=dev)
    for r in range(ROUNDS):
        shift = 64 - RADIX_BITS * (r + 1)
        digit = _shr(biased, shift) & (_BINS - 1)
        if r:  # keys whose higher digits differ from the cut's land in an extra bin that is dropped
            digit = torch.where(_shr(biased, shift + RADIX_BITS) == prefix, digit, _BINS)
        local = histogram(digit, _BINS + 1)
        last = r == ROUNDS - 1
        if last and shares:
            gathered = comm.all_gather(torch.cat([local[:_BINS], above.view(1)]))  # (world, 257)
            counts = gathered[:, :_BINS].sum(0)
        else:
            counts = comm.all_reduce_sum(local[:_BINS])
        if not r:  # k beyond all ranks' keys: the cut is the smallest key, and every key is in
            need = torch.minimum(need, counts.sum())
        at_or_above = counts.flip(0).cumsum(0)            # [i]: keys whose digit >= 255 - i
        i = (at_or_above >= need).int().argmax()           # the largest digit that reaches `need`
        d = (_BINS - 1) - i
        need = need - (_at(at_or_above, i) - _at(counts, d))  # keys with a larger digit are in
        prefix = (prefix << RADIX_BITS) | d                 # all 64 bits after the last round
        if shares and not last:
            above = above + (local[:_BINS] * (bins > d)).sum()
    cut = prefix ^ _INT64_MIN
    if not shares:
        return cut
    return cut, gathered[:, _BINS] + (gathered[:, :_BINS] * (bins >= d)).sum(1)


def histogram(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts of the int64 values in [0, bins), int64 (bench/histogram.py measured the ways to count)."""
    return torch.zeros(bins, dtype=torch.int64, device=values.device).scatter_add_(
        0, values, torch.ones_like(values))


def top_rows(keys: torch.Tensor, k: int, comm: Comm, num_keys: int | None = None) -> tuple[torch.Tensor, int]:
    """(indices, most): the indices (ascending) of this rank's candidates whose order keys are among the k
    largest of all ranks' candidates, and the most indices any rank got. keys: (n,) int64 from
    `order_keys`; k: the global budget; num_keys: the number of candidates on all ranks (known without
    communication from the batch plan). One host read on several ranks (this rank's count and the most,
    read together, which sizes the indices without another wait); none on one rank."""
    n = keys.numel()
    if comm.world_size == 1:
        if k >= n:
            return torch.arange(n, device=keys.device), n
        return torch.sort(torch.topk(keys, k, sorted=False).indices).values, k
    if num_keys is not None and k >= num_keys:
        return torch.arange(n, device=keys.device), int(comm.agree_max([n])[0])
    cut, shares = threshold_search(keys, k, comm, shares=True)
    mine, most = torch.stack([shares[comm.rank], shares.max()]).tolist()  # the one host read of a selection
    return torch.nonzero_static(keys >= cut, size=mine).squeeze(1), most


def top_mask(keys: torch.Tensor, k: int, comm: Comm) -> torch.Tensor:
    """A boolean mask of this rank's candidates among the k largest order keys of all ranks; no host read."""
    n = keys.numel()
    if comm.world_size == 1:
        mask = torch.zeros(n, dtype=torch.bool, device=keys.device)
        return mask.index_fill_(0, torch.topk(keys, min(k, n), sorted=False).indices, True)
    return keys >= threshold_search(keys, k, comm)


def global_topk(keys: torch.Tensor, k: int, comm: Comm, num_keys: int | None = None) -> torch.Tensor:
    """The indices of `top_rows` alone."""
    return top_rows(keys, k, comm, num_keys)[0]
