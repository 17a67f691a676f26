"""The paper's summary figures (../shared/PAPER.md) with bootstrap confidence intervals.

collapse(m)        = D(base) - D(m)
collapse reduction = collapse(SFT) / collapse(AAT)
gap closed         = (D(AAT) - D(SFT)) / (D(base) - D(SFT))
"""

from __future__ import annotations

import math

import numpy as np


def collapse_reduction(base: float, sft: float, aat: float) -> float:
    c_sft, c_aat = base - sft, base - aat
    if c_aat == 0:
        return math.inf if c_sft > 0 else math.nan
    return c_sft / c_aat


def gap_closed(base: float, sft: float, aat: float) -> float:
    return (aat - sft) / (base - sft) if base != sft else math.nan


def summarize(per_prompt: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict:
    """Figures for one metric from per-prompt values of base, sft and aat (paired by prompt).

    Confidence intervals (95%, percentile) resample prompts with replacement, the same prompts for
    every variant.
    """
    b, s, a = (np.asarray(per_prompt[v], dtype=float) for v in ("base", "sft", "aat"))
    point = {"base": b.mean(), "sft": s.mean(), "aat": a.mean()}
    out = {
        "collapse": {"sft": point["base"] - point["sft"], "aat": point["base"] - point["aat"]},
        "collapse_reduction": collapse_reduction(point["base"], point["sft"], point["aat"]),
        "gap_closed": gap_closed(point["base"], point["sft"], point["aat"]),
    }
    rng = np.random.default_rng(seed)
    cr, gc = [], []
    for _ in range(n_boot):
        idx = rng.integers(0, len(b), len(b))
        bb, ss, aa = b[idx].mean(), s[idx].mean(), a[idx].mean()
        cr.append(collapse_reduction(bb, ss, aa))
        gc.append(gap_closed(bb, ss, aa))
    for name, vals in (("collapse_reduction", cr), ("gap_closed", gc)):
        v = np.asarray(vals, dtype=float)
        v = v[np.isfinite(v)]
        out[name + "_ci95"] = (
            [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) else None
        )
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in out.items()}
