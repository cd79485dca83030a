"""How long one Adam update takes on one CPU core, per implementation, for the fields the trainer runs.

The engine runs torch's fused Adam (engine/deepspeed_engine.py; docs/training.md, "Fused Adam"). This
times one `step()` of torch.optim.Adam in its three forms on the same parameters and gradients (the
hash fields' tables with the paper's Adam settings, model/hash.py), alternating the forms, median of the
repeats; it also counts the page faults of a step (fresh memory the step asked the system for) and
checks that the fused form's parameters after the steps equal the default's.

    python bench/optimizer.py
    python bench/optimizer.py --repeats 15
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import time

import torch

from common import ROOT, machine, markdown_table

sys.path.insert(0, str(ROOT))

from dist_int.engine.deepspeed_engine import optimizer_groups  # noqa: E402
from dist_int.model import HashField, Siren  # noqa: E402

FORMS = {"default (single tensor)": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def fields() -> dict:
    """The long-signal benchmarks' image field (2^19-row tables, bench/scale.py), configs/gigapixel.toml's
    (2^22 rows) and a SIREN."""
    torch.manual_seed(0)
    return {
        "hash 2^19 rows x 16 levels (bench/scale.py)": HashField(2, 3, 64, 3, levels=16, log2_table=19,
                                                                 finest_resolution=32767, axis_lengths=(32768,) * 2),
        "hash 2^22 rows x 16 levels (gigapixel.toml)": HashField(2, 3, 64, 3, levels=16, log2_table=22,
                                                                 finest_resolution=32767, axis_lengths=(32768,) * 2),
        "SIREN 3x256": Siren(2, 3, 256, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    torch.set_num_threads(1)  # one core: a rank's share of the CPU in the 2-rank benchmarks
    rows = []
    for name, model in fields().items():
        copies = {form: copy.deepcopy(model) for form in FORMS}
        opts = {form: torch.optim.Adam(optimizer_groups(copies[form]), lr=1e-2, **kw) for form, kw in FORMS.items()}
        times = {form: [] for form in FORMS}
        faults = {form: [] for form in FORMS}
        g = torch.Generator().manual_seed(1)
        for _ in range(args.repeats):
            grads = [torch.randn(p.shape, generator=g) * 1e-3 for p in model.parameters()]
            for form in FORMS:
                for p, gr in zip(copies[form].parameters(), grads):
                    p.grad = gr.clone()
                f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
                opts[form].step()
                times[form].append(time.perf_counter() - t0)
                faults[form].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        med = {form: sorted(v)[len(v) // 2] * 1e3 for form, v in times.items()}
        flt = {form: sorted(v)[len(v) // 2] for form, v in faults.items()}
        diff = max((a - b).abs().max().item() for a, b in zip(copies["fused"].parameters(),
                                                              copies["default (single tensor)"].parameters()))
        n = sum(p.numel() for p in model.parameters())
        rows.append([name, f"{n / 1e6:.1f}", *(f"{med[f]:.1f} ({flt[f]:,})" for f in FORMS),
                     f"{med['default (single tensor)'] / med['fused']:.1f}", f"{diff:.1e}"])
    print(f"machine: {machine()}\ncommand: python bench/optimizer.py --repeats {args.repeats}\n"
          f"ms for one Adam step on one thread, median of {args.repeats} (page faults of that step in "
          f"brackets); the last column: the largest difference of a parameter after {args.repeats} steps, "
          f"fused against the default\n")
    print(markdown_table(["parameters", "M", *FORMS, "default / fused", "max |fused - default|"], rows))


if __name__ == "__main__":
    main()
