"""The paper's summary figures (arXiv 2605.09995, "about 6x less collapse", "85% of the gap") with
bootstrap confidence intervals; which metrics get them is the registry's `summary` flag.

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

    Values are [prompts] or [seeds, prompts] (seed k of every variant is one independent run: its own
    pretraining, post-training and sampling seed). Confidence intervals (95%, percentile) resample
    seeds, then prompts, with replacement, the same ones for every variant.
    """
    b, s, a = (np.atleast_2d(np.asarray(per_prompt[v], dtype=float)) for v in ("base", "sft", "aat"))
    if not b.shape == s.shape == a.shape:
        raise ValueError(f"base, sft and aat need values of one shape, not {b.shape}, {s.shape}, {a.shape}")
    point = {"base": b.mean(), "sft": s.mean(), "aat": a.mean()}
    out = {
        "collapse": {"sft": point["base"] - point["sft"], "aat": point["base"] - point["aat"]},
        "collapse_reduction": collapse_reduction(point["base"], point["sft"], point["aat"]),
        "gap_closed": gap_closed(point["base"], point["sft"], point["aat"]),
    }
    rng = np.random.default_rng(seed)
    boot: dict[str, list] = {
        "collapse_sft": [],
        "collapse_aat": [],
        "collapse_reduction": [],
        "gap_closed": [],
    }
    n_seeds, n_prompts = b.shape
    for _ in range(n_boot):
        si = rng.integers(0, n_seeds, n_seeds) if n_seeds > 1 else np.zeros(1, dtype=int)
        pi = rng.integers(0, n_prompts, n_prompts)
        idx = np.ix_(si, pi)
        bb, ss, aa = b[idx].mean(), s[idx].mean(), a[idx].mean()
        boot["collapse_sft"].append(bb - ss)
        boot["collapse_aat"].append(bb - aa)
        boot["collapse_reduction"].append(collapse_reduction(bb, ss, aa))
        boot["gap_closed"].append(gap_closed(bb, ss, aa))
    ci = {name: _percentile_ci(vals) for name, vals in boot.items()}
    out["collapse_ci95"] = {"sft": ci["collapse_sft"], "aat": ci["collapse_aat"]}
    out["collapse_reduction_ci95"] = ci["collapse_reduction"]
    out["gap_closed_ci95"] = ci["gap_closed"]
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in out.items()}


def _percentile_ci(vals: list) -> list[float] | None:
    v = np.asarray(vals, dtype=float)
    v = v[np.isfinite(v)]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) else None
