"""The study's results as types: what a study computes, what its report renders, and their JSON
form (`docs/<results_name>.json`), read back by the same library as the configs (pydantic).

A variant's figures keep `anchorlm evaluate`'s layout (diversity, quality and anchoring maps keyed
by metric name), so one results file reads like the other; everything around them (sizes,
ablations, the entropy study, the frontier, the bar, compute) is a model. `to_json` writes the
layout the results files have always had; `StudyResults.from_json` reads one back and names the
field that is missing or of the wrong kind.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Result(BaseModel):
    """A part of the results: unknown keys refused; optional parts (default None) left out of the
    JSON when absent, as the results files have always had them."""

    model_config = ConfigDict(extra="forbid")

    def dump(self) -> dict:
        out = {}
        for name, info in type(self).model_fields.items():
            v = getattr(self, name)
            if v is None and info.default is None:
                continue
            out[name] = _plain(v)
        return out


def _plain(v):
    if isinstance(v, Result):
        return v.dump()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


class Figures(Result):
    """One variant's figures, the mean over its run seeds (as `anchorlm evaluate` writes them)."""

    diversity: dict[str, float | None]
    quality: dict[str, float | list | None]  # content_nll_ci95: a 95% CI
    n_samples: int
    n_prompts: int
    n_seeds: int = 1
    anchoring: dict | None = None  # anchored variants: plan and forced-plan figures
    examples: list[dict] = Field(default_factory=list)  # a few samples shown beside the numbers
    per_seed: dict[str, dict[str, list[float | None]]] | None = None  # section -> metric -> one value a seed
    ci95: dict[str, list | None] | None = None  # per-prompt figures: 95% CI over seeds and prompts
    ceiling: dict | None = None  # attribute entropy of as many real held-out documents as samples


class MetricSummary(Result):
    """The paper's summary figures of one metric (anchorlm.metrics.summary), with 95% CIs."""

    collapse: dict[str, float | None]  # {'sft': base - sft, 'aat': base - aat}
    # None (JSON null): infinite (no AAT collapse: gap closed >= 1) or undefined (no SFT collapse)
    collapse_reduction: float | None
    gap_closed: float | None  # None: undefined (base and SFT equal)
    collapse_ci95: dict[str, list | None]
    collapse_reduction_ci95: list | None
    gap_closed_ci95: list | None
    per_seed_gap_closed: list[float | None] = Field(default_factory=list)


class SizeResult(Result):
    """Scaling: base, SFT and the headline AAT variant at one model size."""

    non_embedding_params: int
    params: int
    pretrain_tokens: int
    model: str | dict  # the published model continued from, or the size's ModelConfig
    seeds: list[int]
    variants: dict[str, Figures]
    summary: dict[str, MetricSummary]


class Ablations(Result):
    """Every compared variant at the focus size, with anchor fidelity for the anchored ones."""

    size: str
    seeds: list[int]
    variants: dict[str, Figures]
    summary: dict[str, dict[str, MetricSummary]]  # variant -> metric -> its figures as the AAT side
    custom_variants: list[dict] = Field(default_factory=list)
    forced_topics: list[str] = Field(default_factory=list)
    classifier: dict = Field(default_factory=dict)


class VariantEntropy(Result):
    attribute_entropy: float
    embedding_distance: float
    style_adherence: float


class EntropyPoint(Result):
    k: int
    categories: list[str]
    sft_data_entropy: float
    sft: VariantEntropy
    aat: VariantEntropy


class EntropyStudy(Result):
    """SFT sets from 1, 2, 4, ... categories: output entropy against the SFT data's entropy."""

    size: str
    seeds: list[int]
    base_attribute_entropy: float
    points: list[EntropyPoint]
    slope: dict[str, float | None]


class Frontier(Result):
    """Variants sampled at several temperatures: {variant: [{temperature, figures...}]}."""

    size: str
    seeds: list[int]
    points: dict[str, list[dict]]


class PromptSet(Result):
    """base, sft and the headline variant sampled on one prompt set at the scaling seeds."""

    n_prompts: int
    variants: dict[str, Figures]
    summary: dict[str, MetricSummary]
    differences: dict[str, dict]  # metric -> {difference: headline - sft, ci95}


class DoseResponse(Result):
    """sft and the headline variant post-trained for several numbers of epochs."""

    size: str
    seeds: list[int]
    points: list[dict]  # {epochs, summary: {metric: MetricSummary}, variants: {v: {metric: value}}}


class Bar(Result):
    largest_size: str
    checks: dict[str, bool]
    met: bool


class Compute(Result):
    minutes_this_invocation: float
    cells_run_this_invocation: int
    invocations_that_ran_cells: list[dict]
    versions: dict[str, str]
    made_on: list[dict] | None = None  # [{where, precision, cells}]: training and sampling
    scored_on: str | None = None  # the machine that scored the samples
    code: dict | None = None  # anchorlm's version, git commit, dirty
    cells_from_other_code: list[dict] | None = None  # cells reused though other code made them


DERIVED = ("variants", "summary")  # written beside `ablations` for evaluate's layout; not fields


class StudyResults(Result):
    title: str
    rule: dict  # {tokens_per_param, text}
    focus_size: str
    headline: str  # the anchored variant the scaling study, the summary and the bar judge
    labels: dict[str, str]
    sizes: dict[str, SizeResult]
    ablations: Ablations
    entropy_study: EntropyStudy | None = None
    frontier: Frontier | None = None
    bar: Bar | None = None
    compute: Compute | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    device: str = ""
    protocol: dict | None = None  # {n_seeds, prompt_sets: {name: prompts}, document}
    prompt_sets: dict[str, PromptSet] | None = None
    dose: DoseResponse | None = None
    mechanism: list[dict] | None = None  # rows: training, inference, figures
    plan_following: dict | None = None  # forced plans: rates, Wilson intervals, lift, before/after

    @property
    def largest(self) -> SizeResult:
        return max(self.sizes.values(), key=lambda s: s.non_embedding_params)

    @property
    def variants(self) -> dict[str, Figures]:
        """The focus size's figures, as `anchorlm evaluate` writes them."""
        return self.ablations.variants

    @property
    def summary(self) -> dict[str, MetricSummary]:
        """The largest size's summary figures."""
        return self.largest.summary

    def to_json(self) -> dict:
        out = {}
        for k, v in self.dump().items():
            out[k] = v
            if k == "ablations":  # beside them, as evaluate's results.json has them
                out["variants"] = _plain(self.variants)
                out["summary"] = _plain(self.summary)
        return out

    @classmethod
    def from_json(cls, data: dict, where: str = "results") -> StudyResults:
        """Read a results JSON back; a ValueError names the first field that is missing or of the
        wrong kind (`results.json: ablations.variants.sft.quality: field required`)."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
        try:
            return cls.model_validate({k: v for k, v in data.items() if k not in DERIVED})
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"{where}: {loc}: {err['msg'].lower()}") from None
