"""Every metric, defined once: its name, where it sits (diversity or quality), its column label,
which way is better, whether it gets the paper's summary figures (collapse and gap closed with
CIs), and how it is computed. The evaluator, the summaries, both reports and the plots read these
definitions; adding a metric is an entry here (and its test).

Diversity metrics are computed per prompt from its samples (texts as compared, their embeddings,
the attribute classifier's labels and its confidence in them) and averaged over prompts. Quality metrics are computed per
variant from a `Quality` context (its rows, texts, the SFT style, the reference LM's NLLs); one
returns `SKIP` where it does not apply (no `finished` field, a plain variant's annotations).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from anchorlm.data.style import follows_style, strip_style
from anchorlm.format import KEYS
from anchorlm.metrics.diversity import distinct_n, entropy, mean_pairwise_cosine_distance, vendi_score
from anchorlm.metrics.quality import mean_finite

SKIP = object()  # a quality metric that does not apply to these rows


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # the column heading in the reports
    section: str  # 'diversity' or 'quality'
    higher_is_better: bool | None
    compute: (
        Callable  # diversity: (texts, emb, labels, conf) -> float; quality: (Quality) -> float | None | SKIP
    )
    summary: bool = False  # collapse, collapse reduction and gap closed with bootstrap CIs
    paper: bool = False  # one of the paper's two diversity metrics
    column: bool = True  # a column of the variants table
    description: str = ""
    # a rate: (Quality) -> one 0/1 per row; `compute` is its mean, and the study pairs it per prompt
    per_response: Callable | None = None


class Quality:
    """What a variant's quality metrics read: its rows, the texts compared (the response without
    the SFT style's wrapper, cut to evaluate.max_words), the SFT style, the reference LM's NLL of the
    scored responses (`nll`) and of every response's content without the wrapper (`content_nll`)."""

    def __init__(self, rows: list[dict], texts: list[str], sft, nll: list[float], scored: int,
                 content_nll: list[float] | None = None):  # fmt: skip
        self.rows, self.texts, self.sft, self.nll, self.scored = rows, texts, sft, nll, scored
        self.content_nll = content_nll
        self.content = [strip_style(sft, r["response"]) for r in rows]
        self.styled = [follows_style(sft, r["response"]) for r in rows]
        self.has_finished = all("finished" in r for r in rows)
        self.done = [bool(r.get("finished")) for r in rows]
        self.anchored = "annotation_ok" in rows[0]
        self.annotations = [r.get("annotation") or [] for r in rows]


def _style_finished(q: Quality):
    if not q.has_finished:
        return SKIP
    kept = [s for s, d in zip(q.styled, q.done) if d]
    return float(np.mean(kept)) if kept else None


def rate(name: str, label: str, higher_is_better: bool, per_response: Callable, **kw) -> Metric:
    """A quality metric that is a share of responses: one 0/1 per response (`per_response`), its mean
    the variant's figure; the study averages it per prompt, so that AAT minus SFT gets a paired CI."""
    return Metric(name, label, "quality", higher_is_better, lambda q: float(np.mean(per_response(q))),
                  per_response=per_response, **kw)  # fmt: skip


WORD = re.compile(r"[a-z0-9]+")
VALUE_KEYS = ("topic", "keyword")


def echoes(content: str, annotation: list[str]) -> bool | None:
    """Whether half or more of the content's words are words of the annotation's topic and keyword
    values (the style's value left out: "Prose." under `style:prose` names no content); None where
    the content has no word."""
    words = WORD.findall(content.lower())
    if not words:
        return None
    values = {
        w
        for tag in annotation
        if tag.split(":", 1)[0] in VALUE_KEYS
        for w in WORD.findall(tag.split(":", 1)[-1].lower())
    }
    return sum(w in values for w in words) >= len(words) / 2


DIVERSITY = (
    Metric("embedding_distance", "emb. dist.", "diversity", True,
           lambda texts, emb, labels, conf: mean_pairwise_cosine_distance(emb), summary=True, paper=True,
           description="mean pairwise cosine distance of the samples' MiniLM embeddings"),
    Metric("vendi", "Vendi", "diversity", True, lambda texts, emb, labels, conf: vendi_score(emb), summary=True,
           description="Vendi score (cosine kernel) of the samples' embeddings"),
    Metric("attribute_entropy", "attr. entropy", "diversity", True, lambda texts, emb, labels, conf: entropy(labels),
           summary=True, paper=True,
           description="entropy (nats) of the corpus categories the attribute classifier gives the samples"),
    Metric("distinct_1", "distinct-1", "diversity", True, lambda texts, emb, labels, conf: distinct_n(texts, 1),
           column=False, description="unique unigrams over all unigrams"),
    Metric("distinct_2", "distinct-2", "diversity", True, lambda texts, emb, labels, conf: distinct_n(texts, 2),
           description="unique bigrams over all bigrams"),
    Metric("attribute_confidence", "classifier conf.", "diversity", None,
           lambda texts, emb, labels, conf: float(np.mean(conf)), column=False,
           description="the attribute classifier's mean probability of the labels it gave (how much its "
                       "entropy can be trusted)"),
)  # fmt: skip

QUALITY = (
    rate("style_adherence", "style adh.", True, lambda q: [float(x) for x in q.styled],
         description="share of responses with the SFT style's opener and closer"),
    Metric("finished", "finished", "quality", True,
           lambda q: float(np.mean(q.done)) if q.has_finished else SKIP, column=False,
           description="share of responses that ended before the token cap"),
    Metric("style_adherence_finished", "style (finished)", "quality", True, _style_finished, column=False,
           description="style adherence among the finished responses"),
    Metric("fluency_nll", "fluency NLL", "quality", False, lambda q: mean_finite(q.nll),
           description="per-token NLL under the reference LM (SmolLM2-135M)"),
    Metric("fluency_scored", "fluency scored", "quality", None, lambda q: q.scored, column=False,
           description="responses scored for fluency"),
    rate("empty_responses", "empty", False, lambda q: [float(not t.strip()) for t in q.texts], column=False,
         description="share of responses with no content besides the SFT style's wrapper"),
    Metric("content_nll", "content NLL", "quality", False,
           lambda q: mean_finite(q.content_nll) if q.content_nll is not None else SKIP, column=False,
           description="per-token NLL under the reference LM of every response's content, the SFT style's "
                       "wrapper left out"),
    Metric("length_words", "words", "quality", None, lambda q: float(np.mean([len(c.split()) for c in q.content])),
           column=False, description="words of content per response"),
    rate("repetition", "repeats", False, lambda q: [float(repeats(c)) for c in q.content], column=False,
         description="share of responses in which a word 4-gram occurs twice or more (a loop)"),
    rate("tag_echo", "tag echo", False, lambda q: [float(bool(TAG.search(c))) for c in q.content], column=False,
         description="share of responses that write annotation syntax (key:value) into the text"),
    rate("value_echo", "value echo", False,
         lambda q: [float(bool(echoes(c, a))) for c, a in zip(q.content, q.annotations)], column=False,
         description="share of responses half or more of whose content words are their annotation's topic "
                     "and keyword values (`echoes`; a response without an annotation, or without a word, "
                     "echoes nothing)"),
    Metric("annotation_wellformed", "ann. ok", "quality", True,
           lambda q: float(np.mean([r["annotation_ok"] for r in q.rows])) if q.anchored else SKIP,
           description="share of self-written annotations closed and well-formed"),
    Metric("annotation_cut", "ann. cut", "quality", False,
           lambda q: float(np.mean([r["annotation_cut"] for r in q.rows]))
           if q.anchored and "annotation_cut" in q.rows[0] else SKIP, column=False,
           description="share of self-written annotations that reached sample.max_annotation_tokens before "
                       "their close (counted as not well-formed)"),
    Metric("annotation_break", "ann. break", "quality", False,
           lambda q: float(np.mean([r["annotation_break"] for r in q.rows]))
           if q.anchored and "annotation_break" in q.rows[0] else SKIP, column=False,
           description="share of self-written annotations ended by a line break or tab before their close "
                       "(format.annotation_breaks; counted as not well-formed)"),
)  # fmt: skip

METRICS = {m.name: m for m in (*DIVERSITY, *QUALITY)}
RATES = tuple(m.name for m in QUALITY if m.per_response)  # per prompt in a study's cells, paired against SFT
COLUMNS = tuple(m for m in METRICS.values() if m.column)  # the variants table, in this order
PAPER_METRICS = tuple(m.name for m in DIVERSITY if m.paper)
SUMMARY_METRICS = (*PAPER_METRICS, *(m.name for m in DIVERSITY if m.summary and not m.paper))


def diversity(texts: list[str], emb: np.ndarray, labels: list[str], conf) -> dict[str, float]:
    """Every diversity metric of one prompt's samples."""
    return {m.name: m.compute(texts, emb, labels, conf) for m in DIVERSITY}


TAG = re.compile(r"\b(?:" + "|".join(KEYS) + r"):\S")


def repeats(text: str, n: int = 4) -> bool:
    """Whether some word n-gram occurs twice or more in `text`."""
    w = text.lower().split()
    grams = [tuple(w[i : i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) < len(grams)


def quality(q: Quality) -> dict:
    """Every quality metric that applies to a variant's rows."""
    out = {}
    for m in QUALITY:
        v = m.compute(q)
        if v is not SKIP:
            out[m.name] = v
    return out


def label(name: str) -> str:
    return METRICS[name].label if name in METRICS else name
