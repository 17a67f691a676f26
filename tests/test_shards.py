"""Sharded corpora: annotation and tokenisation shard by shard, in several processes, resuming
per shard, giving what the same documents give as one file."""

import gzip
import json
import os

import pytest

from anchorlm.annotate import annotate_corpus
from anchorlm.config import AnnotateConfig, CorpusConfig
from anchorlm.data.annotated import read_annotated
from anchorlm.data.pack import load_blocks, pack, pack_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """150 documents as one JSONL file and as three shards (two Parquet, one JSONL.gz)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("shards")
    rows = []
    with gzip.open(os.path.join(ROOT, "anchorlm/corpus/corpus.jsonl.gz"), "rt") as fh:
        for line in fh:
            r = json.loads(line)
            if r.get("split") != "heldout":
                rows.append({k: r[k] for k in ("id", "text", "category")})
            if len(rows) == 150:
                break
    (d / "one.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "shards").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:50]), d / "shards/a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[50:100]), d / "shards/b.parquet")
    with gzip.open(d / "shards/c.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows[100:])
    return d


def _cfg(num_proc=1):
    return AnnotateConfig(keywords_per_chunk=1, num_proc=num_proc)


def test_sharded_annotation_equals_one_file_and_processes_do_not_matter(corpus, tmp_path):
    one = annotate_corpus(CorpusConfig(path=str(corpus / "one.jsonl")), _cfg(), tmp_path / "one")
    m1 = annotate_corpus(CorpusConfig(path=str(corpus / "shards")), _cfg(1), tmp_path / "s1")
    annotate_corpus(CorpusConfig(path=str(corpus / "shards/*")), _cfg(2), tmp_path / "s2")
    assert m1["counts"]["shards"] == 3 and m1["counts"]["documents"] == one["counts"]["documents"] == 150
    docs = read_annotated(tmp_path / "one")
    assert read_annotated(tmp_path / "s1") == docs  # the same tags: IDF fitted on the same documents
    assert read_annotated(tmp_path / "s2") == docs
    assert sum(bool(c["tags"]) for d in docs for c in d["chunks"]) > 100


def test_a_killed_sharded_run_redoes_only_unfinished_shards(corpus, tmp_path):
    cfg, corp = _cfg(), CorpusConfig(path=str(corpus / "shards"))
    annotate_corpus(corp, cfg, tmp_path / "full")
    annotate_corpus(corp, cfg, tmp_path / "run")
    shards = tmp_path / "run/shards"
    # as a kill leaves it: shard b half written with a torn last line, c not started, no manifest
    lines = (shards / "b.jsonl").read_text().splitlines(keepends=True)
    (shards / "b.jsonl").write_text("".join(lines[:20]) + lines[20][:30])
    for name in ("b.done", "c.done", "c.jsonl"):
        (shards / name).unlink()
    (tmp_path / "run/manifest.json").unlink()
    a_mtime = (shards / "a.jsonl").stat().st_mtime_ns
    m = annotate_corpus(corp, cfg, tmp_path / "run")
    assert m["counts"]["resumed_shards"] == 2  # a skipped whole, b continued at line 21
    assert (shards / "a.jsonl").stat().st_mtime_ns == a_mtime
    assert read_annotated(tmp_path / "run") == read_annotated(tmp_path / "full")
    with pytest.raises(RuntimeError, match="another config"):
        annotate_corpus(corp, AnnotateConfig(keywords_per_chunk=2), tmp_path / "run")


def test_sharded_tokenisation_resumes_and_concatenates(corpus, tmp_path, tiny_tokenizer):
    annotate_corpus(CorpusConfig(path=str(corpus / "shards")), _cfg(), tmp_path / "ann")
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    m = pack_shards(tmp_path / "ann", str(tmp_path / "tok"), True, 32, tmp_path / "tokens", 0, 2)["counts"]
    ds = load_blocks(tmp_path / "tokens")
    assert m["shards"] == 3 and len(ds) == m["blocks"] > 0 and len(ds[0]["input_ids"]) == 32
    # per shard, the blocks are those `pack` makes of that shard's documents alone
    docs_b = [json.loads(x) for x in (tmp_path / "ann/shards/b.jsonl").open()]
    pack(docs_b, tiny_tokenizer, True, 32, tmp_path / "b_alone", 0)
    alone = load_blocks(tmp_path / "b_alone")["input_ids"]
    assert load_blocks(tmp_path / "tokens/shards/b")["input_ids"] == alone
    (tmp_path / "tokens/shards/c.done").unlink()
    again = pack_shards(tmp_path / "ann", str(tmp_path / "tok"), True, 32, tmp_path / "tokens", 0, 1)[
        "counts"
    ]
    assert again == m


def test_shards_refuse_a_whole_corpus_cap(corpus, tmp_path):
    with pytest.raises(ValueError, match="max_chars_per_category"):
        annotate_corpus(
            CorpusConfig(path=str(corpus / "shards"), max_chars_per_category=100), _cfg(), tmp_path
        )
