"""The annotators by name: where each is defined. Adding one is a module in this package with a
class that has `name`, `fit`, `load_state`, `annotate` and `from_config(AnnotateConfig)`, and one line
here. Kept free of imports, so the config can check names without loading any annotator."""

from __future__ import annotations

CLASSES = {
    "metadata": "anchorlm.annotators.metadata:MetadataAnnotator",
    "keywords": "anchorlm.annotators.keywords:KeywordAnnotator",
    "llm": "anchorlm.annotators.llm:LLMAnnotator",
}
NAMES = tuple(CLASSES)
