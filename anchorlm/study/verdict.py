"""The paper's bar as checks on a study's results (anchorlm.study.results)."""

from __future__ import annotations

import math

from anchorlm.metrics.registry import PAPER_METRICS
from anchorlm.report import sft_collapse_not_shown
from anchorlm.study.results import Bar, StudyResults
from anchorlm.variants import MECHANISM

DEGENERATE = ("empty_responses", "repetition", "tag_echo", "value_echo")


def matched(sft: dict, aat: dict, differences: dict | None = None) -> list[dict]:
    """The protocol's matched quality, one row a figure: content NLL within 5% of SFT's (fluency NLL
    for results without it), style adherence within 2 points, each degenerate rate at most 2 points
    above SFT's (value echo, which SFT cannot do without an annotation, was added after the
    protocol: AAT's at most 2%). `on_means` judges the means, None where either was not measured
    (results scored before the rate existed: the bar then counts the check failed, not passed);
    with `differences` (AAT minus SFT per prompt, paired, with its two-sided 95% CI: the study's
    prompt sets) `at_95` asks the whole interval to lie within the bound (each side a 2.5% test;
    None where no interval was measured)."""
    rows = []
    nll = "content_nll" if aat.get("content_nll") is not None else "fluency_nll"
    rules = [(nll, "within 5%", f"{nll}_within_5_percent"),
             ("style_adherence", "within 2 points", "style_adherence_within_2_points")]  # fmt: skip
    rules += [(r, "at most 2 points above", f"{r}_within_2_points") for r in DEGENERATE]
    for m, rule, check in rules:
        a, s = aat.get(m), sft.get(m)
        if a is None or s is None:
            rows.append({"metric": m, "sft": s, "aat": a, "rule": rule, "check": check, "on_means": None,
                         "difference": None, "ci95": None, "at_95": None})  # fmt: skip
            continue
        if m == nll:
            ok, limits = a <= 1.05 * s, (-math.inf, 0.05 * s)
        elif m == "style_adherence":
            ok, limits = abs(a - s) <= 0.02, (-0.02, 0.02)
        else:
            ok, limits = a <= s + 0.02, (-math.inf, 0.02)
        d = (differences or {}).get(m) or {}
        ci = d.get("ci95")
        rows.append({
            "metric": m, "sft": s, "aat": a, "rule": rule, "check": check, "on_means": bool(ok),
            "difference": d.get("difference", a - s), "ci95": ci,
            "at_95": None if not ci else bool(limits[0] <= ci[0] and ci[1] <= limits[1]),
        })  # fmt: skip
    return rows


def bar(res: StudyResults) -> Bar:
    """The paper's headline as checks, at the largest size: gap closed >= 0.85 on both metrics with
    a CI that excludes 0, at matched quality (style adherence within 2 points of SFT, content NLL
    within 5% of SFT's (fluency NLL for results without it), each degenerate rate (empty responses,
    repeated n-grams, tag echo, value echo; where measured) at most 2 points above SFT's, on the
    means: `matched`); gap closed growing with size (with more
    than one size); and, where forced
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
        c_sft = s.collapse.get("sft")
        # else the gap closed's denominator is <= 0, or may be (the tables print "undefined" then too)
        sft_collapsed = c_sft is not None and c_sft > 0 and not sft_collapse_not_shown(s.collapse_ci95)
        checks[f"{m}_gap_closed_at_largest>=0.85"] = bool(
            sft_collapsed and g is not None and math.isfinite(g) and g >= 0.85
        )
        checks[f"{m}_gap_closed_ci_excludes_0"] = bool(sft_collapsed and ci and ci[0] > 0)
        if len(order) > 1:
            seq = [res.sizes[s].summary[m].gap_closed for s in order]
            checks[f"{m}_gap_closed_grows_with_size"] = bool(
                all(a is not None and b is not None and b > a for a, b in zip(seq, seq[1:]))
            )
    for row in matched(q["sft"], q["aat"]):
        checks[row["check"]] = bool(row["on_means"])  # not measured: not shown to be matched
    ab = res.ablations.variants

    def forced_other(v: str):
        return (ab[v].anchoring or {}).get("forced_other") if v in ab else None

    after, before = forced_other(head), forced_other("annotated")
    if after is not None and before:
        checks["forced_other_after>=0.8x_before"] = bool(after >= 0.8 * before)
    return Bar(largest_size=order[-1], checks=checks, met=all(checks.values()))


def mechanism_rows(res: StudyResults) -> list[dict] | None:
    """The ablations read as training x inference (anchorlm.variants.MECHANISM): one row a variant,
    with its diversity, gap closed against base and SFT, quality and plan figures."""
    ab = res.ablations
    rows = []
    for v, (training, inference) in MECHANISM.items():
        if v not in ab.variants:
            continue
        f, sm = ab.variants[v], ab.summary.get(v, {})
        a = f.anchoring or {}
        rows.append({
            "variant": v,
            "training": training,
            "inference": inference,
            **{m: f.diversity.get(m) for m in ("embedding_distance", "vendi", "attribute_entropy")},
            **{f"gap_closed_{m}": (sm[m].gap_closed if m in sm else None) for m in PAPER_METRICS},
            **{f"gap_closed_{m}_ci95": (sm[m].gap_closed_ci95 if m in sm else None) for m in PAPER_METRICS},
            **{f"collapse_sft_{m}": (sm[m].collapse.get("sft") if m in sm else None) for m in PAPER_METRICS},
            **{f"collapse_sft_{m}_ci95": (sm[m].collapse_ci95.get("sft") if m in sm else None) for m in PAPER_METRICS},
            **{m: f.quality.get(m) for m in ("style_adherence", "content_nll", "annotation_wellformed")},
            "free_agreement": a.get("free_agreement"),
            "plan_topic_in_corpus": a.get("plan_topic_in_corpus"),
            "forced_other": a.get("forced_other"),
        })  # fmt: skip
    return rows or None
