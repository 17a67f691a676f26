"""The plan: each part of a study defined once, with the jobs it needs (a variant at a size and
seed) and how their scores become its section of the results. The study's run, the GPU run's
training and sampling (anchorlm.study.remote) and its time budget (which pretrainings the jobs need)
all read this list; a recipe leaves a part out with an empty list (`entropy_counts: []`).

  scaling     base / sft / the headline AAT variant at every size and seed; collapse, gap closed
  ablations   at the focus size, every variant of `ablations` and of the recipe's `variants`, with
              anchor fidelity (free and forced plans) for the anchored ones
  entropy     SFT sets of equal size from 1, 2, 4, ... categories; output against data entropy
  frontier    `frontier_variants` sampled at several temperatures
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from anchorlm.metrics.diversity import entropy
from anchorlm.study.aggregate import mean_figures, slope, summary
from anchorlm.study.cells import Cells, Job
from anchorlm.study.config import StudyConfig
from anchorlm.study.results import (
    Ablations,
    EntropyPoint,
    EntropyStudy,
    Frontier,
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
            variants={v: mean_figures(r) for v, r in runs.items()},
            summary=summary(runs, ev.bootstrap, ev.seed, aat=cfg.headline),
        )
    return out


# ---- ablations --------------------------------------------------------------------------------------
def _ablation_jobs(cells: Cells, cfg: StudyConfig) -> list[Job]:
    return [Job(cells.focus, s, v, fidelity=True) for v in compared(cfg) for s in cfg.ablation_seeds]


def _ablations(cells: Cells, cfg: StudyConfig, scores) -> Ablations:
    ev, names = cfg.base.evaluate, compared(cfg)
    runs = {v: [scores(Job(cells.focus, s, v, fidelity=True)) for s in cfg.ablation_seeds] for v in names}
    return Ablations(
        size=cells.focus,
        seeds=list(cfg.ablation_seeds),
        variants={v: mean_figures(r) for v, r in runs.items()},
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


PARTS = (
    Part("scaling", "sizes", lambda cfg: True, _scaling_jobs, _scaling),
    Part("ablations", "ablations", lambda cfg: True, _ablation_jobs, _ablations),
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
