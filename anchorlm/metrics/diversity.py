"""Diversity of a set of samples for one prompt: embedding distance, Vendi score, entropy, distinct-n."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np


def _unit(emb: np.ndarray) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float64)
    return emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)


def mean_pairwise_cosine_distance(emb: np.ndarray) -> float:
    """Mean of 1 - cos(e_i, e_j) over pairs i < j (0 for fewer than two samples)."""
    n = len(emb)
    if n < 2:
        return 0.0
    sim = _unit(emb) @ _unit(emb).T
    return float((n * n - sim.sum()) / (n * (n - 1)))  # diagonal is exactly 1: it cancels


def vendi_score(emb: np.ndarray) -> float:
    """Vendi score with the cosine-similarity kernel: exp of the entropy of eig(K / n)."""
    x = _unit(emb)
    n = len(x)
    # eig(X X^T / n) has the same non-zero eigenvalues as eig(X^T X / n), which is smaller
    w = np.linalg.eigvalsh(x.T @ x / n)
    w = w[w > 1e-12]
    return float(math.exp(-(w * np.log(w)).sum()))


def entropy(labels) -> float:
    """Shannon entropy (nats) of the empirical distribution of `labels`."""
    c = Counter(labels)
    n = sum(c.values())
    return float(-sum(k / n * math.log(k / n) for k in c.values())) if n else 0.0


def distinct_n(texts: list[str], n: int) -> float:
    """Unique n-grams over all n-grams of the (whitespace-tokenised, lowercased) texts."""
    grams = [tuple(t[i : i + n]) for t in (s.lower().split() for s in texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
