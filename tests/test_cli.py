import subprocess
import sys

from conftest import ASSETS, ROOT


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "anchorlm.cli", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_help_lists_every_stage():
    out = _cli("--help").stdout
    for stage in (
        "annotate",
        "tokenizer",
        "tokenize",
        "pretrain",
        "posttrain",
        "sample",
        "evaluate",
        "report",
        "demo",
    ):
        assert stage in out


def test_bad_config_key_is_named():
    p = _cli("demo", "--set", "pretrain.epochs=3")
    assert p.returncode == 2 and "pretrain.epochs" in p.stderr


def test_bad_corpus_row_is_named_with_file_and_line(tmp_path):
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": ""}\n')
    p = _cli("annotate", "--corpus", str(bad), "--out", str(tmp_path / "o"))
    assert p.returncode == 1 and "c.jsonl:2" in p.stderr and "on_bad_row=skip" in p.stderr
    p = _cli(
        "annotate", "--corpus", str(bad), "--out", str(tmp_path / "o2"), "--set", "corpus.on_bad_row=skip"
    )
    assert p.returncode == 0, p.stderr


def test_stage_commands_chain_through_directories(tmp_path):
    corpus = str(ASSETS / "mini_corpus.jsonl")
    assert _cli("annotate", "--corpus", corpus, "--out", str(tmp_path / "ann")).returncode == 0
    p = _cli(
        "tokenizer",
        "--annotated",
        str(tmp_path / "ann"),
        "--out",
        str(tmp_path / "tok"),
        "--set",
        "tokenizer.vocab_size=300",
    )
    assert p.returncode == 0, p.stderr
    p = _cli(
        "tokenize",
        "--annotated",
        str(tmp_path / "ann"),
        "--tokenizer",
        str(tmp_path / "tok"),
        "--variant",
        "annotated",
        "--out",
        str(tmp_path / "blocks"),
        "--set",
        "pretrain.seq_len=16",
    )
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "blocks/manifest.json").exists()


def test_evaluate_checks_samples_against_the_prompt_file(tmp_path):
    prompts = "noveltybench"  # the curated prompts shipped with anchorlm
    s = tmp_path / "s.jsonl"
    s.write_text('{"prompt_id": "curated-0", "response": "A girl and her dog."}\n' * 2)
    p = _cli("evaluate", "--prompts", prompts, "--samples", f"m={s}", "--out", str(tmp_path / "r.json"))
    assert p.returncode == 1 and "missing prompt ids" in p.stderr and "curated-1" in p.stderr
