"""The results page's evidence sections: each prompt set (label-free diversity first, quality with
CIs, the headline minus SFT), the mechanism (training x inference), plan following with Wilson
intervals, and the dose-response. Rendered from anchorlm.study.results only."""

from __future__ import annotations

from anchorlm.metrics.registry import label
from anchorlm.report import fmt, fmt_ci, fmt_gap
from anchorlm.study.results import Figures, MetricSummary, PromptSet, StudyResults
from anchorlm.study.verdict import matched

DIVERSITY = ("embedding_distance", "vendi", "attribute_entropy")  # label-free first
QUALITY = (
    "content_nll",
    "style_adherence",
    "finished",
    "empty_responses",
    "repetition",
    "tag_echo",
    "value_echo",
    "length_words",
)


def gap(s: MetricSummary | None) -> str:
    """Gap closed with its CI; 1 or more is no collapse left to close, not a gain over base."""
    return "–" if s is None else fmt_gap(s.gap_closed, s.gap_closed_ci95, s.collapse, s.collapse_ci95)


def _with_ci(f: Figures, section: str, m: str) -> str:
    v = (f.diversity if section == "diversity" else f.quality).get(m)
    return f"{fmt(v)}{fmt_ci((f.ci95 or {}).get(m))}"


def variants_table(variants: dict[str, Figures], labels: dict) -> list[str]:
    """Diversity (label-free metrics first, then attribute entropy beside the classifier's
    confidence and the same entropy of real held-out documents), then quality."""
    cols = [label(m) for m in DIVERSITY] + ["classifier conf.", "real-document entropy"]
    cols += [label(m) for m in QUALITY]
    out = ["| variant | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for v, f in variants.items():
        cells = [_with_ci(f, "diversity", m) for m in DIVERSITY]
        cells += [
            fmt(f.diversity.get("attribute_confidence")),
            fmt((f.ceiling or {}).get("attribute_entropy")),
        ]
        cells += [_with_ci(f, "quality", m) if m == "content_nll" else fmt(f.quality.get(m)) for m in QUALITY]
        out.append(f"| {v}: {labels.get(v, v)} | " + " | ".join(cells) + " |")
    return out


def quality_table(ps: PromptSet, head: str) -> list[str]:
    """The protocol's matched quality on one prompt set: each figure's AAT minus SFT, paired over
    seeds and prompts, judged on the means and over its whole 95% interval (study.verdict.matched)."""
    rows = matched(ps.variants["sft"].quality, ps.variants[head].quality, ps.differences)
    yes = {True: "yes", False: "**no**", None: "–"}
    rows = [r for r in rows if r["on_means"] is not None] + [r for r in rows if r["on_means"] is None]
    out = [
        "| quality | SFT | AAT | AAT - SFT (95% CI) | matched if AAT is | on the means | at 95% |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        if r["on_means"] is None:
            out.append(f"| {label(r['metric'])} | not measured | | | {r['rule']} | – | – |")
            continue
        out.append(
            f"| {label(r['metric'])} | {fmt(r['sft'])} | {fmt(r['aat'])} | {fmt(r['difference'])}"
            f"{fmt_ci(r['ci95'])} | {r['rule']} | {yes[r['on_means']]} | {yes[r['at_95']]} |"
        )
    return out


def sections(res: StudyResults) -> list[str]:
    L: list[str] = []
    labels, head = res.labels, res.headline
    if res.prompt_sets:
        L += ["", "## Prompt sets", ""]
        L += [
            "Each set sampled by base, SFT and the headline variant at every seed. CIs: 95% bootstrap over "
            "seeds, then prompts. Content NLL is the reference LM's per-token NLL of every response without "
            "the SFT style's wrapper. Gap closed of 1 or more is shown as no collapse. Quality: AAT minus "
            "SFT per prompt, paired (the same seed and prompt draws for both); matched as the protocol "
            "defines it, judged on the means and over the whole two-sided 95% interval. Tag echo counts "
            "annotation syntax (`key:value`) in the response; value echo (added after the protocol), "
            "responses half or more of whose content words are the topic and keyword values of the "
            "annotation they were written under (SFT has none: 0).",
        ]
        for name, ps in res.prompt_sets.items():
            L += ["", f"### {name} ({ps.n_prompts} prompts)", "", *variants_table(ps.variants, labels), ""]
            L += [
                "| metric | collapse SFT | collapse AAT | gap closed | AAT - SFT |",
                "|---|---:|---:|---:|---:|",
            ]
            for m, s in ps.summary.items():
                d = ps.differences.get(m, {})
                L.append(
                    f"| {m} | {fmt(s.collapse['sft'])}{fmt_ci(s.collapse_ci95.get('sft'))} | "
                    f"{fmt(s.collapse['aat'])}{fmt_ci(s.collapse_ci95.get('aat'))} | {gap(s)} | "
                    f"{fmt(d.get('difference'))}{fmt_ci(d.get('ci95'))} |"
                )
            L += ["", *quality_table(ps, head)]
    if res.mechanism:
        L += ["", "## The mechanism: training x inference", ""]
        L += [
            "| variant | training | inference | emb. dist. | attr. entropy | gap closed (emb.) | gap closed "
            "(attr.) | style | content NLL | ann. ok | forced other |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in res.mechanism:
            g = {
                m: gap(MetricSummary(collapse={"sft": r.get(f"collapse_sft_{m}")}, collapse_reduction=None,
                                     gap_closed=r[f"gap_closed_{m}"],
                                     collapse_ci95={"sft": r.get(f"collapse_sft_{m}_ci95")}, collapse_reduction_ci95=None,
                                     gap_closed_ci95=r[f"gap_closed_{m}_ci95"]))
                for m in ("embedding_distance", "attribute_entropy")
            }  # fmt: skip
            L.append(
                f"| {r['variant']} | {r['training']} | {r['inference']} | {fmt(r['embedding_distance'])} | "
                f"{fmt(r['attribute_entropy'])} | {g['embedding_distance']} | {g['attribute_entropy']} | "
                f"{fmt(r['style_adherence'])} | {fmt(r['content_nll'])} | {fmt(r['annotation_wellformed'])} | "
                f"{fmt(r['forced_other'])} |"
            )
    pf = res.plan_following
    if pf and pf.get("variants"):
        L += ["", "## Plan following (forced plans)", ""]
        L += [
            "The annotation's start forced to `topic:<t>`, for topics outside the SFT data; the share of "
            "responses the classifier puts in t, pooled over seeds and prompts, with its Wilson interval; "
            "the unforced rate is the share of the variant's own free samples in those topics; lift is "
            "the difference.",
            "",
            "| variant | forced, other topics | unforced rate | lift | samples per prompt and topic |",
            "|---|---:|---:|---:|---:|",
        ]
        for v, x in pf["variants"].items():
            L.append(
                f"| {v} | {fmt(x['forced_other'])}{fmt_ci(x['forced_other_wilson95'])} | {fmt(x['unforced_other'])} "
                f"| {fmt(x['lift_other'])} | {x['samples_per_prompt_and_topic']} |"
            )
        d = pf.get("after_minus_before")
        if d:
            L += ["", f"After anchored SFT minus before ({d['after']} - {d['before']}), forced other topics: "
                  f"{fmt(d['difference'])}{fmt_ci(d['ci95'])} (bootstrap over seeds, then prompts)."]  # fmt: skip
        for v, d in (pf.get("minus_headline") or {}).items():
            L += ["", f"{v} minus {d['headline']}, forced other topics: {fmt(d['difference'])}{fmt_ci(d['ci95'])} "
                  "(paired, bootstrap over seeds, then prompts)."]  # fmt: skip
    if res.dose:
        L += ["", f"## Dose-response: SFT strength (size {res.dose.size}, seeds {res.dose.seeds})", ""]
        L += [
            "| epochs | collapse SFT (attr.) | collapse AAT (attr.) | gap closed (attr.) | collapse SFT (emb.) | "
            "collapse AAT (emb.) | SFT style | AAT style |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in res.dose.points:
            s = {m: MetricSummary(**p["summary"][m]) for m in ("attribute_entropy", "embedding_distance")}
            st = {v: p["variants"].get(v, {}).get("style_adherence") for v in ("sft", head)}
            a, e = s["attribute_entropy"], s["embedding_distance"]
            L.append(
                f"| {p['epochs']:g} | {fmt(a.collapse['sft'])}{fmt_ci(a.collapse_ci95.get('sft'))} | "
                f"{fmt(a.collapse['aat'])}{fmt_ci(a.collapse_ci95.get('aat'))} | {gap(a)} | "
                f"{fmt(e.collapse['sft'])} | {fmt(e.collapse['aat'])} | {fmt(st['sft'])} | {fmt(st[head])} |"
            )
    return L
