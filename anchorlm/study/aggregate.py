"""From cells' scores to the study's figures: the mean over seeds of each variant's figures, and the
paper's summary figures (collapse, gap closed, collapse reduction) pooled over seeds, with CIs that
resample seeds, then prompts."""

from __future__ import annotations

import numpy as np

from anchorlm.metrics.registry import SUMMARY_METRICS
from anchorlm.metrics.summary import summarize
from anchorlm.study.results import Figures, MetricSummary


def mean_figures(runs: list[dict]) -> Figures:
    """The mean over seeds of each diversity, quality and anchoring figure (a cell's scores are
    `Scorer.score`'s dict; per-topic figures are those of the first seed)."""

    def mean(part: str) -> dict:
        out = {}
        for k, first in runs[0][part].items():
            vals = [r[part][k] for r in runs if r[part].get(k) is not None]
            out[k] = first if isinstance(first, dict) else float(np.mean(vals)) if vals else None
        return out

    return Figures(
        diversity=mean("diversity"),
        quality=mean("quality"),
        n_samples=sum(r["n_samples"] for r in runs),
        n_prompts=runs[0]["n_prompts"],
        n_seeds=len(runs),
        anchoring=mean("anchoring") if "anchoring" in runs[0] else None,
        examples=runs[0].get("examples", []),
    )


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
