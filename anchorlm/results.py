"""The study's results as types: what `anchorlm reproduce` computes, what its report renders, and
their JSON form (`docs/<results_name>.json`).

A variant's figures keep `anchorlm evaluate`'s layout (diversity, quality and anchoring maps keyed
by metric name), so one results file reads like the other; everything around them (sizes,
ablations, the entropy study, the frontier, the bar, compute) is a dataclass. `to_json` writes the
layout the results files have always had; `StudyResults.from_json` reads one back and names the
field that is missing or of the wrong kind.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field


@dataclass
class Figures:
    """One variant's figures, the mean over its run seeds (as `anchorlm evaluate` writes them)."""

    diversity: dict[str, float]
    quality: dict[str, float | None]
    n_samples: int
    n_prompts: int
    n_seeds: int = 1
    anchoring: dict | None = None  # anchored variants: plan and forced-plan figures
    examples: list[dict] = field(default_factory=list)  # a few samples shown beside the numbers


@dataclass
class MetricSummary:
    """The paper's summary figures of one metric (anchorlm.metrics.summary), with 95% CIs."""

    collapse: dict[str, float]  # {'sft': base - sft, 'aat': base - aat}
    collapse_reduction: float | None  # None (JSON null): undefined (no AAT collapse, or 0/0)
    gap_closed: float | None  # None: undefined (base and SFT equal)
    collapse_ci95: dict[str, list | None]
    collapse_reduction_ci95: list | None
    gap_closed_ci95: list | None
    per_seed_gap_closed: list[float | None] = field(default_factory=list)


@dataclass
class SizeResult:
    """Scaling: base, SFT and the headline AAT variant at one model size."""

    non_embedding_params: int
    params: int
    pretrain_tokens: int
    model: str | dict  # the published model continued from, or the size's ModelConfig
    seeds: list[int]
    variants: dict[str, Figures]
    summary: dict[str, MetricSummary]


@dataclass
class Ablations:
    """Every compared variant at the focus size, with anchor fidelity for the anchored ones."""

    size: str
    seeds: list[int]
    variants: dict[str, Figures]
    summary: dict[str, dict[str, MetricSummary]]  # variant -> metric -> its figures as the AAT side
    custom_variants: list[dict] = field(default_factory=list)
    forced_topics: list[str] = field(default_factory=list)
    classifier: dict = field(default_factory=dict)


@dataclass
class VariantEntropy:
    attribute_entropy: float
    embedding_distance: float
    style_adherence: float


@dataclass
class EntropyPoint:
    k: int
    categories: list[str]
    sft_data_entropy: float
    sft: VariantEntropy
    aat: VariantEntropy


@dataclass
class EntropyStudy:
    """SFT sets from 1, 2, 4, ... categories: output entropy against the SFT data's entropy."""

    size: str
    seeds: list[int]
    base_attribute_entropy: float
    points: list[EntropyPoint]
    slope: dict[str, float | None]


@dataclass
class Frontier:
    """Variants sampled at several temperatures: {variant: [{temperature, figures...}]}."""

    size: str
    seeds: list[int]
    points: dict[str, list[dict]]


@dataclass
class Bar:
    largest_size: str
    checks: dict[str, bool]
    met: bool


@dataclass
class Compute:
    minutes_this_invocation: float
    cells_run_this_invocation: int
    invocations_that_ran_cells: list[dict]
    versions: dict[str, str]
    made_on: list[dict] | None = None  # [{where, precision, cells}]: training and sampling
    scored_on: str | None = None  # the machine that scored the samples
    code: dict | None = None  # anchorlm's version, git commit, dirty


@dataclass
class StudyResults:
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
    config: dict = field(default_factory=dict)
    device: str = ""

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
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None:
                continue
            out[f.name] = _plain(v)
            if f.name == "ablations":  # beside them, as evaluate's results.json has them
                out["variants"] = _plain(self.variants)
                out["summary"] = _plain(self.summary)
        return out

    @classmethod
    def from_json(cls, data: dict, where: str = "results") -> StudyResults:
        return _load(cls, data, where)


def _plain(v):
    if dataclasses.is_dataclass(v):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v) if not _skip(v, f)}
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _skip(obj, f) -> bool:
    """Optional parts left out of the JSON when absent (a plain variant has no anchoring)."""
    return getattr(obj, f.name) is None and f.default is None


def _load(tp, data, where: str):
    """`data` (parsed JSON) as type `tp`: dataclasses field by field, dicts and lists item by item."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        kinds = [a for a in args if a is not type(None)]
        if len(kinds) == 1:  # an optional part: its own error names the field
            return _load(kinds[0], data, where)
        for a in kinds:  # the first kind that reads it
            try:
                return _load(a, data, where)
            except ValueError:
                continue
        raise ValueError(
            f"{where}: {type(data).__name__} is none of {[getattr(a, '__name__', a) for a in kinds]}"
        )
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping for {tp.__name__}, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        kw = {}
        for f in dataclasses.fields(tp):
            if f.name in data:
                kw[f.name] = _load(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}: missing field '{f.name}' of {tp.__name__}")
        return tp(**kw)
    if origin is dict or tp is dict:
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
        vt = args[1] if args else typing.Any
        return {k: _load(vt, v, f"{where}.{k}") for k, v in data.items()}
    if origin is list or tp is list:
        if not isinstance(data, list):
            raise ValueError(f"{where}: expected a list, got {type(data).__name__}")
        it = args[0] if args else typing.Any
        return [_load(it, v, f"{where}[{i}]") for i, v in enumerate(data)]
    if tp is typing.Any:
        return data
    if tp is float:
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            return data
        raise ValueError(f"{where}: expected a number, got {type(data).__name__}")
    if tp in (int, str, bool):
        if isinstance(data, tp) and not (tp is int and isinstance(data, bool)):
            return data
        raise ValueError(f"{where}: expected {tp.__name__}, got {type(data).__name__}")
    if tp is type(None):
        if data is None:
            return None
        raise ValueError(f"{where}: expected null, got {type(data).__name__}")
    return data
