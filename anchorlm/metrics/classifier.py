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
from anchorlm.metrics.diversity import entropy

PREFIX_CHARS = 400
HOLD_OUT = 0.2  # share of a corpus without a split field that the classifier holds out


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
        pool = [d for d in docs if d.get(split) != corpus.heldout_value]
        held_pool = [d for d in docs if d.get(split) == corpus.heldout_value]
        held_out_here = not held_pool  # no split field: the classifier holds out a share itself
        if held_out_here:
            rng = random.Random(self.seed + 1)
            held_pool = [d for d in pool if rng.random() < HOLD_OUT]
            kept = {id(d) for d in held_pool}
            pool = [d for d in pool if id(d) not in kept]
        train = _per_category(pool, corpus, docs_per_category, self.seed)
        held = _per_category(held_pool, corpus, max(docs_per_category // 4, 5), self.seed)
        # the first 400 characters: samples are about that long, and so are most corpus documents
        x = self.embed([d[corpus.text_field][:PREFIX_CHARS] for d in train])
        y = [str(d.get(corpus.category_field)) for d in train]
        self.clf = LogisticRegression(max_iter=2000, C=4.0, random_state=self.seed).fit(x, y)
        acc, per_cat = None, {}
        self.heldout_labels: list[str] = []
        if held:
            xh = self.embed([d[corpus.text_field][:PREFIX_CHARS] for d in held])
            truth = np.array([str(d.get(corpus.category_field)) for d in held])
            self.heldout_labels = self.predict(xh)
            hit = np.array(self.heldout_labels) == truth
            acc = float(np.mean(hit))
            per_cat = {c: float(np.mean(hit[truth == c])) for c in sorted(set(truth))}
        info = {
            "classes": len(self.clf.classes_),
            "train_docs": len(train),
            "heldout_docs": len(held),
            "heldout_accuracy": acc,
            "per_category_accuracy": per_cat,  # held-out recall: what real documents score (a reference)
            "chance": 1 / len(self.clf.classes_),
        }
        if held_out_here:
            info["heldout"] = (
                f"the corpus has no '{split}' field: {HOLD_OUT:.0%} of its documents held out here"
            )
        return info

    @property
    def categories(self) -> list[str]:
        """The corpus categories it tells apart, as the corpus names them (`fidelity.as_topic` gives
        the `topic:` value the metadata annotator writes for each)."""
        return [str(c) for c in self.clf.classes_]

    def predict(self, emb: np.ndarray) -> list[str]:
        return list(self.clf.predict(emb))

    def confidence(self, emb: np.ndarray) -> np.ndarray:
        """The classifier's probability of its own label, per sample."""
        return self.clf.predict_proba(emb).max(-1)

    def entropy_ceiling(self, n: int, groups: int = 200) -> float | None:
        """The attribute entropy of `n` real held-out documents drawn at random (mean over `groups`
        draws): what a writer as varied as the corpus scores for a prompt's n samples."""
        if not self.heldout_labels:
            return None
        rng = random.Random(self.seed + 2)
        labels = self.heldout_labels
        return float(
            np.mean([entropy([labels[rng.randrange(len(labels))] for _ in range(n)]) for _ in range(groups)])
        )
