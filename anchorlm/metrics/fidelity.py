"""Anchor fidelity: does the writer follow the plan it writes (free plans), and a plan it is given
(forced plans)? Both read the attribute classifier's labels of the responses."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from anchorlm.format import make_tag
from anchorlm.metrics.diversity import entropy


def _topic(tags) -> str | None:
    return next((t[6:] for t in tags or [] if t.startswith("topic:")), None)


def as_topic(category: str) -> str:
    """A corpus category as the metadata annotator writes it in `topic:` (spaces to `_`, unsafe
    characters dropped: "Computer Science" -> Computer_Science), so labels and plans compare."""
    try:
        return make_tag("topic", str(category))[6:]
    except ValueError:  # nothing tag-safe in it: no annotation can name it
        return str(category)


def anchoring(rows: list[dict], labels: list[str], categories: list[str] | None = None) -> dict:
    """Does the writer follow the plan it writes? For free anchored samples: the entropy of the
    sampled annotations' topics per prompt (`plan_entropy`: what the plan asks for), the share
    of responses whose classified category is their annotation's topic, over the samples whose
    annotation names a topic (`free_agreement`), and, given the corpus's categories, the share of
    samples whose own annotation names one of them (`plan_topic_in_corpus`): a plan with an invented
    topic (`topic:books` where no document had it) may be well-formed but cannot be followed as
    the classifier measures it. Plans given to the model (`anchors: given`) are not its own: no
    such share for them."""
    topics = [_topic(r.get("annotation")) for r in rows]
    labels = [as_topic(lab) for lab in labels]
    by_prompt = defaultdict(list)
    for r, tp in zip(rows, topics):
        by_prompt[(r["prompt_id"], r.get("seed", 0))].append(tp or "(none)")
    with_topic = [(tp, lab) for tp, lab in zip(topics, labels) if tp]
    own = categories is not None and all(r.get("anchors", "iid") != "given" for r in rows)
    corpus = {as_topic(c) for c in categories or ()}
    return {
        "plan_entropy": float(np.mean([entropy(v) for v in by_prompt.values()])),
        "free_agreement": float(np.mean([tp == lab for tp, lab in with_topic])) if with_topic else None,
        "with_topic": len(with_topic) / len(rows),
        "plan_topic_in_corpus": float(np.mean([tp in corpus for tp in topics])) if own else None,
    }


def forced_plan(rows: list[dict], labels: list[str], sft_topics, per_category: dict) -> dict:
    """Does the writer follow a plan it is given? Rows sampled with the annotation's start fixed to
    `topic:<t>` (their `annotation_prefix`): the share of responses the attribute classifier puts
    in t, over topics of the SFT data (`forced_sft`) and over the others (`forced_other`), beside
    the classifier's own held-out accuracy on real documents of the same topics (its "ceiling": a
    reference, which text more plainly on topic than the corpus can exceed)."""
    hits: dict = defaultdict(list)
    per_prompt: dict = defaultdict(list)  # other topics' hits by the prompt they were forced on
    labels = [as_topic(lab) for lab in labels]
    sft_topics = [as_topic(t) for t in sft_topics]
    per_category = {as_topic(c): acc for c, acc in per_category.items()}
    for r, lab in zip(rows, labels):
        t = _topic(r.get("annotation_prefix"))
        if t is None:
            raise ValueError(
                f"forced-plan sample of prompt {r.get('prompt_id')!r} has no topic in annotation_prefix"
            )
        hits[t].append(lab == t)
        if t not in set(sft_topics):
            per_prompt[str(r["prompt_id"]).rsplit("|", 1)[0]].append(lab == t)
    by_topic = {t: float(np.mean(v)) for t, v in sorted(hits.items())}
    sft = [t for t in by_topic if t in set(sft_topics)]
    other = [t for t in by_topic if t not in set(sft_topics)]

    def pooled(ts):
        k, n = sum(sum(hits[t]) for t in ts), sum(len(hits[t]) for t in ts)
        return wilson(k, n) if n else None

    def mean(xs, table):
        vals = [table[t] for t in xs if table.get(t) is not None]
        return float(np.mean(vals)) if vals else None

    return {
        "forced_sft": mean(sft, by_topic),
        "forced_other": mean(other, by_topic),
        "classifier_accuracy": mean(list(by_topic), per_category),
        "classifier_accuracy_sft": mean(sft, per_category),
        "classifier_accuracy_other": mean(other, per_category),
        "forced_by_topic": by_topic,
        "forced_counts": {t: [int(sum(v)), len(v)] for t, v in sorted(hits.items())},
        "forced_sft_wilson95": pooled(sft),
        "forced_other_wilson95": pooled(other),
        "forced_other_per_prompt": {p: float(np.mean(v)) for p, v in sorted(per_prompt.items())},
        "forced_samples": len(rows),
    }


def wilson(k: int, n: int, z: float = 1.959964) -> list[float]:
    """The Wilson score interval (95%) of a proportion k / n."""
    p = k / n
    d = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / d
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [float(max(0.0, mid - half)), float(min(1.0, mid + half))]
