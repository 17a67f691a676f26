"""The hostile inputs of issue 18, each through the CLI (`anchorlm.cli.main`, in this process, as
`anchorlm ...` runs it): every case ends in a clear error naming the file, line or field, or in
the right result; nothing lost, doubled or silently reused. Numbered as in the issue."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ASSETS, ROOT

from anchorlm.cli import main
from anchorlm.io import read_jsonl

TINY = [
    "pretrain.model.hidden_size=16",
    "pretrain.model.num_layers=1",
    "pretrain.model.num_heads=2",
    "pretrain.model.intermediate_size=32",
    "pretrain.model.max_position_embeddings=16",
    "pretrain.seq_len=16",
    "pretrain.batch_size=4",
    "pretrain.token_budget=256",
    "pretrain.save_steps=2",
    "posttrain.batch_size=4",
    "posttrain.max_len=64",
    "tokenizer.vocab_size=300",
]


def _cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.err + out.out


def _sets(*items):
    return [x for s in items for x in ("--set", s)]


def _jsonl(path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Annotation, tokenizer, annotated blocks and SFT data of the mini corpus, made through the CLI."""
    d = tmp_path_factory.mktemp("stages")
    corpus = str(ASSETS / "mini_corpus.jsonl")
    for args in (
        ["annotate", "--corpus", corpus, "--out", d / "ann"],
        ["tokenizer", "--annotated", d / "ann", "--out", d / "tok"],
        ["tokenize", "--annotated", d / "ann", "--tokenizer", d / "tok", "--variant", "annotated", "--out",
         d / "blocks"],
    ):  # fmt: skip
        assert main([str(a) for a in args] + _sets(*TINY)) == 0, args
    sft = [
        {"instruction": f"Say thing {i}.", "response": f"Atoms and stars {i}.", "tags": ["topic:science"]}
        for i in range(8)
    ]
    _jsonl(d / "sft.jsonl", sft)
    return d


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# --- 1. a used --out never hands back the old model ---------------------------------------------------
def test_1_pretrain_into_a_used_out_with_another_config_is_refused(capsys, stages, tmp_path):
    out = tmp_path / "m"
    args = ["pretrain", "--data", stages / "blocks", "--tokenizer", stages / "tok", "--out", out]
    code, err = _cli(capsys, *args, *_sets(*TINY))
    assert code == 0, err
    before = _weights(out)
    code, err = _cli(capsys, *args, *_sets(*TINY, "pretrain.lr=0.01"))
    assert code == 1 and str(out) in err and "another" in err and "pretrain.lr" in err, err
    after = _weights(out)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((out / "manifest.json").read_text())["config"]["lr"] != 0.01
    # the same command again: the finished model is the answer, and it says so
    code, err = _cli(capsys, *args, *_sets(*TINY))
    assert code == 0 and "already holds" in err, err


def test_1_posttrain_sft_then_anchored_into_one_out_is_refused(capsys, stages, tmp_path):
    model = tmp_path / "m"
    assert _cli(capsys, "pretrain", "--data", stages / "blocks", "--tokenizer", stages / "tok", "--out", model,
                *_sets(*TINY))[0] == 0  # fmt: skip
    post = ["posttrain", "--model", model, "--data", stages / "sft.jsonl", "--out", tmp_path / "p"]
    assert _cli(capsys, *post, "--method", "sft", *_sets(*TINY))[0] == 0
    code, err = _cli(capsys, *post, "--method", "anchored", *_sets(*TINY))
    assert code == 1 and "posttrain.method" in err and "another" in err, err


def test_1_a_killed_run_resumed_with_another_config_is_refused(capsys, stages, tmp_path):
    """Checkpoints of a run stopped half way belong to its config: another config refuses them."""
    out = tmp_path / "m"
    args = ["pretrain", "--data", stages / "blocks", "--tokenizer", stages / "tok", "--out", out]
    assert _cli(capsys, *args, *_sets(*TINY))[0] == 0
    (out / "manifest.json").unlink()  # as if killed after its checkpoints
    code, err = _cli(capsys, *args, *_sets(*TINY, "pretrain.seed=3"))
    assert code == 1 and "pretrain.seed" in err, err


# --- 2. sft-data reads the corpus of the annotation it is given ----------------------------------------
def test_2_sft_data_uses_the_corpus_of_its_annotation_dir(capsys, tmp_path):
    docs = [{"text": f"Pasta and bread number {i}.", "category": "food"} for i in range(30)]
    corpus = _jsonl(tmp_path / "mine.jsonl", docs)
    assert _cli(capsys, "annotate", "--corpus", corpus, "--out", tmp_path / "ann")[0] == 0
    code, err = _cli(capsys, "sft-data", "--annotated", tmp_path / "ann", "--out", tmp_path / "sft",
                     *_sets("sft_data.categories=[food]", "sft_data.n_examples=10"))  # fmt: skip
    assert code == 0, err
    rows = read_jsonl(tmp_path / "sft/train.jsonl")
    assert all("Pasta and bread" in r["response"] for r in rows)


# --- 3. evaluate refuses what it cannot measure, and writes strict JSON ---------------------------
def _samples(path, per_prompt, prompts=(0, 1)):
    rows = [
        {"prompt_id": p, "response": f"text {p} {k} of words"} for p in prompts for k in range(per_prompt)
    ]
    return _jsonl(path, rows)


def test_3_one_sample_per_prompt_is_refused(capsys, tmp_path):
    s = _samples(tmp_path / "one.jsonl", 1)
    code, err = _cli(capsys, "evaluate", "--samples", f"base={s}", "--out", tmp_path / "r.json")
    assert code == 1 and "one.jsonl" in err and "at least 2 samples" in err, err


def test_3_different_sample_counts_across_variants_are_refused(capsys, tmp_path):
    a, b = _samples(tmp_path / "a.jsonl", 4), _samples(tmp_path / "b.jsonl", 2)
    code, err = _cli(capsys, "evaluate", "--samples", f"base={a}", f"sft={b}", "--out", tmp_path / "r.json")
    assert code == 1 and "b.jsonl" in err and "samples per prompt" in err, err


def test_3_nan_and_infinity_in_a_row_are_refused(capsys, tmp_path):
    for bad in (
        '{"text": "Good text here.", "category": NaN}',
        '{"text": "Good text.", "category": Infinity}',
    ):
        path = _jsonl(tmp_path / "c.jsonl", [{"text": "A document.", "category": "a"}, bad])
        code, err = _cli(capsys, "annotate", "--corpus", path, "--out", tmp_path / "o")
        assert code == 1 and "c.jsonl:2" in err and "NaN" in err, err


def test_3_results_json_is_strict(tmp_path):
    from anchorlm.io import write_json

    write_json(tmp_path / "r.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
        "a": None,
        "b": [None, 1.0],
    }


# --- 4. a named pipe is not read twice ------------------------------------------------------------
def test_4_a_named_pipe_as_corpus_is_refused_at_once(tmp_path):
    fifo = tmp_path / "corpus.jsonl"
    os.mkfifo(fifo)
    proc = subprocess.run(
        [sys.executable, "-m", "anchorlm.cli", "annotate", "--corpus", str(fifo), "--out", str(tmp_path / "o")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "corpus.jsonl" in proc.stderr and "not a regular file" in proc.stderr


# --- 5. tracebacks -----------------------------------------------------------------------------------
def _results(variants):
    return {"variants": variants}


def test_5_report_of_samples_without_prompts(capsys, tmp_path):
    fig = {"diversity": {"embedding_distance": 0.5, "vendi": 2.0, "attribute_entropy": 1.0, "distinct_2": 0.9},
           "quality": {"style_adherence": 0.0, "fluency_nll": 4.0},
           "examples": [{"response": "a text"}]}  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps(_results({"base": fig})))
    code, err = _cli(capsys, "report", "--results", tmp_path / "r.json", "--out", tmp_path / "rep")
    assert code == 0, err
    assert "a text" in (tmp_path / "rep/report.md").read_text()


def test_5_a_partial_results_json_is_named(capsys, tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(_results({"base": {"diversity": {}, "quality": {}}})))
    code, err = _cli(capsys, "report", "--results", tmp_path / "r.json", "--out", tmp_path / "rep")
    assert code == 1 and "r.json" in err and "embedding_distance" in err and "base" in err, err


@pytest.mark.parametrize(
    "override,named",
    [
        ("corpus.max_chars_per_category.x=1", "corpus.max_chars_per_category is a value"),
        ("pretrain.lr=[1", "pretrain.lr=[1"),
        ("=3", "section.field=value"),
    ],
)
def test_5_bad_overrides_are_named(capsys, tmp_path, override, named):
    code, err = _cli(capsys, "annotate", "--config", "smoke", "--set", override, "--out", tmp_path / "o")
    assert code == 2 and named in err and "Traceback" not in err, err


def test_5_a_dict_category_with_the_cap_on_is_named(capsys, tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"text": "Some text.", "category": {"a": 1}, "id": "doc-7"}])
    code, err = _cli(capsys, "annotate", "--corpus", path, "--out", tmp_path / "o",
                     *_sets("corpus.max_chars_per_category=100"))  # fmt: skip
    assert code == 1 and "c.jsonl:1" in err and "'category'" in err, err


def test_5_yaml_aliases_that_expand_without_bound_are_refused(capsys, tmp_path):
    lines = ["annotate:", "  llm:", "    vllm_args:", "      a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"      a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    code, err = _cli(capsys, "annotate", "--config", recipe, "--out", tmp_path / "o")
    assert code == 2 and "bomb.yaml" in err and "aliases" in err, err


def test_5_ctrl_c_says_interrupted_without_a_traceback(tmp_path):
    docs = [{"text": f"Document number {i}. " * 50, "category": "a"} for i in range(40000)]
    corpus = _jsonl(tmp_path / "c.jsonl", docs)
    proc = subprocess.Popen(
        [sys.executable, "-m", "anchorlm.cli", "annotate", "--corpus", corpus, "--out", str(tmp_path / "o")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # as a terminal starts it: a suite run in the background (nohup, `cmd &`) ignores SIGINT, and
        # a child would inherit that, so Python would install no Ctrl-C handler in it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (tmp_path / "o").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err


# --- 6. sampling nothing is an error ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(stages):
    out = stages / "model"
    assert main(["pretrain", "--data", str(stages / "blocks"), "--tokenizer", str(stages / "tok"),
                 "--out", str(out), *_sets(*TINY)]) == 0  # fmt: skip
    return out


def test_6_a_prompt_file_of_blank_rows_is_refused(capsys, tiny_model, tmp_path):
    (tmp_path / "p.jsonl").write_text("\n\n   \n")
    code, err = _cli(capsys, "sample", "--model", tiny_model, "--prompts", tmp_path / "p.jsonl",
                     "--out", tmp_path / "s.jsonl")  # fmt: skip
    assert code == 1 and "p.jsonl" in err and "no prompts" in err, err
    assert not (tmp_path / "s.jsonl").exists()


@pytest.mark.parametrize(
    "topics,named", [(",", "no topics"), ("food,evil<|/ann|><|endoftext|>", "evil<|/ann|><|endoftext|>")]
)
def test_6_bad_forced_topics_are_refused(capsys, tiny_model, tmp_path, topics, named):
    prompts = _jsonl(tmp_path / "p.jsonl", [{"id": 0, "prompt": "Say something."}])
    code, err = _cli(capsys, "sample", "--model", tiny_model, "--prompts", prompts, "--force-topics", topics,
                     "--out", tmp_path / "s.jsonl")  # fmt: skip
    assert code == 1 and "--force-topics" in err and named in err, err


# --- 7. output directories ---------------------------------------------------------------------------
@pytest.mark.parametrize("out", ["", "/"])
def test_7_an_empty_or_root_out_is_refused(capsys, tmp_path, out):
    code, err = _cli(capsys, "annotate", "--corpus", ASSETS / "mini_corpus.jsonl", "--out", out)
    assert code == 1 and "--out" in err, err


def test_7_out_dir_root_in_a_recipe_is_refused(capsys, tmp_path):
    code, err = _cli(capsys, "demo", "--config", "smoke", *_sets("out_dir=/"))
    assert code in (1, 2) and "out_dir" in err, err


def test_7_demo_into_a_foreign_folder_is_refused_unless_asked(capsys, tmp_path):
    mine = tmp_path / "mine"
    (mine / "samples").mkdir(parents=True)
    (mine / "report.md").write_text("my own notes")
    (mine / "samples/base.jsonl").write_text('{"prompt_id": 0, "response": "mine"}\n')
    code, err = _cli(capsys, "demo", "--config", "smoke", "--out", mine)
    assert code == 1 and "not made by anchorlm" in err and "--reuse-dir" in err, err
    assert (mine / "report.md").read_text() == "my own notes"
    assert not (mine / "annotate").exists()


# --- 8. smaller -----------------------------------------------------------------------------------------
def test_8_a_resumed_sharded_annotation_counts_each_document_once(capsys, tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    for s in range(2):
        _jsonl(d / f"s{s}.jsonl", [{"text": f"Doc {s}-{i} text.", "category": "a"} for i in range(50)])
    out = tmp_path / "o"
    assert _cli(capsys, "annotate", "--corpus", d, "--out", out)[0] == 0
    # as if killed half way through shard s1: its done marker and half its lines gone
    (out / "shards/s1.done").unlink()
    lines = (out / "shards/s1.jsonl").read_text().splitlines(keepends=True)
    (out / "shards/s1.jsonl").write_text("".join(lines[:20]))
    (out / "manifest.json").unlink()
    assert _cli(capsys, "annotate", "--corpus", d, "--out", out)[0] == 0
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["documents"] == 100 and counts["read"] == 100, counts


def test_8_duplicate_yaml_keys_are_refused(capsys, tmp_path):
    recipe = tmp_path / "dup.yaml"
    recipe.write_text("pretrain:\n  lr: 0.1\nsample:\n  n_samples: 2\npretrain:\n  seq_len: 64\n")
    code, err = _cli(capsys, "annotate", "--config", recipe, "--out", tmp_path / "o")
    assert code == 2 and "dup.yaml" in err and "pretrain" in err and "twice" in err, err


def test_8_duplicate_json_keys_in_a_row_are_refused(capsys, tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", ['{"text": "first text", "text": "second text"}'])
    code, err = _cli(capsys, "annotate", "--corpus", path, "--out", tmp_path / "o")
    assert code == 1 and "c.jsonl:1" in err and "'text'" in err and "twice" in err, err


def test_8_a_binary_config_file_is_named(capsys, tmp_path):
    recipe = tmp_path / "bin.yaml"
    recipe.write_bytes(b"\xff\xfe\x00binary")
    code, err = _cli(capsys, "annotate", "--config", recipe, "--out", tmp_path / "o")
    assert code == 2 and "bin.yaml" in err, err


def test_8_mixed_prompt_id_types_name_the_file(capsys, tmp_path):
    s = _jsonl(tmp_path / "mixed.jsonl", [{"prompt_id": p, "response": f"words {k} here"}
                                          for p in (0, "0b") for k in range(2)])  # fmt: skip
    code, err = _cli(capsys, "evaluate", "--samples", f"base={s}", "--out", tmp_path / "r.json")
    assert code == 1 and "mixed.jsonl" in err and "prompt_id" in err, err
