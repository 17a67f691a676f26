"""Pluggable annotators: each turns a batch of (document, chunk text) into a list of tags per chunk.

metadata  tags from corpus fields (`topic:<category>`)
keywords  offline content tags: TF-IDF keywords, a capitalised entity, a style and a length
llm       an instruction-tuned LM writes the tags (local transformers model or an HTTP endpoint)

`registry.py` names them; adding one is its module and a line there.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from anchorlm.annotators.registry import CLASSES

if TYPE_CHECKING:
    from anchorlm.config import AnnotateConfig

STATE = "state.json"  # in an annotation's output directory: the fitted state, and what it was fitted on


class Annotator(Protocol):
    name: str

    def fit(self, docs: list[dict], text_field: str) -> dict:
        """Learn corpus-level state (may be a no-op); returns it, JSON-serialisable."""

    def load_state(self, state: dict) -> None: ...

    def annotate(self, items: list[tuple[dict, str]]) -> list[list[str]]:
        """Tags for each (document, chunk text)."""


def get_annotator(name: str, cfg: AnnotateConfig) -> Annotator:
    """The annotator registered under `name` (anchorlm.annotators.registry), built from `cfg`."""
    if name not in CLASSES:
        raise ValueError(f"unknown annotator {name!r}; choose from {', '.join(CLASSES)}")
    module, cls = CLASSES[name].split(":")
    return getattr(importlib.import_module(module), cls).from_config(cfg)


def annotate_all(annotators: list[Annotator], items: list[tuple[dict, str]]) -> list[list[str]]:
    """Each annotator's tags for each item, in annotator order, without repeating a tag."""
    tags: list[list[str]] = [[] for _ in items]
    for a in annotators:
        for t, new in zip(tags, a.annotate(items)):
            t.extend(x for x in new if x not in t)
    return tags


def fit_state(cfg: AnnotateConfig, docs: list[dict], text_field: str, **identity) -> dict:
    """Each annotator's corpus-level state, fitted on `docs`, with `identity` (what the state
    belongs to: the config's fingerprint, the corpus files' digests) beside it."""
    annotators = [get_annotator(name, cfg) for name in cfg.annotators]
    return {**identity, "annotators": {a.name: a.fit(docs, text_field) for a in annotators}}


def load_annotators(cfg: AnnotateConfig, annotate_dir: str | Path) -> list[Annotator]:
    """The configured annotators with the state an annotation run saved in `annotate_dir`, so
    anything annotated later (shards in other processes, SFT responses) is tagged as it was."""
    state = json.loads((Path(annotate_dir) / STATE).read_text())["annotators"]
    annotators = [get_annotator(name, cfg) for name in cfg.annotators]
    for a in annotators:
        a.load_state(state[a.name])
    return annotators
