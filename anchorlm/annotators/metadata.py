"""Tags from corpus fields, e.g. ``topic:<category>``."""

from __future__ import annotations

from anchorlm.format import make_tag


class MetadataAnnotator:
    name = "metadata"

    def __init__(self, fields: dict[str, str]):
        self.fields = fields  # annotation key -> corpus field

    def fit(self, docs, text_field):
        return {}

    def load_state(self, state):
        pass

    def annotate(self, items):
        out = []
        for doc, _ in items:
            tags = []
            for key, fld in self.fields.items():
                v = doc.get(fld)
                if v is not None and str(v).strip():
                    tags.append(make_tag(key, str(v)))
            out.append(tags)
        return out
