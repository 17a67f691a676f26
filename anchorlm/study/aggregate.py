"""From cells' scores to the study's figures: the mean over seeds of each variant's figures, and the
paper's summary figures (collapse, gap closed, collapse reduction) pooled over seeds, with CIs that
resample seeds, then prompts."""

from __future__ import annotations

import numpy as np

from anchorlm.metrics.registry import RATES, SUMMARY_METRICS
from anchorlm.metrics.summary import hierarchical, summarize  # noqa: F401 (hierarchical: this module's API too)
from anchorlm.study.results import Figures, MetricSummary


def mean_figures(runs: list[dict], n_boot: int = 0, seed: int = 0) -> Figures:
    """The mean over seeds of each diversity, quality and anchoring figure (a cell's scores are
    `Scorer.score`'s dict; per-topic figures are those of the first seed; a seed's interval, such as
    a forced rate's Wilson interval, is not averaged but left out, None: the intervals pooled over
    seeds are the study's plan following), each seed's value, and with `n_boot` a CI over seeds and
    prompts of each per-prompt figure (diversity, content NLL, the quality rates)."""

    def mean(part: str) -> dict:
        out = {}
        for k, first in runs[0][part].items():
            if any(k not in r[part] for r in runs):  # not measured at every seed (older cells)
                out[k] = None
                continue
            if any(isinstance(r[part][k], list) for r in runs):  # an interval: the mean of the ends is none
                out[k] = None
                continue
            vals = [r[part][k] for r in runs if r[part][k] is not None]
            out[k] = first if isinstance(first, dict) else float(np.mean(vals)) if vals else None
        return out

    quality = mean("quality")
    per_seed = {
        part: {k: [r[part].get(k) for r in runs] for k, v in runs[0][part].items() if not isinstance(v, dict)}
        for part in ("diversity", "quality")
    }
    ci = None
    if n_boot and all("per_prompt" in r for r in runs):
        ci = {
            m: hierarchical([r["per_prompt"][m] for r in runs], n_boot, seed)
            for m in runs[0]["per_prompt"]
            if all(m in r["per_prompt"] for r in runs)  # older cells lack the quality rates
        }
        for m in ("content_nll", *RATES):  # the per-prompt quality figures
            if m in ci:
                quality[f"{m}_ci95"] = ci[m]
    return Figures(
        diversity=mean("diversity"),
        quality=quality,
        n_samples=sum(r["n_samples"] for r in runs),
        n_prompts=runs[0]["n_prompts"],
        n_seeds=len(runs),
        anchoring=mean("anchoring") if "anchoring" in runs[0] else None,
        examples=runs[0].get("examples", []),
        per_seed=per_seed if len(runs) > 1 else None,
        ci95=ci,
        ceiling=runs[0].get("ceiling"),
    )


def paired_difference(a: list[dict], b: list[dict], metric: str, n_boot: int, seed: int) -> dict:
    """mean(a) - mean(b) of a per-prompt figure (same seeds and prompts, paired), with a CI that
    resamples seeds, then prompts, the same draws for both."""
    x = np.array([r["per_prompt"][metric] for r in a], dtype=float)
    y = np.array([r["per_prompt"][metric] for r in b], dtype=float)
    d = x - y
    return {"difference": float(np.nanmean(d)), "ci95": hierarchical(d, n_boot, seed, np.nanmean)}


def summary(
    runs: dict[str, list[dict]], n_boot: int, seed: int, aat: str = "aat"
) -> dict[str, MetricSummary]:
    """Collapse, gap closed, collapse reduction of `aat` (any variant) against base and sft, pooled
    over seeds, with CIs resampling seeds and prompts."""
    out = {}
    for m in SUMMARY_METRICS:
        arr = {
            v: np.array([r["per_prompt"][m] for r in runs[src]])
            for v, src in (("base", "base"), ("sft", "sft"), ("aat", aat))
        }
        per_seed = [
            summarize({v: a[i] for v, a in arr.items()}, 0)["gap_closed"] for i in range(len(arr["base"]))
        ]
        out[m] = MetricSummary(**summarize(arr, n_boot, seed), per_seed_gap_closed=per_seed)
    return out


def slope(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope of y against x (None when x does not vary)."""
    x_, y_ = np.array(x), np.array(y)
    if len(x_) < 2 or np.ptp(x_) == 0:
        return None
    return float(np.polyfit(x_, y_, 1)[0])
