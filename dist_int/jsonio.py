"""Strict JSON for every record a run writes (metrics.jsonl, summary.json, checkpoints' meta.json).

Python's json module writes a non-finite float as a bare `NaN` or `Infinity`, which no strict JSON reader
(jq, JavaScript, pandas' default engine) accepts, or refuses to write it at all with allow_nan=False. A
run meets such numbers legitimately: an exact fit has an infinite PSNR, a diverged field a NaN loss. They
are written as `null`, and the record says which keys were not finite and what they were under
`not_finite` (docs/training.md, "Exact fits and NaN fields"), so nothing is lost and every file stays
readable.
"""

from __future__ import annotations

import json
import math

NOT_FINITE = "not_finite"


def _word(x: float) -> str:
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def finite(value, path: str = "") -> tuple[object, dict[str, str]]:
    """`value` with every non-finite float replaced by None, and {dotted path: "inf" | "-inf" | "nan"} of
    the replaced ones."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, {path or "value": _word(value)}
    if isinstance(value, dict):
        out, bad = {}, {}
        for k, v in value.items():
            out[k], more = finite(v, f"{path}.{k}" if path else str(k))
            bad.update(more)
        return out, bad
    if isinstance(value, (list, tuple)):
        out, bad = [], {}
        for i, v in enumerate(value):
            item, more = finite(v, f"{path}[{i}]")
            out.append(item)
            bad.update(more)
        return out, bad
    return value, {}


def dumps(record: dict, **kwargs) -> str:
    """`record` as strict JSON: non-finite floats become null, named under `not_finite`. Names a record
    already carried (one read back from a file) are kept only for keys that are still null."""
    clean, bad = finite(record)
    earlier = clean.pop(NOT_FINITE, None) or {}
    bad = {**{k: v for k, v in earlier.items() if k in clean and clean[k] is None}, **bad}
    if bad:
        clean[NOT_FINITE] = bad
    return json.dumps(clean, allow_nan=False, **kwargs)


def encode_float(x: float) -> float | str:
    """A float for a state dict that must round-trip through strict JSON: "inf", "-inf" or "nan" when not
    finite (float() reads them back)."""
    return x if math.isfinite(x) else _word(x)
