"""Stage 8: the report: results.json, report.md (the table) and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

from anchorlm.io import atomic, write_json
from anchorlm.metrics import registry
from anchorlm.provenance import describe, describe_code


def fmt(x) -> str:
    """A figure with 3 decimals; '–' for one that is missing or undefined (NaN, infinite: the JSON
    beside every report writes those as null)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x + 0.0:.3f}".replace("-0.000", "0.000") if isinstance(x, float) else str(x)


def no_aat_collapse(collapse: dict | None, gap) -> bool | None:
    """SFT collapsed and AAT did not (gap closed >= 1 with SFT's collapse > 0); None where SFT did
    not collapse (the gap closed and the reduction are then undefined). Without the collapses (a
    row that keeps only the gap closed), the gap closed alone decides."""
    c_sft = (collapse or {}).get("sft")
    if isinstance(c_sft, (int, float)) and not c_sft > 0:
        return None
    return isinstance(gap, (int, float)) and math.isfinite(gap) and gap >= 1


def fmt_gap(g, ci: list | None, collapse: dict | None = None, collapse_ci: dict | None = None) -> str:
    """A gap closed with its CI; 1 or more is no collapse left to close, not a gain over base;
    undefined where SFT did not collapse, and where its collapse's interval (`collapse_ci`, by
    variant) reaches 0: a collapse not shown divides by what may be nothing (SFT's 0.017
    [-0.148, 0.188] made a gap closed of 16.6 [-46.0, 81.8])."""
    if g is None:
        return "–"
    text = f"{fmt(g)}{fmt_ci(ci)}"
    state = no_aat_collapse(collapse, g)
    if state is None:
        return f"undefined: no SFT collapse ({text})"
    if sft_collapse_not_shown(collapse_ci):
        return f"undefined: SFT's collapse not shown ({text})"
    return f"no collapse ({text})" if state else text


def sft_collapse_not_shown(collapse_ci: dict | None) -> bool:
    """Whether SFT's collapse interval (by variant) reaches 0: a gap closed over it is undefined
    (the tables here and the paper's bar, `study.verdict`)."""
    lo = ((collapse_ci or {}).get("sft") or [None])[0]
    return isinstance(lo, (int, float)) and lo <= 0


def fmt_reduction(
    r, ci: list | None, gap, collapse: dict | None = None, collapse_ci: dict | None = None
) -> str:
    """A collapse reduction with its CI (anchorlm.metrics.summary): infinite, which the JSON writes
    as null, where SFT collapsed and AAT did not: "no AAT collapse"; an upper bound of "inf" where
    the gap closed's interval reaches 1; "–" where SFT did not collapse or its collapse's interval
    reaches 0 (as `fmt_gap`)."""
    state = no_aat_collapse(collapse, gap)
    if (
        state is None
        or sft_collapse_not_shown(collapse_ci)
        or (not state and (r is None or not math.isfinite(r)))
    ):
        return "–"
    head = "no AAT collapse" if state else fmt(r)
    if not ci:
        return head
    bounds = ["inf" if x is None or x == math.inf else fmt(x) for x in ci]
    return f"{head} [{bounds[0]}, {bounds[1]}]"


def fmt_ci(ci: list | None) -> str:
    """A 95% CI as ' [low, high]' after its figure ('' when there is none)."""
    return f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else ""


PLOTTED = tuple(m for m in registry.SUMMARY_METRICS)  # the diversity plot's panels


def check_results(results, where: str) -> None:
    """What the report needs of evaluate's JSON: variants, each with diversity and quality figures,
    the plotted diversity figures numbers; a partial file is named, not half rendered."""
    v = results.get("variants") if isinstance(results, dict) else None
    if not isinstance(v, dict) or not v:
        raise ValueError(f"{where}: no 'variants' mapping; give the JSON `anchorlm evaluate` wrote")
    for name, figs in v.items():
        if not isinstance(figs, dict) or not all(
            isinstance(figs.get(k), dict) for k in ("diversity", "quality")
        ):
            raise ValueError(f"{where}: variant {name!r} lacks its 'diversity' and 'quality' figures")
        missing = [k for k in PLOTTED if not isinstance(figs["diversity"].get(k), (int, float))]
        if missing:
            raise ValueError(
                f"{where}: variant {name!r} has no {', '.join(missing)} under 'diversity'; give the whole "
                "JSON `anchorlm evaluate` wrote"
            )


def table(results: dict) -> str:
    """The Markdown table of variants, then the summary figures."""
    cols = registry.COLUMNS  # read at call time: the registry is the one definition
    lines = ["| variant | " + " | ".join(m.label for m in cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, v in results["variants"].items():
        lines.append(f"| {name} | " + " | ".join(fmt(v[m.section].get(m.name)) for m in cols) + " |")
    if "summary" in results:
        lines += [
            "",
            "| metric | collapse SFT (95% CI) | collapse AAT (95% CI) | collapse reduction (95% CI) | gap closed (95% CI) |",
            "|---|---:|---:|---:|---:|",
        ]
        for m, s in results["summary"].items():
            lines.append(
                f"| {m} | {fmt(s['collapse']['sft'])}{fmt_ci(s.get('collapse_ci95', {}).get('sft'))} | "
                f"{fmt(s['collapse']['aat'])}{fmt_ci(s.get('collapse_ci95', {}).get('aat'))} | "
                f"{fmt_reduction(s['collapse_reduction'], s.get('collapse_reduction_ci95'), s['gap_closed'], s['collapse'], s.get('collapse_ci95'))} | "
                f"{fmt_gap(s['gap_closed'], s.get('gap_closed_ci95'), s['collapse'], s.get('collapse_ci95'))} |"
            )
    return "\n".join(lines)


def sft_topics_section(results: dict) -> list[str]:
    """Where the samples land: each variant's share of samples the classifier puts in the SFT data's
    topics, and its difference from base's, with their CIs (evaluate's `in_sft_topics`), and the
    topics each variant's samples land in most."""
    pull = results.get("in_sft_topics")
    if not pull:
        return []
    topics = ", ".join(f"`{t}`" for t in pull["topics"])
    lines = [
        "## Where the samples land",
        "",
        "| variant | in the SFT topics (95% CI) | minus base (95% CI) | most common topics |",
        "|---|---:|---:|---|",
    ]
    for v, share in pull["share"].items():
        diff = pull.get("minus_base", {}).get(v)
        minus = "–" if diff is None else f"{fmt(diff)}{fmt_ci(pull['minus_base_ci95'].get(v))}"
        counts = results["variants"].get(v, {}).get("label_counts") or {}
        n = sum(counts.values())
        common = ", ".join(f"{t} {c / n:.0%}" for t, c in list(counts.items())[:3]) if n else "–"
        lines.append(f"| {v} | {fmt(share)}{fmt_ci(pull['share_ci95'].get(v))} | {minus} | {common} |")
    return lines + [
        "",
        f"Share of each variant's samples the attribute classifier puts in the SFT data's topics ({topics}), "
        "over every prompt; CIs resample prompts, the same ones for every variant (not training runs). "
        "This counts how many samples land in those topics across prompts, which the diversity figures "
        "at the top of the report (variety within one prompt's samples) do not measure.",
        "",
    ]


def classifier_line(c: dict) -> str:
    """The attribute classifier in one line: its classes, held-out accuracy against chance, and
    where its held-out documents came from when the corpus had no split field."""
    line = (f"Attribute classifier: {c.get('classes')} corpus categories, held-out accuracy "
            f"{fmt(c.get('heldout_accuracy'))} (chance {fmt(c.get('chance'))})")  # fmt: skip
    return line + (f"; {c['heldout']}." if c.get("heldout") else ".")


def anchoring_table(results: dict) -> str:
    """Anchor fidelity of each anchored variant: does the writer follow its plan?"""
    rows = {n: v["anchoring"] for n, v in results["variants"].items() if v.get("anchoring")}
    if not rows:
        return ""
    lines = [
        "| variant | plan topic entropy | plan topic known | free-plan agreement | forced plan, SFT topics | "
        "forced plan, other topics | classifier ceiling (SFT / other) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n, a in rows.items():
        ceiling = f"{fmt(a.get('classifier_accuracy_sft'))} / {fmt(a.get('classifier_accuracy_other'))}"
        lines.append(
            f"| {n} | {fmt(a.get('plan_entropy'))} | {fmt(a.get('plan_topic_in_corpus'))} | {fmt(a.get('free_agreement'))} | "
            f"{fmt(a.get('forced_sft'))} | {fmt(a.get('forced_other'))} | "
            f"{ceiling if 'forced_sft' in a else '–'} |"
        )
    return "\n".join(lines)


ANCHORING_NOTE = (
    "Plan topic entropy: entropy (nats) of the topics the model's own annotations name, per prompt. "
    "Plan topic known: share of the samples whose own annotation (closed or not) names one of the "
    "corpus's categories as a topic; a plan with an invented topic (`topic:books`) may be well-formed "
    "but cannot be followed as measured here. Free-plan agreement: share of anchored responses the "
    "attribute classifier puts in their annotation's topic, of those whose annotation names a topic. "
    "Forced plan: the annotation's start fixed to `topic:<t>`; share of responses "
    "classified as t, for topics of the SFT data and for others. The classifier's held-out accuracy "
    "on real documents of the same topics (its ceiling) is what a writer as much on topic as the "
    "corpus scores; text more plainly on one topic than the corpus's documents can score more."
)


def samples_section(results: dict) -> list[str]:
    """What the numbers measure: the first sample of the first prompts, per variant (the
    annotation the model wrote, then its response)."""
    shown = {n: v["examples"] for n, v in results["variants"].items() if v.get("examples")}
    if not shown:
        return []
    md = [
        "## What the samples look like",
        "",
        "The first sample of the first held-out prompts, per variant.",
        "",
    ]
    for n, exs in shown.items():
        md += [f"**{n}**:", "", *example_lines(exs), ""]
    return md


def example_lines(examples: list[dict]) -> list[str]:
    """One Markdown line per sample: the prompt, the annotation the model wrote, its response."""
    lines = []
    for e in examples:
        ann = f"`{e['annotation_raw']}` " if e.get("annotation_raw") else ""
        text = " ".join(e["response"].split())[:300]
        prompt = e.get("prompt", f"prompt {e['prompt_id']}" if "prompt_id" in e else "(prompt not recorded)")
        lines.append(f"- *{prompt}* → {ann}{text or '(empty)'}")
    return lines


def provenance_lines(results: dict) -> list[str]:
    """Where the numbers were made: the machines and precisions of training and sampling (the
    demo's `made_by`), of scoring (evaluate's `provenance`), the code and the library versions.
    Another CPU kind (with or without bf16 units) or other versions give other digits."""
    prov = results.get("provenance") or {}
    made = results.get("made_by") or {}
    if not prov and not made:
        return []
    lines = ["## Provenance", ""]
    groups: dict = {}
    for stage, m in made.items():
        key = (describe(m["machine"]) if m.get("machine") else "machine not recorded", m.get("precision"))
        groups.setdefault(key, []).append(stage)
    for (where, precision), stages in groups.items():
        lines.append(f"- {', '.join(stages)}: {where}, precision {precision or 'not recorded'}")
    if prov:
        lines.append(
            f"- scoring: {describe(prov['machine'])}, precision {prov.get('precision', 'not recorded')}"
        )
        vers = ", ".join(f"{k} {v}" for k, v in prov.get("versions", {}).items())
        lines.append(f"- code: {describe_code(prov.get('code', {}))}; {vers}")
    if results.get("cells_from_other_code"):
        lines.append(
            "- **made by other code** (or in another precision) and reused (`--reuse-cells`), the code above "
            f"being this invocation's: {', '.join(results['cells_from_other_code'])}"
        )
    lines += ["", "Another CPU kind (with or without bf16 units), another precision or other library versions "
              "give other digits.", ""]  # fmt: skip
    return lines


def anchoring_plot(results: dict, path: Path) -> list[str]:
    """Bars of free-plan agreement and forced-plan accuracy per anchored variant, the classifier's
    ceiling as a line; written to `path` when any variant has forced-plan figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = {
        n: v["anchoring"]
        for n, v in results["variants"].items()
        if v.get("anchoring", {}).get("forced_sft") is not None
    }
    if not rows:
        return []
    keys = [
        ("free_agreement", "free plan"),
        ("forced_sft", "forced, SFT topics"),
        ("forced_other", "forced, other topics"),
    ]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(rows), 3.4))
    for i, (k, label) in enumerate(keys):
        ax.bar(x + (i - 1) * 0.27, [a.get(k) or 0 for a in rows.values()], 0.27, label=label)
    ceiling = next(iter(rows.values())).get("classifier_accuracy")
    if ceiling is not None:
        ax.axhline(ceiling, color="k", ls="--", lw=1, label="classifier on real documents")
    ax.set_xticks(x, list(rows))
    ax.set_ylabel("responses in the planned topic")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.suptitle("Anchor fidelity: does the writer follow its plan?")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path.name]


def plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results["variants"])
    v = results["variants"]
    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(3.7 * len(PLOTTED), 3.4))
    for ax, key in zip(axes, PLOTTED):
        title = registry.METRICS[key].label
        pp = results.get("per_prompt", {})
        err = [1.96 * np.std(pp[n][key]) / np.sqrt(len(pp[n][key])) if n in pp else 0 for n in names]
        ax.bar(
            names,
            [v[n]["diversity"][key] for n in names],
            yerr=err,
            capsize=4,
            color=["#888", "#d62728", "#1f77b4", "#2ca02c"][: len(names)],
        )
        ax.set_title(title, fontsize=10)
    fig.suptitle("Diversity per variant (higher is more diverse; bars: 95% CI over prompts)")
    fig.tight_layout()
    fig.savefig(out / "diversity.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, qkey, qlabel in zip(
        axes,
        ("style_adherence", "fluency_nll"),
        ("style adherence (higher is better)", "fluency NLL (lower is better)"),
    ):
        for n in names:
            q = v[n]["quality"].get(qkey)
            if not isinstance(q, (int, float)):  # not measured for this variant
                continue
            ax.scatter(q, v[n]["diversity"]["embedding_distance"], s=60)
            ax.annotate(
                n, (q, v[n]["diversity"]["embedding_distance"]), textcoords="offset points", xytext=(5, 5)
            )
        ax.set_xlabel(qlabel)
        ax.set_ylabel("mean pairwise cosine distance")
    fig.suptitle("Diversity against quality")
    fig.tight_layout()
    fig.savefig(out / "diversity_vs_quality.png", dpi=120)
    plt.close(fig)
    return ["diversity.png", "diversity_vs_quality.png"] + anchoring_plot(results, out / "anchoring.png")


def write_report(results: dict | str | Path, out_dir: str | Path, title: str = "anchorlm report") -> str:
    """Write results.json, report.md and the plots to `out_dir`; returns the table. The results are
    checked first (what `anchorlm evaluate` writes), so a wrong file changes nothing in `out_dir`."""
    where = "the results"
    if not isinstance(results, dict):
        where = str(results)
        try:
            results = json.loads(Path(results).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{where}: not JSON ({e.msg}, line {e.lineno}); give the file `anchorlm evaluate` wrote"
            ) from None
    check_results(results, where)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results, indent=2)
    pngs = plots(results, out)
    t = table(results)
    c = results.get("classifier", {})
    md = [
        f"# {title}",
        "",
        t,
        "",
        "Diversity is measured per prompt over its samples and averaged over prompts; CIs resample prompts.",
        classifier_line(c),
        "",
    ]
    md += provenance_lines(results)
    md += sft_topics_section(results)
    anchored = anchoring_table(results)
    if anchored:
        md += ["## Anchor fidelity", "", anchored, "", ANCHORING_NOTE, ""]
    md += samples_section(results)
    md += [f"![{p}]({p})" for p in pngs]
    with atomic(out / "report.md") as fh:
        fh.write("\n".join(md) + "\n")
    return t
