"""The named variants of the demo and the study, defined once: what each trains, from what, and
how it samples.

A variant is a pretrained model (plain or annotated data, with pretraining overrides), optionally
post-trained (with post-training overrides), sampled plain or anchored (with sampling overrides).
Variants that differ only in how they sample share their model (`model` names the variant whose
post-trained model they use). A recipe adds its own variants, or changes these, with entries
``{name, like, label, data, pretrain, posttrain, sample, anchored, model}`` (`like`: the registry
entry it starts from).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

ANCHORED = {"method": "anchored"}


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    data: str  # pretraining data: 'plain' or 'annotated'
    posttrain: dict | None = None  # post-training overrides; None: the pretrained model itself
    anchored: bool = False  # sampled anchored (the model writes its annotation first)
    sample: dict = field(default_factory=dict)  # sampling overrides
    pretrain: dict = field(default_factory=dict)  # pretraining overrides (e.g. annotation_dropout)
    model: str = ""  # the variant whose model this one samples ('' = its own)

    @property
    def model_name(self) -> str:
        return self.model or self.name


REGISTRY = {
    v.name: v
    for v in (
        Variant("base", "base (plain pretrained)", "plain"),
        Variant("annotated", "annotated pretrained, before post-training", "annotated", anchored=True),
        Variant("sft", "SFT", "plain", {"method": "sft"}),
        Variant("aat", "AAT (anchored post-training, i.i.d. anchors)", "annotated", ANCHORED, True),
        Variant("aat_on_plain", "(a) anchored SFT on the plain-pretrained model", "plain", ANCHORED, True),
        Variant(
            "aat_no_annotation", "(b) AAT sampled without its annotation", "annotated", ANCHORED, model="aat"
        ),
        Variant(
            "aat_unmasked",
            "(c) anchored SFT, annotation not masked",
            "annotated",
            {**ANCHORED, "mask_annotation": False},
            True,
        ),
        Variant(
            "aat_stratified",
            "AAT, anchor-stratified sampling",
            "annotated",
            ANCHORED,
            True,
            sample={"anchors": "stratified"},
            model="aat",
        ),
        Variant("gem", "GEM (plain model)", "plain", {"method": "sft", "loss": "gem", "gem_beta": 0.7}),
        Variant("replay", "SFT + pretraining replay", "plain", {"method": "sft", "replay_fraction": 0.5}),
        Variant(
            "aat_replay",
            "AAT + anchored replay (annotated pretraining chunks as anchored rows)",
            "annotated",
            {**ANCHORED, "anchored_replay": 0.5},
            True,
        ),
        Variant(
            "sft_replay",
            "SFT + the same replay rows without annotations (control of aat_replay)",
            "plain",
            {"method": "sft", "anchored_replay": 0.5},
        ),
        Variant(
            "aat_guided",
            "AAT + anchor guidance (g = 1.5)",
            "annotated",
            ANCHORED,
            True,
            sample={"guidance_scale": 1.5},
            model="aat",
        ),
        Variant(
            "aat_dropout",
            "AAT on annotated pretraining with 30% of the annotations dropped",
            "annotated",
            ANCHORED,
            True,
            pretrain={"annotation_dropout": 0.3},
        ),
        Variant(
            "aat_dropout_guided",
            "AAT with annotation dropout + anchor guidance (g = 1.5)",
            "annotated",
            ANCHORED,
            True,
            sample={"guidance_scale": 1.5},
            pretrain={"annotation_dropout": 0.3},
            model="aat_dropout",
        ),
        Variant(
            "aat_mask_all",
            "AAT, the whole annotation masked (the paper's default: values only in 0.3%)",
            "annotated",
            {**ANCHORED, "value_mask_fraction": 0.003},
            True,
        ),
        Variant(
            "aat_constant",
            "anchored SFT with one constant, content-free annotation (topic:reply) on every example",
            "annotated",
            {**ANCHORED, "constant_annotation": "topic:reply"},
            True,
        ),
        Variant(
            "aat_sft_plans",
            "AAT sampled with plans drawn from the SFT data's annotations",
            "annotated",
            ANCHORED,
            True,
            sample={"anchors": "given"},
            model="aat",
        ),
    )
}
# what the mechanism table says of each variant: (training, inference); a training's twins (no plan, the
# SFT data's plans) carry the label of the training they sample
TRAININGS = {
    "aat": "anchored SFT, annotation values masked (keys in the loss)",
    "aat_mask_all": "anchored SFT, whole annotation masked (the paper's default)",
    "aat_unmasked": "anchored SFT, annotation in the loss",
    "aat_constant": "anchored SFT, one constant content-free annotation",
    "aat_on_plain": "anchored SFT on the plain continuation (values masked)",
}
for _t in [t for t in TRAININGS if t != "aat"]:  # the mechanism's cross: each
    for _v in (  # training sampled as aat's model is: without its plan, and with the SFT data's plans
        dataclasses.replace(REGISTRY[_t], name=f"{_t}_no_annotation", label=f"{_t} sampled without its annotation",
                            anchored=False, model=_t),
        dataclasses.replace(REGISTRY[_t], name=f"{_t}_sft_plans", label=f"{_t} sampled with the SFT data's plans",
                            sample={"anchors": "given"}, model=_t),
    ):  # fmt: skip
        REGISTRY[_v.name] = _v
MECHANISM = {
    "sft": ("SFT on the plain continuation", "no plan"),
    **{
        v: (label, inference)
        for t, label in TRAININGS.items()
        for v, inference in (
            (t, "own plan"),
            (f"{t}_no_annotation", "no plan"),
            (f"{t}_sft_plans", "plans drawn from the SFT data"),
        )
    },
    "annotated": ("annotated continuation, no post-training", "own plan"),
    "base": ("plain continuation, no post-training", "no plan"),
}
SUMMARY_TRIO = ("base", "sft", "aat")  # the variants the paper's summary figures compare

FIELDS = {f.name for f in dataclasses.fields(Variant)}


def custom(entries: list[dict], where: str = "variants") -> dict[str, Variant]:
    """The registry with a recipe's entries added or changed (each may start `like` another)."""
    out = dict(REGISTRY)
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "name" not in e:
            raise ValueError(f"{where}[{i}] must be a mapping with a 'name'")
        unknown = sorted(set(e) - FIELDS - {"like"})
        if unknown:
            raise ValueError(
                f"{where}[{i}] ({e['name']}): unknown keys {unknown}; valid: {sorted(FIELDS | {'like'})}"
            )
        like = e.get("like", e["name"] if e["name"] in out else "aat")
        if like not in out:
            raise ValueError(
                f"{where}[{i}] ({e['name']}): like {like!r} is not a variant; known: {sorted(out)}"
            )
        start = out[like]
        fields = {k: v for k, v in e.items() if k != "like"}
        for k in ("posttrain", "sample", "pretrain"):  # overrides add to the entry they start from
            if k in fields and getattr(start, k) is not None:
                fields[k] = {**getattr(start, k), **(fields[k] or {})}
        if set(fields) <= {"name", "label", "sample"}:  # it only samples differently: the same model
            fields["model"] = start.model_name
        else:
            fields.setdefault("model", "")
        if "label" not in fields:
            fields["label"] = start.label if start.name == e["name"] else e["name"]
        v = dataclasses.replace(start, **fields)
        if v.data not in ("plain", "annotated"):
            raise ValueError(f"{where}[{i}] ({v.name}): data must be 'plain' or 'annotated', not {v.data!r}")
        out[v.name] = v
    for v in out.values():
        if v.model and v.model not in out:
            raise ValueError(f"variant {v.name}: model {v.model!r} is not a variant")
    return out
