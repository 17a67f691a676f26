import gzip
import json

import pytest
from conftest import ASSETS, ROOT

from anchorlm.config import CorpusConfig
from anchorlm.data.corpus import BadRowError, CorpusStats, chunk_text, read_corpus


def test_reads_jsonl_and_keeps_heldout_out():
    stats = CorpusStats()
    docs = list(read_corpus(CorpusConfig(path=str(ASSETS / "mini_corpus.jsonl")), stats))
    assert [d["id"] for d in docs] == ["a1", "a2", "a3", "a4", "a6", "a7", "a8"]
    assert stats.heldout == 1 and stats.read == 7
    both = list(read_corpus(CorpusConfig(path=str(ASSETS / "mini_corpus.jsonl")), include_heldout=True))
    assert len(both) == 8


def test_parquet_and_datasets_dir_give_the_same_documents(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    rows = [json.loads(line) for line in open(ASSETS / "mini_corpus.jsonl")]
    rows = [{**r, "split": r.get("split", "train")} for r in rows]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    a = [d["text"] for d in read_corpus(CorpusConfig(path=str(tmp_path / "c.parquet")))]
    b = [d["text"] for d in read_corpus(CorpusConfig(path=str(tmp_path / "ds")))]
    assert a == b and len(a) == 7


@pytest.mark.parametrize(
    "line, problem",
    [
        (b'{"text": "ok"', "invalid JSON"),
        (b'{"title": "no text"}', "missing the text field"),
        (b'{"text": "   "}', "is empty"),
        (b'{"text": "caf\xe9"}', "not valid UTF-8"),
        (b'["a list"]', "not a JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, line, problem):
    p = tmp_path / "bad.jsonl.gz"
    with gzip.open(p, "wb") as fh:
        fh.write(b'{"text": "fine"}\n' + line + b'\n{"text": "also fine"}\n')
    with pytest.raises(BadRowError, match=rf"bad.jsonl.gz:2: .*{problem}"):
        list(read_corpus(CorpusConfig(path=str(p))))
    stats = CorpusStats()
    docs = list(read_corpus(CorpusConfig(path=str(p), on_bad_row="skip"), stats))
    assert [d["text"] for d in docs] == ["fine", "also fine"]
    assert sum(stats.skipped.values()) == 1


def test_bundled_corpus_meets_the_spec():
    stats = CorpusStats()
    docs = list(
        read_corpus(
            CorpusConfig(path=str(ROOT / "anchorlm/corpus/corpus.jsonl.gz")), stats, include_heldout=True
        )
    )
    assert len({d["category"] for d in docs}) >= 20
    assert sum(len(d["text"].encode()) for d in docs) >= 5_000_000
    assert stats.heldout > 0 and not stats.skipped


def test_chunking_splits_on_blank_lines_and_long_paragraphs():
    text = "one\n\n\ntwo two\n\n" + "word " * 100
    chunks = chunk_text(text, 60)
    assert chunks[:2] == ["one", "two two"]
    assert all(len(c) <= 60 for c in chunks)
    assert " ".join(chunks[2:]).split() == ["word"] * 100
