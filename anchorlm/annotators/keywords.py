"""Offline content annotator (no LLM): TF-IDF keywords, a capitalised entity, a style, a length.

The IDF table is fitted on the training corpus once and saved with the annotation stage, so a
resumed run tags exactly as the first one did.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from anchorlm.format import make_tag

STOPWORDS = set(
    """a about above after again against all am an and any are as at be because been
before being below between both but by can could did do does doing down during each few for from
further had has have having he her here hers herself him himself his how i if in into is it its
itself just me more most my myself no nor not now of off on once only or other our ours ourselves
out over own same she should so some such than that the their theirs them themselves then there
these they this those through to too under until up very was we were what when where which while
who whom why will with would you your yours yourself yourselves also shall unto thee thou thy ye
hath upon said one two may might must us let like get got make made much many every even well
ever never said say says yet
""".split()
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")


def words(text: str) -> list[str]:
    return [w.lower().strip("'-") for w in _WORD.findall(text)]


def style_of(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if re.search(r"^\s*[A-Z][\w .]{0,20}:\s", text, re.M) and len(lines) > 1:
        return "dialogue"
    if re.search(r"^\s*--\s*\S", text, re.M):
        return "quotation"
    if text.rstrip().endswith("?"):
        return "question"
    if len(lines) >= 3 and sum(len(ln) for ln in lines) / len(lines) < 45:
        return "verse"
    return "prose"


def length_of(text: str) -> str:
    n = len(text.split())
    return "short" if n < 25 else "medium" if n < 80 else "long"


class KeywordAnnotator:
    name = "keywords"

    @classmethod
    def from_config(cls, cfg) -> KeywordAnnotator:
        return cls(cfg.keywords_per_chunk, cfg.keyword_extras)

    def __init__(self, k: int = 2, extras: tuple = ("entity", "style", "length")):
        self.k = k
        self.extras = tuple(extras)
        self.idf: dict[str, float] | None = None  # set by fit() or load_state()

    def fit(self, docs, text_field):
        df = Counter()
        for d in docs:
            df.update(set(words(d[text_field])))
        n = max(len(docs), 1)
        # words in fewer than 3 documents are mostly noise for a tag vocabulary
        self.idf = {w: round(math.log(n / c), 4) for w, c in df.items() if c >= 3 and w not in STOPWORDS}
        return {"idf": self.idf}

    def load_state(self, state):
        self.idf = state["idf"]

    def tags(self, text: str) -> list[str]:
        tf = Counter(w for w in words(text) if w in self.idf)
        ranked = sorted(tf, key=lambda w: (-tf[w] * self.idf[w], w))
        tags = [make_tag("keyword", w) for w in ranked[: self.k]]
        # a capitalised word not at a sentence start is a cheap proper-noun guess
        ents = Counter(
            m.group(1)
            for m in re.finditer(r"(?<![.!?\n]\s)(?<!^)\b([A-Z][a-z]{2,})\b", text)
            if m.group(1).lower() not in STOPWORDS
        )
        if ents and "entity" in self.extras:
            tags.append(make_tag("entity", sorted(ents, key=lambda e: (-ents[e], e))[0]))
        if "style" in self.extras:
            tags.append(make_tag("style", style_of(text)))
        if "length" in self.extras:
            tags.append(make_tag("length", length_of(text)))
        return tags

    def annotate(self, items):
        if self.idf is None:
            raise RuntimeError("KeywordAnnotator.fit() (or load_state) must run before annotate()")
        return [self.tags(text) for _, text in items]
