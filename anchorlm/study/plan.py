"""The plan: each part of a study defined once, with the jobs it needs (a variant at a size and
seed) and how their scores become its section of the results. The study's run, the GPU run's
training and sampling (anchorlm.study.remote) and its time budget (which pretrainings the jobs need)
all read this list; a recipe leaves a part out with an empty list (`entropy_counts: []`).

  scaling     base / sft / the headline AAT variant at every size and seed; collapse, gap closed
  ablations   at the focus size, every variant of `ablations` and of the recipe's `variants`, with
              anchor fidelity (free and forced plans) for the anchored ones
  entropy     SFT sets of equal size from 1, 2, 4, ... categories; output against data entropy
  frontier    `frontier_variants` sampled at several temperatures
  prompt_sets base, sft and the headline on further prompt sets (NoveltyBench), with AAT - SFT
              differences and their CIs
  dose        sft and the headline post-trained for several numbers of epochs (the dose-response)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from anchorlm.metrics.diversity import entropy
from anchorlm.metrics.fidelity import wilson
from anchorlm.metrics.registry import RATES, SUMMARY_METRICS
from anchorlm.study.aggregate import mean_figures, paired_difference, slope, summary
from anchorlm.study.cells import Cells, Job
from anchorlm.study.config import StudyConfig
from anchorlm.study.results import (
    Ablations,
    DoseResponse,
    EntropyPoint,
    EntropyStudy,
    Frontier,
    PromptSet,
    SizeResult,
    VariantEntropy,
)


@dataclass(frozen=True)
class Part:
    name: str
    key: str  # the field of StudyResults it fills
    enabled: Callable[[StudyConfig], bool]
    jobs: Callable[[Cells, StudyConfig], list[Job]]
    aggregate: Callable[[Cells, StudyConfig, Callable[[Job], dict]], object]  # (cells, cfg, scores of a job)


def compared(cfg: StudyConfig) -> list[str]:
    """The variants the ablations compare: the recipe's list, then its own variants."""
    return list(dict.fromkeys([*cfg.ablations, *(e["name"] for e in cfg.variants)]))


# ---- scaling ----------------------------------------------------------------------------------------
def _scaling_jobs(cells: Cells, cfg: StudyConfig) -> list[Job]:
    return [Job(z, s, v) for z in cells.sizes for v in ("base", "sft", cfg.headline) for s in cfg.seeds]


def _scaling(cells: Cells, cfg: StudyConfig, scores) -> dict[str, SizeResult]:
    ev, out = cfg.base.evaluate, {}
    for size in cells.sizes:
        runs = {v: [scores(Job(size, s, v)) for s in cfg.seeds] for v in ("base", "sft", cfg.headline)}
        non_emb, total = cells.params(size)
        out[size] = SizeResult(
            non_embedding_params=non_emb,
            params=total,
            pretrain_tokens=cells.token_budget(size),
            model=cells.lm or cells.sizes[size].model_dump(),
            seeds=list(cfg.seeds),
            variants={v: mean_figures(r, ev.bootstrap, ev.seed) for v, r in runs.items()},
            summary=summary(runs, ev.bootstrap, ev.seed, aat=cfg.headline),
        )
    return out


# ---- ablations --------------------------------------------------------------------------------------
def forced(cfg: StudyConfig, v: str) -> bool:
    """Whether the ablations sample variant v's forced plans too."""
    return cfg.fidelity_variants is None or v in cfg.fidelity_variants


def _ablation_jobs(cells: Cells, cfg: StudyConfig) -> list[Job]:
    return [
        Job(cells.focus, s, v, fidelity=forced(cfg, v)) for v in compared(cfg) for s in cfg.ablation_seeds
    ]


def _ablations(cells: Cells, cfg: StudyConfig, scores) -> Ablations:
    ev, names = cfg.base.evaluate, compared(cfg)
    runs = {
        v: [scores(Job(cells.focus, s, v, fidelity=forced(cfg, v))) for s in cfg.ablation_seeds]
        for v in names
    }
    return Ablations(
        size=cells.focus,
        seeds=list(cfg.ablation_seeds),
        variants={v: mean_figures(r, ev.bootstrap, ev.seed) for v, r in runs.items()},
        summary={
            v: summary(runs, ev.bootstrap, ev.seed, aat=v)
            for v in names
            if v not in ("base", "sft") and {"base", "sft"} <= set(runs)
        },
        custom_variants=cfg.variants,
        forced_topics=list(cfg.base.sample.forced_topics),
        classifier=cells.classifier_figures(),
    )


# ---- the SFT-entropy study ----------------------------------------------------------------------------
def _entropy_jobs(cells: Cells, cfg: StudyConfig) -> list[Job]:
    jobs = [Job(cells.focus, s, "base") for s in cfg.entropy_seeds]
    for k in cfg.entropy_counts:
        cats = tuple(cfg.entropy_categories[:k])
        jobs += [Job(cells.focus, s, v, categories=cats) for v in ("sft", "aat") for s in cfg.entropy_seeds]
    return jobs


def _entropy(cells: Cells, cfg: StudyConfig, scores) -> EntropyStudy:
    points = []

    def mean(rows, section, key):
        return float(np.mean([x[section][key] for x in rows]))

    for k in cfg.entropy_counts:
        cats = tuple(cfg.entropy_categories[:k])
        examples, _ = cells.make_sft_set(cats)
        per = {}
        for v in ("sft", "aat"):
            r = [scores(Job(cells.focus, s, v, categories=cats)) for s in cfg.entropy_seeds]
            per[v] = VariantEntropy(
                attribute_entropy=mean(r, "diversity", "attribute_entropy"),
                embedding_distance=mean(r, "diversity", "embedding_distance"),
                style_adherence=mean(r, "quality", "style_adherence"),
            )
        data_entropy = entropy([e["category"] for e in examples])
        points.append(EntropyPoint(k=k, categories=list(cats), sft_data_entropy=data_entropy, **per))
    base = [scores(Job(cells.focus, s, "base")) for s in cfg.entropy_seeds]
    x = [p.sft_data_entropy for p in points]
    return EntropyStudy(
        size=cells.focus,
        seeds=list(cfg.entropy_seeds),
        base_attribute_entropy=mean(base, "diversity", "attribute_entropy"),
        points=points,
        slope={v: slope(x, [getattr(p, v).attribute_entropy for p in points]) for v in ("sft", "aat")},
    )


# ---- the frontier ---------------------------------------------------------------------------------
def _frontier_jobs(cells: Cells, cfg: StudyConfig) -> list[Job]:
    return [
        Job(cells.focus, s, v, temperature=t)
        for v in cfg.frontier_variants
        for t in cfg.temperatures
        for s in cfg.frontier_seeds
    ]


def _frontier(cells: Cells, cfg: StudyConfig, scores) -> Frontier:
    points = {}
    for v in cfg.frontier_variants:
        points[v] = []
        for t in cfg.temperatures:
            fig = mean_figures([scores(Job(cells.focus, s, v, temperature=t)) for s in cfg.frontier_seeds])
            points[v].append({"temperature": t, **fig.diversity, **fig.quality})
    return Frontier(size=cells.focus, seeds=list(cfg.frontier_seeds), points=points)


# ---- prompt sets -----------------------------------------------------------------------------------
def _trio(cfg: StudyConfig) -> tuple[str, str, str]:
    return ("base", "sft", cfg.headline)


def _set_name(cfg: StudyConfig, name: str) -> str:
    return "" if name == cfg.prompts else name  # the study's own set: the same jobs as the other parts


def _set_jobs(cells: Cells, cfg: StudyConfig) -> list[Job]:
    return [
        Job(cells.focus, s, v, prompts=_set_name(cfg, name))
        for name in cfg.prompt_sets
        for v in _trio(cfg)
        for s in cfg.seeds
    ]


def _sets(cells: Cells, cfg: StudyConfig, scores) -> dict[str, PromptSet]:
    ev, head, out = cfg.base.evaluate, cfg.headline, {}
    for name in cfg.prompt_sets:
        runs = {
            v: [scores(Job(cells.focus, s, v, prompts=_set_name(cfg, name))) for s in cfg.seeds]
            for v in _trio(cfg)
        }
        out[name] = PromptSet(
            n_prompts=runs["base"][0]["n_prompts"],
            variants={v: mean_figures(r, ev.bootstrap, ev.seed) for v, r in runs.items()},
            summary=summary(runs, ev.bootstrap, ev.seed, aat=head),
            differences={
                m: paired_difference(runs[head], runs["sft"], m, ev.bootstrap, ev.seed)
                for m in [*SUMMARY_METRICS, "content_nll", *RATES]  # rates: in cells scored since 2026-12-06
                if all(m in r["per_prompt"] for r in (*runs[head], *runs["sft"]))
            },
        )
    return out


# ---- the dose-response ---------------------------------------------------------------------------------
def _dose_jobs(cells: Cells, cfg: StudyConfig) -> list[Job]:
    jobs = [Job(cells.focus, s, "base") for s in cfg.dose_seeds]
    for e in cfg.dose_epochs:
        jobs += [Job(cells.focus, s, v, epochs=e) for v in ("sft", cfg.headline) for s in cfg.dose_seeds]
    return jobs


def _dose(cells: Cells, cfg: StudyConfig, scores) -> DoseResponse:
    ev, points = cfg.base.evaluate, []
    base = [scores(Job(cells.focus, s, "base")) for s in cfg.dose_seeds]
    for e in cfg.dose_epochs:
        runs = {"base": base}
        runs.update(
            {
                v: [scores(Job(cells.focus, s, v, epochs=e)) for s in cfg.dose_seeds]
                for v in ("sft", cfg.headline)
            }
        )
        sm = summary(runs, ev.bootstrap, ev.seed, aat=cfg.headline)
        figs = {v: mean_figures(r) for v, r in runs.items() if v != "base"}
        points.append({
            "epochs": e,
            "summary": {m: x.dump() for m, x in sm.items()},
            "variants": {v: {**f.diversity, **{k: f.quality.get(k) for k in ("style_adherence", "content_nll")}}
                         for v, f in figs.items()},
        })  # fmt: skip
    return DoseResponse(size=cells.focus, seeds=list(cfg.dose_seeds), points=points)


# ---- plan following, with power -------------------------------------------------------------------
def _following_jobs(cells: Cells, cfg: StudyConfig) -> list[Job]:
    return [j for j in _ablation_jobs(cells, cfg) if cells.variants[j.name].anchored]


def _following(cells: Cells, cfg: StudyConfig, scores) -> dict:
    """Forced plans `topic:<t>`: per anchored variant, the share of responses in the forced topic
    with its Wilson interval (pooled over seeds and prompts), the same topic's share among the
    variant's own free samples (the unforced rate), and the lift between them; then the writer
    after anchored SFT against before it (the headline minus `annotated`), and every other forced
    variant against the headline (minus the headline), with CIs resampling seeds, then prompts."""
    ev, sft_topics = cfg.base.evaluate, set(cfg.base.sft_data.categories)
    out: dict = {"variants": {}}
    per_prompt = {}
    for v in dict.fromkeys(j.name for j in _following_jobs(cells, cfg)):
        runs = [scores(Job(cells.focus, s, v, fidelity=forced(cfg, v))) for s in cfg.ablation_seeds]
        if "forced_counts" not in runs[0].get("anchoring", {}):
            continue
        counts: dict = {}
        for r in runs:
            for t, (k, n) in r["anchoring"]["forced_counts"].items():
                counts[t] = [counts.get(t, [0, 0])[0] + k, counts.get(t, [0, 0])[1] + n]
        free_n = sum(r["n_samples"] for r in runs)
        unforced = {t: sum(r["label_counts"].get(t, 0) for r in runs) / free_n for t in counts}
        by_topic = {
            t: {"rate": k / n, "wilson95": wilson(k, n), "unforced": unforced[t], "lift": k / n - unforced[t]}
            for t, (k, n) in counts.items()
        }
        other = [t for t in counts if t not in sft_topics]
        k, n = sum(counts[t][0] for t in other), sum(counts[t][1] for t in other)
        out["variants"][v] = {
            "forced_other": k / n if n else None,
            "forced_other_wilson95": wilson(k, n) if n else None,
            "unforced_other": float(np.mean([unforced[t] for t in other])) if other else None,
            "lift_other": (k / n - float(np.mean([unforced[t] for t in other]))) if n else None,
            "samples_per_prompt_and_topic": cfg.base.sample.forced_samples,
            "by_topic": by_topic,
        }
        per_prompt[v] = [r["anchoring"]["forced_other_per_prompt"] for r in runs]  # a seed's {prompt: rate}

    def paired(a: str, b: str) -> dict:  # a minus b, prompt by prompt (by name) and seed by seed
        pids = sorted(per_prompt[a][0])
        if any(sorted(x) != pids for x in per_prompt[a] + per_prompt[b]):
            raise ValueError(f"forced plans of {a} and {b} were scored on different prompts")
        rows = {v: [{"per_prompt": {"forced": [x[p] for p in pids]}} for x in per_prompt[v]] for v in (a, b)}
        return paired_difference(rows[a], rows[b], "forced", ev.bootstrap, ev.seed)

    head = cfg.headline
    if head in per_prompt and "annotated" in per_prompt:
        out["after_minus_before"] = {"after": head, "before": "annotated", **paired(head, "annotated")}
    # other post-trainings' writers against the headline's (not the headline's own model sampled otherwise)
    others = [v for v in per_prompt if v not in (head, "annotated") and cells.variants[v].model_name != head]
    if head in per_prompt and others:
        out["minus_headline"] = {v: {"headline": head, **paired(v, head)} for v in others}
    return out


PARTS = (  # in the order they run: the headline on every prompt set first, the mechanism next
    Part("scaling", "sizes", lambda cfg: True, _scaling_jobs, _scaling),
    Part("prompt_sets", "prompt_sets", lambda cfg: bool(cfg.prompt_sets), _set_jobs, _sets),
    Part("ablations", "ablations", lambda cfg: True, _ablation_jobs, _ablations),
    Part(
        "plan_following",
        "plan_following",
        lambda cfg: bool(cfg.base.sample.forced_topics),
        _following_jobs,
        _following,
    ),  # fmt: skip
    Part("dose", "dose", lambda cfg: bool(cfg.dose_epochs), _dose_jobs, _dose),
    Part("entropy", "entropy_study", lambda cfg: bool(cfg.entropy_counts), _entropy_jobs, _entropy),
    Part("frontier", "frontier", lambda cfg: bool(cfg.temperatures), _frontier_jobs, _frontier),
)


def parts(cfg: StudyConfig) -> list[Part]:
    """The parts a recipe asks for, in the order they run."""
    return [p for p in PARTS if p.enabled(cfg)]


def pretraining_runs(cells: Cells, cfg: StudyConfig) -> dict[str, int]:
    """How many distinct pretrainings the plan's jobs need, per size: what a time budget plans for."""
    seen: set = set()
    for part in parts(cfg):
        for job in part.jobs(cells, cfg):
            own = cells.variants[cells.variants[job.name].model_name]
            seen.add((job.size, job.seed, own.data, json.dumps(own.pretrain, sort_keys=True)))
    return {z: sum(1 for s in seen if s[0] == z) for z in cells.sizes}
