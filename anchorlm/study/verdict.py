"""The paper's bar as checks on a study's results (anchorlm.study.results)."""

from __future__ import annotations

import math

from anchorlm.metrics.registry import PAPER_METRICS
from anchorlm.study.results import Bar, StudyResults


def bar(res: StudyResults) -> Bar:
    """The paper's headline as checks, at the largest size: gap closed >= 0.85 on both metrics with
    a CI that excludes 0, at matched quality (style adherence within 2 points of SFT, fluency NLL
    within 5% of SFT); gap closed growing with size (with more than one size); and, where forced
    plans were sampled, the post-trained writer following other topics' plans at least 80% as
    often as the annotated model did before post-training."""
    order = sorted(res.sizes, key=lambda s: res.sizes[s].non_embedding_params)
    top = res.sizes[order[-1]]
    head = res.headline
    q = {"sft": top.variants["sft"].quality, "aat": top.variants[head].quality}
    checks = {}
    for m in PAPER_METRICS:
        s = top.summary[m]
        g, ci = s.gap_closed, s.gap_closed_ci95
        checks[f"{m}_gap_closed_at_largest>=0.85"] = bool(g is not None and math.isfinite(g) and g >= 0.85)
        checks[f"{m}_gap_closed_ci_excludes_0"] = bool(ci and ci[0] > 0)
        if len(order) > 1:
            seq = [res.sizes[s].summary[m].gap_closed for s in order]
            checks[f"{m}_gap_closed_grows_with_size"] = bool(
                all(a is not None and b is not None and b > a for a, b in zip(seq, seq[1:]))
            )
    checks["style_adherence_within_2_points"] = bool(
        abs(q["aat"]["style_adherence"] - q["sft"]["style_adherence"]) <= 0.02
    )
    checks["fluency_nll_within_5_percent"] = bool(q["aat"]["fluency_nll"] <= 1.05 * q["sft"]["fluency_nll"])
    ab = res.ablations.variants

    def forced_other(v: str):
        return (ab[v].anchoring or {}).get("forced_other") if v in ab else None

    after, before = forced_other(head), forced_other("annotated")
    if after is not None and before:
        checks["forced_other_after>=0.8x_before"] = bool(after >= 0.8 * before)
    return Bar(largest_size=order[-1], checks=checks, met=all(checks.values()))
