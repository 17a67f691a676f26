"""The paper's summary figures (arXiv 2605.09995, "about 6x less collapse", "85% of the gap") with
bootstrap confidence intervals; which metrics get them is the registry's `summary` flag.

collapse(m)        = D(base) - D(m)
collapse reduction = collapse(SFT) / collapse(AAT) = 1 / (1 - gap closed)
gap closed         = (D(AAT) - D(SFT)) / (D(base) - D(SFT))

Where SFT collapsed and AAT lost none of base's diversity the reduction is infinite: "no AAT
collapse" (JSON null), never the negative ratio that an AAT more diverse than base gives; where SFT
did not collapse there is nothing to reduce (NaN, JSON null too: `collapse` tells the two apart).
Its CI is the gap closed's, over the draws in which SFT collapsed, carried through the same map
(1 / (1 - g), infinite from g = 1 on); none where SFT did not collapse in more than 2.5% of the
draws. A ratio resampled as such jumps from +inf to -inf wherever AAT's collapse crosses 0, and
its percentiles mean nothing.
"""

from __future__ import annotations

import math

import numpy as np


def collapse_reduction(base: float, sft: float, aat: float) -> float:
    """collapse(SFT) / collapse(AAT); inf where AAT lost nothing (aat >= base), NaN where SFT lost
    nothing (no collapse to reduce)."""
    c_sft, c_aat = base - sft, base - aat
    if not c_sft > 0:
        return math.nan
    return c_sft / c_aat if c_aat > 0 else math.inf


def reduction_of_gap(g: float) -> float:
    """The collapse reduction a gap closed `g` means (for an SFT that collapsed): 1 / (1 - g)."""
    return 1 / (1 - g) if g < 1 else math.inf


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
        boot["gap_closed"].append(gap_closed(bb, ss, aa))
    ci = {name: _percentile_ci(vals) for name, vals in boot.items()}
    out["collapse_ci95"] = {"sft": ci["collapse_sft"], "aat": ci["collapse_aat"]}
    out["collapse_reduction_ci95"] = _reduction_ci(boot["gap_closed"], boot["collapse_sft"])
    out["gap_closed_ci95"] = ci["gap_closed"]
    return {k: (float(v) if isinstance(v, (float, np.floating)) else v) for k, v in out.items()}


def shares_against_base(per_prompt: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0) -> dict:
    """A per-prompt share (0-1) of each variant, and each variant's minus base's (where base is
    among them), with 95% CIs that resample prompts (`hierarchical`: every call draws the same
    prompts, so the differences are paired by prompt). Values are [prompts], every variant's in
    the same prompt order."""
    arr = {v: np.asarray(x, dtype=float) for v, x in per_prompt.items()}
    if len({a.shape for a in arr.values()}) > 1:
        raise ValueError(f"every variant needs one value per prompt, not {[a.shape for a in arr.values()]}")
    out: dict = {
        "share": {v: float(a.mean()) for v, a in arr.items()},
        "share_ci95": {v: hierarchical(a, n_boot, seed) for v, a in arr.items()},
    }
    if "base" in arr:
        d = {v: a - arr["base"] for v, a in arr.items() if v != "base"}
        out["minus_base"] = {v: float(x.mean()) for v, x in d.items()}
        out["minus_base_ci95"] = {v: hierarchical(x, n_boot, seed) for v, x in d.items()}
    return out


def hierarchical(arr: np.ndarray, n_boot: int, seed: int, stat=np.mean) -> list[float] | None:
    """A 95% percentile CI of stat(arr) for arr [seeds, prompts]: seeds resampled with replacement,
    then prompts (the same prompt draws for every seed drawn, so paired arrays stay paired when
    the same generator state resamples them)."""
    arr = np.atleast_2d(np.asarray(arr, dtype=float))
    if not n_boot or not np.isfinite(arr).any():
        return None
    rng = np.random.default_rng(seed)
    s, p = arr.shape
    vals = []
    for _ in range(n_boot):
        si = rng.integers(0, s, s) if s > 1 else np.zeros(1, dtype=int)
        pi = rng.integers(0, p, p)
        vals.append(stat(arr[np.ix_(si, pi)]))
    return _percentile_ci(vals)


def _reduction_ci(gaps: list, sft_collapses: list) -> list[float] | None:
    """The collapse reduction's CI from the gap closed's draws where SFT collapsed; None where it
    did not in more than 2.5% of the draws (the interval would then reach an undefined ratio)."""
    g, c = np.asarray(gaps, dtype=float), np.asarray(sft_collapses, dtype=float)
    if not len(g) or np.mean(~(c > 0)) > 0.025:
        return None
    ci = _percentile_ci(g[c > 0])
    return [reduction_of_gap(x) for x in ci] if ci else None


def _percentile_ci(vals: list) -> list[float] | None:
    v = np.asarray(vals, dtype=float)
    v = v[np.isfinite(v)]
    return [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) else None
