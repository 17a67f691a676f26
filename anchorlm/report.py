"""Stage 8: the report: results.json, report.md (the table) and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

COLUMNS = [
    ("diversity", "embedding_distance", "emb. dist."),
    ("diversity", "vendi", "Vendi"),
    ("diversity", "attribute_entropy", "attr. entropy"),
    ("diversity", "distinct_2", "distinct-2"),
    ("quality", "style_adherence", "style adh."),
    ("quality", "fluency_nll", "fluency NLL"),
    ("quality", "annotation_wellformed", "ann. ok"),
]


def _fmt(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x + 0.0:.3f}".replace("-0.000", "0.000") if isinstance(x, float) else str(x)


def _ci(s: dict, key: str) -> str:
    return f" [{_fmt(s[key][0])}, {_fmt(s[key][1])}]" if s.get(key) else ""


def table(results: dict) -> str:
    """The Markdown table of variants, then the summary figures."""
    lines = ["| variant | " + " | ".join(c[2] for c in COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    for name, v in results["variants"].items():
        lines.append(f"| {name} | " + " | ".join(_fmt(v[sec].get(key)) for sec, key, _ in COLUMNS) + " |")
    if "summary" in results:
        lines += [
            "",
            "| metric | collapse SFT (95% CI) | collapse AAT (95% CI) | collapse reduction (95% CI) | gap closed (95% CI) |",
            "|---|---:|---:|---:|---:|",
        ]
        for m, s in results["summary"].items():
            lines.append(
                f"| {m} | {_fmt(s['collapse']['sft'])}{_ci(s.get('collapse_ci95', {}), 'sft')} | "
                f"{_fmt(s['collapse']['aat'])}{_ci(s.get('collapse_ci95', {}), 'aat')} | "
                f"{_fmt(s['collapse_reduction'])}{_ci(s, 'collapse_reduction_ci95')} | "
                f"{_fmt(s['gap_closed'])}{_ci(s, 'gap_closed_ci95')} |"
            )
    return "\n".join(lines)


def plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results["variants"])
    v = results["variants"]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, key, title in zip(
        axes,
        ("embedding_distance", "vendi", "attribute_entropy"),
        ("mean pairwise cosine distance", "Vendi score", "attribute entropy (nats)"),
    ):
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
            ax.scatter(v[n]["quality"][qkey], v[n]["diversity"]["embedding_distance"], s=60)
            ax.annotate(
                n,
                (v[n]["quality"][qkey], v[n]["diversity"]["embedding_distance"]),
                textcoords="offset points",
                xytext=(5, 5),
            )
        ax.set_xlabel(qlabel)
        ax.set_ylabel("mean pairwise cosine distance")
    fig.suptitle("Diversity against quality")
    fig.tight_layout()
    fig.savefig(out / "diversity_vs_quality.png", dpi=120)
    plt.close(fig)
    return ["diversity.png", "diversity_vs_quality.png"]


def write_report(results: dict | str | Path, out_dir: str | Path, title: str = "anchorlm report") -> str:
    """Write results.json, report.md and the plots to `out_dir`; returns the table."""
    if not isinstance(results, dict):
        results = json.loads(Path(results).read_text())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    pngs = plots(results, out)
    t = table(results)
    c = results.get("classifier", {})
    md = [
        f"# {title}",
        "",
        t,
        "",
        "Diversity is measured per prompt over its samples and averaged over prompts; CIs resample prompts.",
        f"Attribute classifier: {c.get('classes')} corpus categories, held-out accuracy "
        f"{_fmt(c.get('heldout_accuracy'))} (chance {_fmt(c.get('chance'))}).",
        "",
    ]
    md += [f"![{p}]({p})" for p in pngs]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return t
