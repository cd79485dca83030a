"""How to count the threshold search's digits (teacher/select.py, `histogram`): scatter_add_ of ones,
bincount, histc and a sort-based count, on keys spread over the 257 bins (round 0) and on keys that
nearly all land in one bin (every later round: the keys that do not match the cut's digits so far fall
in the dropped bin 256). Medians of repeated timings, one process, side by side.

    python bench/histogram.py [--points 1048576] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

BINS = 257


def scatter(d):
    return torch.zeros(BINS, dtype=torch.int64).scatter_add_(0, d, torch.ones_like(d))


def bincount(d):
    return torch.bincount(d, minlength=BINS)


def histc(d):
    return torch.histc(d.float(), bins=BINS, min=0, max=BINS).long()


def sort_count(d):
    s = torch.sort(d).values
    return torch.searchsorted(s, torch.arange(BINS + 1), right=False).diff()


WAYS = {"scatter_add_": scatter, "bincount": bincount, "histc": histc, "sort + searchsorted": sort_count}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1 << 20)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    cases = {"spread (round 0)": torch.randint(0, 256, (args.points,), generator=g),
             "one bin (rounds 1-7)": torch.where(torch.rand(args.points, generator=g) < 0.999, 256,
                                                 torch.randint(0, 256, (args.points,), generator=g))}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.points:,} keys, median of "
          f"{args.repeats}")
    print("| keys | " + " | ".join(WAYS) + " |")
    print("|---|" + "---|" * len(WAYS))
    for name, d in cases.items():
        ref = scatter(d)
        times = {w: [] for w in WAYS}
        for _ in range(args.repeats):
            for w, fn in WAYS.items():  # interleaved, so drift hits every way alike
                t = time.perf_counter()
                out = fn(d)
                times[w].append(time.perf_counter() - t)
                assert torch.equal(out, ref), w
        print(f"| {name} | " + " | ".join(f"{statistics.median(v) * 1e3:.2f} ms" for v in times.values()) + " |")


if __name__ == "__main__":
    main()
