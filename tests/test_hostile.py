"""Hostile input through the CLI and the stages: every case ends in a clear error naming the file,
line or field (or is handled correctly), never a traceback, a hang, or a silently wrong result.
The commands run in this process (`anchorlm.cli.main`), as `anchorlm ...` runs them."""

import gzip
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from anchorlm.cli import main


def _cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def _jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


DOCS = [{"text": f"Document {i} about atoms and stars. " * 4, "category": "science"} for i in range(12)]


# --- config values -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override,named",
    [
        ("pretrain.lr=fast", "pretrain.lr must be a number"),
        ("pretrain=5", "pretrain is a section"),
        ("sample.seeds=5", "sample.seeds must be a list"),
        ("sample.seeds=[a]", "sample.seeds must be a list of int"),
        ("pretrain.model.num_heads=0", "pretrain.model.num_heads must be >= 1"),
        ("pretrain.batch_size=-16", "pretrain.batch_size must be >= 1"),
        ("sample.batch_size=0", "sample.batch_size must be >= 1"),
        ("annotate.annotators=metadata", "annotate.annotators must be a list"),
        ("posttrain.epochs=-3", "posttrain.epochs must be > 0"),
        ("sample.n_samples=-1", "sample.n_samples must be >= 1"),
        ("sample.top_p=5", "sample.top_p must be > 0 and <= 1"),
        ("tokenizer.vocab_size=10", "tokenizer.vocab_size must be >= 300"),
        ("annotate.max_chunk_chars=-5", "annotate.max_chunk_chars must be >= 16"),
        ("evaluate.bootstrap=.nan", "evaluate.bootstrap must be an integer"),
        ("sample.temperature=.inf", "sample.temperature must be a finite number"),
        ("pretrain.lora.rank=-1", "pretrain.lora.rank must be >= 0"),
        ("corpus.nope=1", "unknown config key(s) ['corpus.nope']"),
    ],
)
def test_bad_config_values_are_named(capsys, override, named):
    code, err = _cli(
        capsys, "annotate", "--config", "smoke", "--set", override, "--out", "/nonexistent/never"
    )
    assert code == 2 and named in err, err


def test_a_config_path_that_is_a_directory_is_named(capsys, tmp_path):
    code, err = _cli(capsys, "annotate", "--config", tmp_path, "--out", tmp_path / "o")
    assert code == 2 and "is a directory" in err


# --- corpora ---------------------------------------------------------------------------------------
def test_an_empty_corpus_stops_annotate(capsys, tmp_path):
    code, err = _cli(
        capsys, "annotate", "--corpus", _jsonl(tmp_path / "c.jsonl", []), "--out", tmp_path / "o"
    )
    assert code == 1 and "no training documents" in err and "c.jsonl" in err


@pytest.mark.parametrize("kind", ["truncated", "fake"])
@pytest.mark.parametrize("mode", ["error", "skip"])
def test_a_corrupt_gzip_names_the_file(capsys, tmp_path, kind, mode):
    data = gzip.compress("".join(json.dumps(d) + "\n" for d in DOCS).encode())
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"not gzip at all" * 10)
    code, err = _cli(
        capsys, "annotate", "--corpus", path, "--set", f"corpus.on_bad_row={mode}", "--out", tmp_path / "o"
    )
    assert code == 1 and "c.jsonl.gz: not a readable file" in err and "Traceback" not in err


def test_a_corrupt_parquet_names_the_file(capsys, tmp_path):
    path = tmp_path / "c.parquet"
    path.write_bytes(b"PAR1" + b"\0" * 100)
    code, err = _cli(capsys, "annotate", "--corpus", path, "--out", tmp_path / "o")
    assert code == 1 and "c.parquet" in err


@pytest.mark.parametrize(
    "line,named",
    [
        ('{"text": "a lone \\ud800 surrogate"}', "lone surrogate"),
        ("[" * 100000 + "]" * 100000, "nested too deeply"),
        ('["an", "array"]', "not a JSON object"),
    ],
)
def test_bad_rows_are_named_and_skippable(capsys, tmp_path, line, named):
    path = _jsonl(tmp_path / "c.jsonl", [*DOCS[:3], line, *DOCS[3:]])
    code, err = _cli(capsys, "annotate", "--corpus", path, "--out", tmp_path / "o")
    assert code == 1 and "c.jsonl:4" in err and named in err
    code, _ = _cli(
        capsys, "annotate", "--corpus", path, "--set", "corpus.on_bad_row=skip", "--out", tmp_path / "s"
    )
    m = json.loads((tmp_path / "s/manifest.json").read_text())["counts"]
    assert code == 0 and m["documents"] == len(DOCS) and sum(m["corpus"]["skipped"].values()) == 1


@pytest.mark.parametrize("value", [{"a": 1}, ["x", "y"]])
def test_a_category_that_is_not_a_value_is_named(capsys, tmp_path, value):
    path = _jsonl(tmp_path / "c.jsonl", [{**DOCS[0], "category": value, "id": "doc-7"}])
    code, err = _cli(capsys, "annotate", "--corpus", path, "--out", tmp_path / "o")
    assert code == 1 and "'doc-7'" in err and "'category'" in err


def test_categories_in_any_script_become_tags(tmp_path):
    from anchorlm.annotate import annotate_corpus
    from anchorlm.config import AnnotateConfig, CorpusConfig
    from anchorlm.data.annotated import read_annotated

    path = _jsonl(tmp_path / "c.jsonl", [{**d, "category": "日本語"} for d in DOCS])
    annotate_corpus(CorpusConfig(path=path), AnnotateConfig(annotators=["metadata"]), tmp_path / "o")
    assert read_annotated(tmp_path / "o")[0]["chunks"][0]["tags"] == ["topic:日本語"]


def test_shards_with_one_name_are_refused(capsys, tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    _jsonl(d / "x.jsonl", DOCS[:6])
    (d / "x.jsonl.gz").write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in DOCS[6:])))
    code, err = _cli(capsys, "annotate", "--corpus", d, "--out", tmp_path / "o")
    assert code == 1 and "x.jsonl" in err and "x.jsonl.gz" in err and "one name" in err


def test_skipped_rows_of_a_sharded_corpus_are_counted(tmp_path):
    from anchorlm.annotate import annotate_corpus
    from anchorlm.config import AnnotateConfig, CorpusConfig

    d = tmp_path / "shards"
    d.mkdir()
    _jsonl(d / "a.jsonl", [*DOCS[:6], "{bad json"])
    _jsonl(d / "b.jsonl", [*DOCS[6:], {"text": ""}])
    m = annotate_corpus(CorpusConfig(path=str(d), on_bad_row="skip"), AnnotateConfig(), tmp_path / "o")
    assert m["counts"]["documents"] == len(DOCS)
    assert sum(m["counts"]["skipped"].values()) == 2


def test_a_corpus_changed_in_place_is_not_resumed_into(capsys, tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", DOCS)
    assert _cli(capsys, "annotate", "--corpus", path, "--out", tmp_path / "o")[0] == 0
    (tmp_path / "o/manifest.json").unlink()  # as if killed before the end
    _jsonl(tmp_path / "c.jsonl", [{**d, "text": d["text"].upper()} for d in DOCS])
    code, err = _cli(capsys, "annotate", "--corpus", path, "--out", tmp_path / "o")
    assert code == 1 and "another version of the corpus" in err and "c.jsonl" in err


def test_chunking_is_linear_in_length_and_loses_nothing():
    """A 5 MB paragraph (the quadratic splitter took a minute for 16 MB) in pieces of at most
    max_chars + 1 characters that hold every word, in order."""
    from anchorlm.data.corpus import chunk_text

    text = " ".join(f"word{i}." if i % 7 == 0 else f"word{i}" for i in range(700_000))
    pieces = chunk_text(text, 800)
    assert all(len(p) <= 801 for p in pieces)
    assert " ".join(pieces).split() == text.split()


# --- output directories ------------------------------------------------------------------------------
def test_a_second_run_into_a_busy_directory_stops(capsys, tmp_path):
    """Two demos into one --out: the second stops at once (the first holds the directory)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from anchorlm.io import lock_dir\n"
         "with lock_dir(sys.argv[1]):\n print('held', flush=True); time.sleep(60)", str(tmp_path / "run")],
        stdout=subprocess.PIPE, cwd=ROOT, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = _cli(capsys, "demo", "--config", "smoke", "--out", tmp_path / "run")
        assert code == 1 and "in use by another anchorlm run" in err and f"pid {holder.pid}" in err
        assert not (tmp_path / "run" / "annotate").exists()
    finally:
        holder.kill()
        holder.wait()


def test_an_output_path_that_is_a_file_is_named(capsys, tmp_path):
    (tmp_path / "taken").write_text("x")
    code, err = _cli(
        capsys, "annotate", "--corpus", _jsonl(tmp_path / "c.jsonl", DOCS), "--out", tmp_path / "taken"
    )
    assert code == 1 and "taken" in err


def test_report_checks_its_input_before_writing(capsys, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/results.json").write_text('{"variants": {}}')
    (tmp_path / "other.json").write_text('{"name": "another tool", "score": 3}')
    code, err = _cli(capsys, "report", "--results", tmp_path / "other.json", "--out", tmp_path / "out")
    assert code == 1 and "other.json" in err and "variants" in err
    assert (tmp_path / "out/results.json").read_text() == '{"variants": {}}'


def test_a_half_written_checkpoint_is_not_resumed_from(tmp_path):
    from anchorlm.train.loop import COMPLETE, last_complete_checkpoint

    ckpt = tmp_path / "checkpoints"
    for step, whole in ((5, True), (10, True), (15, False)):
        (ckpt / f"checkpoint-{step}").mkdir(parents=True)
        if whole:
            (ckpt / f"checkpoint-{step}" / COMPLETE).touch()
    assert last_complete_checkpoint(ckpt) == str(ckpt / "checkpoint-10")
    assert not (ckpt / "checkpoint-15").exists()


# --- SFT data, prompts, samples ------------------------------------------------------------------
GOOD = {"instruction": "Say something.", "response": "Atoms.", "tags": ["topic:science"]}


@pytest.mark.parametrize(
    "row,named",
    [
        ({"response": "x", "tags": ["topic:a"]}, "'instruction' must be a non-empty string"),
        ({**GOOD, "response": 5}, "'response' must be a non-empty string"),
        ({**GOOD, "tags": "topic:science"}, "'tags' must be a list"),
        ({**GOOD, "tags": ["science"]}, "malformed tags ['science']"),
        ({**GOOD, "tags": ["bogus:a"]}, "malformed tags ['bogus:a']"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_bad_sft_rows_are_named(capsys, tmp_path, row, named):
    data = _jsonl(tmp_path / "sft.jsonl", [GOOD, row])
    code, err = _cli(
        capsys,
        "posttrain",
        "--model",
        "smollm2",
        "--data",
        data,
        "--method",
        "anchored",
        "--out",
        tmp_path / "o",
    )
    assert code == 1 and "sft.jsonl" in err and "2" in err and named in err, err


def test_prompt_files_keep_prefixes_and_refuse_shared_ids():
    from anchorlm.sample import prompt_rows

    rows = prompt_rows(
        [{"id": 1, "prompt": "a", "annotation_prefix": ["topic:food"]}, {"id": 2, "text": "b"}], "p"
    )
    assert rows[0]["annotation_prefix"] == ["topic:food"] and rows[1]["prompt"] == "b"
    for bad, named in (
        ([{"id": 1, "prompt": "a"}, {"id": "1", "prompt": "b"}], "rows 1 and 2 have one id"),
        ([{"id": 1, "prompt": "a", "annotation_prefix": ["food"]}], "annotation_prefix"),
        ([{"id": [1], "prompt": "a"}], "'id' must be a string or an integer"),
    ):
        with pytest.raises(ValueError, match=named.replace("(", r"\(")):
            prompt_rows(bad, "p")


def _samples(path, ids, anchored=False):
    rows = [{"prompt_id": i, "response": f"x y {k}"} for i in ids for k in range(2)]
    if anchored:
        rows = [{**r, "annotation": ["topic:a"], "annotation_ok": True} for r in rows]
    return _jsonl(path, rows)


def test_evaluate_refuses_what_would_compare_wrongly(capsys, tmp_path):
    a, b = _samples(tmp_path / "a.jsonl", [0, 1]), _samples(tmp_path / "b.jsonl", [0, 2])
    code, err = _cli(capsys, "evaluate", "--samples", f"base={a}", f"base={b}", "--out", tmp_path / "r.json")
    assert code == 1 and "'base' given twice" in err
    code, err = _cli(capsys, "evaluate", "--samples", f"base={a}", f"sft={b}", "--out", tmp_path / "r.json")
    assert code == 1 and "covers other prompts" in err and "b.jsonl" in err
    mixed = _jsonl(tmp_path / "m.jsonl", [{"prompt_id": 0, "response": "x", "annotation": [], "annotation_ok": False},
                                         {"prompt_id": 1, "response": "y"}])  # fmt: skip
    code, err = _cli(capsys, "evaluate", "--samples", f"aat={mixed}", "--out", tmp_path / "r.json")
    assert code == 1 and "m.jsonl:2" in err and "some rows only" in err
    arrays = _jsonl(tmp_path / "arr.jsonl", ["[1, 2]"])
    code, err = _cli(capsys, "evaluate", "--samples", f"base={arrays}", "--out", tmp_path / "r.json")
    assert code == 1 and "arr.jsonl:1" in err
    assert not (tmp_path / "r.json").exists()


def test_cli_errors_carry_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "anchorlm.cli", "evaluate", "--samples", f"base={tmp_path / 'missing.jsonl'}",
         "--out", str(tmp_path / "r.json")], cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 1 and "missing.jsonl" in proc.stderr and "Traceback" not in proc.stderr
