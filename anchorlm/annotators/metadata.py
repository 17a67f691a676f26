"""Tags from corpus fields, e.g. ``topic:<category>``."""

from __future__ import annotations

from anchorlm.format import make_tag


class MetadataAnnotator:
    name = "metadata"

    @classmethod
    def from_config(cls, cfg) -> MetadataAnnotator:
        return cls(cfg.metadata_fields)

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
                if isinstance(v, (dict, list, tuple)):
                    raise ValueError(
                        f"document {doc.get('id')!r}: field {fld!r} holds a {type(v).__name__}, not a value "
                        f"for a {key}: tag; give it a string (annotate.metadata_fields maps keys to fields)"
                    )
                if v is not None and str(v).strip():
                    try:
                        tags.append(make_tag(key, str(v)))
                    except ValueError as e:
                        raise ValueError(f"document {doc.get('id')!r}, field {fld!r}: {e}") from None
            out.append(tags)
        return out
