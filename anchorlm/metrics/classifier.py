"""The attribute classifier: corpus category from a MiniLM embedding (logistic regression).

Trained on the corpus's training split, scored on its held-out split. The entropy of the labels it
gives a prompt's samples is anchorlm's analogue of the paper's judged-attribute entropy.
"""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np

from anchorlm.config import CorpusConfig
from anchorlm.data.corpus import read_corpus

PREFIX_CHARS = 400


def _per_category(docs, cfg: CorpusConfig, k: int, seed: int):
    by = defaultdict(list)
    for d in docs:
        by[d.get(cfg.category_field)].append(d)
    rng = random.Random(seed)
    out = []
    for cat in sorted(by, key=str):
        ds = by[cat]
        out += rng.sample(ds, min(k, len(ds)))
    return out


class AttributeClassifier:
    def __init__(self, embed, seed: int = 0):
        self.embed = embed  # list[str] -> np.ndarray
        self.seed = seed

    def fit(self, corpus: CorpusConfig, docs_per_category: int) -> dict:
        from sklearn.linear_model import LogisticRegression

        docs = list(read_corpus(corpus, include_heldout=True))
        split = corpus.split_field
        train = _per_category(
            [d for d in docs if d.get(split) != corpus.heldout_value], corpus, docs_per_category, self.seed
        )
        held = _per_category(
            [d for d in docs if d.get(split) == corpus.heldout_value],
            corpus,
            max(docs_per_category // 4, 5),
            self.seed,
        )
        # the first 400 characters: samples are about that long, and so are most corpus documents
        x = self.embed([d[corpus.text_field][:PREFIX_CHARS] for d in train])
        y = [str(d.get(corpus.category_field)) for d in train]
        self.clf = LogisticRegression(max_iter=2000, C=4.0, random_state=self.seed).fit(x, y)
        acc, per_cat = None, {}
        if held:
            xh = self.embed([d[corpus.text_field][:PREFIX_CHARS] for d in held])
            truth = np.array([str(d.get(corpus.category_field)) for d in held])
            hit = self.clf.predict(xh) == truth
            acc = float(np.mean(hit))
            per_cat = {c: float(np.mean(hit[truth == c])) for c in sorted(set(truth))}
        return {
            "classes": len(self.clf.classes_),
            "train_docs": len(train),
            "heldout_docs": len(held),
            "heldout_accuracy": acc,
            "per_category_accuracy": per_cat,  # held-out recall: the ceiling of forced-plan accuracy
            "chance": 1 / len(self.clf.classes_),
        }

    def predict(self, emb: np.ndarray) -> list[str]:
        return list(self.clf.predict(emb))
