"""`StudyConfig`: a study of the method as a recipe over the plan (anchorlm.study.plan): which sizes
and seeds, which parts, which variants; the pipeline's own sections sit under `base`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from anchorlm.config.base import Section, build, check_out_dir, f, load_recipe
from anchorlm.config.stages import ModelConfig, StagesConfig
from anchorlm.variants import custom


class StudyConfig(Section):
    """`anchorlm reproduce`: the paper's findings as a study of cached cells."""

    out_dir: str = f("runs/reproduce", "where every cell (model, samples, scores) is cached")
    docs_dir: str = f("docs", "where the results page, its JSON and the plots are written")
    results_name: str = f("results", "file name of the results page and JSON (<name>.md, <name>.json)")
    title: str = f("anchorlm reproduction", "heading of the results page")
    base: StagesConfig = Field(default_factory=StagesConfig, description="every stage's settings")
    sizes: list[dict[str, Any]] = f(
        [],
        "model sizes: {name, hidden_size, num_layers, num_heads, intermediate_size}; leave empty when "
        "base.pretrain.init_from names a published model to continue (one size)",
    )
    prompts: str = f(
        "",
        "the prompt set every part samples: '' (the SFT data's held-out instructions), a shipped set "
        "(instructions, noveltybench) or a JSONL file",
    )
    prompt_sets: list[str] = f(
        [], "further prompt sets on which base, sft and the headline variant are sampled at the scaling seeds"
    )
    samples_per_set: dict[str, int] = f({}, "samples per prompt for a set, instead of base.sample.n_samples")
    dose_epochs: list[float] = f(
        [], "the dose-response: post-training epochs at which sft and the headline are compared ([] = none)"
    )
    dose_seeds: list[int] = f([0], "run seeds of the dose-response")
    keep_samples: bool = f(
        False, "copy every samples file the results read to docs (gzipped JSONL), for anyone to read"
    )
    tokens_per_param: float = f(2.0, "pretraining tokens per model parameter (embeddings included)", above=0)
    seeds: list[int] = f(
        [0, 1, 2], "run seeds of the scaling study: each seeds pretraining, post-training, sampling"
    )
    headline: str = f("aat", "the anchored variant the scaling study, the summary and the bar judge")
    focus_size: str = f("", "size for ablations, stratified sampling, entropy study, frontier ('' = largest)")
    ablations: list[str] = f(
        [
            "base",
            "sft",
            "aat",
            "annotated",
            "aat_on_plain",
            "aat_no_annotation",
            "aat_unmasked",
            "aat_stratified",
        ],
        "variants (anchorlm.variants) compared at the focus size, with anchor fidelity for anchored ones",
    )
    variants: list[dict[str, Any]] = f(
        [], "the recipe's own variants, also compared at the focus size: {name, like, posttrain, sample, ...}"
    )
    ablation_seeds: list[int] = f([0, 1, 2], "run seeds of the ablations")
    fidelity_variants: list[str] | None = f(
        None, "anchored variants whose forced plans are sampled (None = every anchored one compared)"
    )
    entropy_categories: list[str] = f([], "categories in the order the entropy study adds them")
    entropy_counts: list[int] = f(
        [1, 2, 4, 8, 16],
        "SFT sets drawn from the first k categories, all of equal size ([] = no entropy study)",
    )
    entropy_seeds: list[int] = f([0], "run seeds of the entropy study")
    temperatures: list[float] = f(
        [0.6, 0.8, 1.0, 1.2, 1.4], "sampling temperatures of the frontier ([] = none)"
    )
    frontier_variants: list[str] = f(
        ["sft", "aat", "gem", "replay"], "variants sampled at every frontier temperature"
    )
    frontier_seeds: list[int] = f([0], "run seeds of the frontier")

    @field_validator("out_dir")
    @classmethod
    def _out(cls, v: str) -> str:
        check_out_dir(v, "out_dir")
        return v

    @model_validator(mode="after")
    def _check(self):
        names = []
        for i, s in enumerate(self.sizes):
            if "name" not in s:
                raise ValueError(f"sizes[{i}] must be a mapping with a 'name' and model fields")
            build(ModelConfig, {k: v for k, v in s.items() if k != "name"}, f"sizes[{i}]")
            names.append(s["name"])
        if len(set(names)) != len(names):
            raise ValueError(f"sizes: names must be distinct, got {names}")
        if self.base.pretrain.init_from and self.sizes:
            raise ValueError("sizes must be empty when base.pretrain.init_from names the model to continue")
        if not self.base.pretrain.init_from and not self.sizes:
            raise ValueError("sizes is empty: list model sizes, or set base.pretrain.init_from")
        if self.focus_size and self.focus_size not in names:
            raise ValueError(f"focus_size {self.focus_size!r} is not one of sizes {names}")
        if max(self.entropy_counts, default=0) > len(self.entropy_categories):
            raise ValueError("entropy_counts asks for more categories than entropy_categories lists")
        known = custom(self.variants)
        for key in ("ablations", "frontier_variants"):
            bad = [v for v in getattr(self, key) if v not in known]
            if bad:
                raise ValueError(f"{key}: unknown variants {bad}; known: {sorted(known)}")
        if self.headline not in known or not known[self.headline].anchored:
            raise ValueError(f"headline {self.headline!r} must name an anchored variant")
        return self


def load_study_config(path: str | Path, overrides: list[str] = ()) -> StudyConfig:
    """A study recipe; overrides as in `load_config` (``seeds=[0]``, ``base.sample.n_samples=8``)."""
    return load_recipe(path, list(overrides), StudyConfig)
