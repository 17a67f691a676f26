import json

import pytest
from conftest import ROOT

from anchorlm import annotate as A
from anchorlm.annotators.metadata import MetadataAnnotator
from anchorlm.config import AnnotateConfig, CorpusConfig
from anchorlm.data.annotated import read_annotated

CORPUS = CorpusConfig(path=str(ROOT / "anchorlm/corpus/corpus.jsonl.gz"), max_chars_per_category=4000)


def test_interrupted_annotation_resumes_to_the_same_result(tmp_path, monkeypatch):
    cfg = AnnotateConfig(keywords_per_chunk=1)
    A.annotate_corpus(CORPUS, cfg, tmp_path / "full")
    full = (tmp_path / "full/annotated.jsonl").read_text()

    calls = {"n": 0}
    real = MetadataAnnotator.annotate

    def dying(self, items):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("killed")
        return real(self, items)

    monkeypatch.setattr(MetadataAnnotator, "annotate", dying)
    with pytest.raises(KeyboardInterrupt):
        A.annotate_corpus(CORPUS, cfg, tmp_path / "part")
    partial = (tmp_path / "part/annotated.jsonl").read_bytes()
    assert partial.count(b"\n") == 3 * A.DOCS_PER_BATCH
    # a torn last line, as a kill in the middle of a write leaves it
    (tmp_path / "part/annotated.jsonl").write_bytes(partial + b'{"id": "torn')
    monkeypatch.setattr(MetadataAnnotator, "annotate", real)
    m = A.annotate_corpus(CORPUS, cfg, tmp_path / "part")
    assert m["counts"]["resumed_at"] == 3 * A.DOCS_PER_BATCH
    assert (tmp_path / "part/annotated.jsonl").read_text() == full


def test_resume_with_another_config_is_refused(tmp_path):
    A.annotate_corpus(CORPUS, AnnotateConfig(keywords_per_chunk=1), tmp_path)
    with pytest.raises(RuntimeError, match="another config"):
        A.annotate_corpus(CORPUS, AnnotateConfig(keywords_per_chunk=2), tmp_path)


def test_annotated_rows_have_chunk_tags_and_no_heldout(tmp_path):
    A.annotate_corpus(CORPUS, AnnotateConfig(), tmp_path)
    rows = read_annotated(tmp_path)
    heldout = {json.loads(x)["id"] for x in __import__("gzip").open(CORPUS.path) if b'"heldout"' in x}
    assert rows and not heldout & {r["id"] for r in rows}
    for r in rows[:50]:
        for c in r["chunks"]:
            assert c["tags"][0] == f"topic:{r['category']}"
            assert c["text"].strip()
