from anchorlm import format as F
from anchorlm.config import PosttrainConfig
from anchorlm.data.examples import IGNORE, PadCollator, build_dataset, build_example

EX = {
    "instruction": "Tell me something.",
    "response": "Certainly!\nAtoms are small.\nHope this helps!",
    "tags": ["topic:science", "keyword:atoms"],
}


def _loss_text(tok, row):
    return tok.decode([i for i, lab in zip(row["input_ids"], row["labels"]) if lab != IGNORE])


def test_sft_loss_is_on_the_response_only(tiny_tokenizer):
    row = build_example(tiny_tokenizer, EX, "sft")
    assert _loss_text(tiny_tokenizer, row) == EX["response"] + F.EOS
    assert (
        tiny_tokenizer.decode(row["input_ids"])
        == F.USER + EX["instruction"] + F.ASSISTANT + EX["response"] + F.EOS
    )


def test_anchored_masks_prompt_and_annotation(tiny_tokenizer):
    row = build_example(tiny_tokenizer, EX, "anchored")
    assert tiny_tokenizer.decode(row["input_ids"]) == (
        F.USER + EX["instruction"] + F.ASSISTANT + F.render_annotation(EX["tags"]) + EX["response"] + F.EOS
    )
    assert _loss_text(tiny_tokenizer, row) == EX["response"] + F.EOS
    assert all(lab == i or lab == IGNORE for i, lab in zip(row["input_ids"], row["labels"]))


def test_value_only_masking_keeps_keys_and_delimiters(tiny_tokenizer):
    row = build_example(tiny_tokenizer, EX, "anchored", value_only=True)
    assert _loss_text(tiny_tokenizer, row) == "<|ann|>topic: keyword:<|/ann|>" + EX["response"] + F.EOS
    unmasked = build_example(tiny_tokenizer, EX, "anchored", mask_annotation=False)
    assert _loss_text(tiny_tokenizer, unmasked) == F.render_annotation(EX["tags"]) + EX["response"] + F.EOS


def test_value_mask_fraction_is_respected(tiny_tokenizer):
    rows, n = build_dataset(
        tiny_tokenizer, [EX] * 400, PosttrainConfig(method="anchored", value_mask_fraction=0.25)
    )
    assert 70 <= n <= 130  # Binomial(400, 0.25): mean 100, sd 8.7
    rows, n = build_dataset(
        tiny_tokenizer, [EX] * 400, PosttrainConfig(method="sft", value_mask_fraction=0.25)
    )
    assert n == 0


def test_collator_pads_with_ignored_labels(tiny_tokenizer):
    a, b = (
        build_example(tiny_tokenizer, EX, "sft"),
        build_example(tiny_tokenizer, {**EX, "response": "Hi"}, "sft"),
    )
    batch = PadCollator(tiny_tokenizer.pad_token_id)([a, b])
    n = len(a["input_ids"])
    k = len(b["input_ids"])
    assert batch["input_ids"].shape == (2, n)
    assert batch["attention_mask"][1].tolist() == [1] * k + [0] * (n - k)
    assert batch["labels"][1, k:].tolist() == [IGNORE] * (n - k)


def test_replay_rows_are_plain_text_with_full_loss(tiny_tokenizer):
    import pytest

    from anchorlm.config import PosttrainConfig
    from anchorlm.data.examples import replay_rows
    from anchorlm.format import EOS

    cfg = PosttrainConfig(replay_fraction=0.5, replay_max_chars=40, max_len=32)
    rows = replay_rows(tiny_tokenizer, ["a first document " * 20, "another one"], 6, cfg)
    assert len(rows) == 6
    eos = tiny_tokenizer.convert_tokens_to_ids(EOS)
    for r in rows:
        assert r["labels"] == r["input_ids"] and len(r["input_ids"]) <= 32
        assert r["input_ids"][-1] == eos or len(r["input_ids"]) == 32
    assert rows == replay_rows(tiny_tokenizer, ["a first document " * 20, "another one"], 6, cfg)
    with pytest.raises(ValueError, match="replay"):
        replay_rows(tiny_tokenizer, [], 2, cfg)


def test_anchored_replay_rows_follow_the_method_masking(tiny_tokenizer):
    """Anchored replay: an SFT instruction, the chunk's annotation (masked) and its text (in the
    loss); with method sft the same rows without the annotation: the control."""
    from anchorlm.data.examples import anchored_replay_rows

    chunks = [{"text": "Stars burn hydrogen.", "tags": ["topic:science", "keyword:stars"]}]
    for method, ann in (("anchored", True), ("sft", False)):
        cfg = PosttrainConfig(method=method, anchored_replay=1.0)
        rows = anchored_replay_rows(tiny_tokenizer, chunks, ["Tell me something."], 3, cfg)
        assert len(rows) == 3
        text = tiny_tokenizer.decode(rows[0]["input_ids"])
        assert text.startswith(F.USER + "Tell me something." + F.ASSISTANT)
        assert (F.render_annotation(chunks[0]["tags"]) in text) == ann
        assert _loss_text(tiny_tokenizer, rows[0]) == "Stars burn hydrogen." + F.EOS


def test_annotation_dropout_leaves_that_share_of_chunks_unannotated(tiny_tokenizer, tmp_path):
    import json

    from datasets import load_from_disk

    from anchorlm.data.pack import pack

    docs = [{"chunks": [{"tags": ["topic:food"], "text": f"Soup number {i}."}]} for i in range(400)]
    m = pack(docs, tiny_tokenizer, True, 16, tmp_path / "d", seed=3, annotation_dropout=0.3)
    assert 90 <= m["counts"]["annotations_dropped"] <= 150  # Binomial(400, 0.3): mean 120, sd 9.2
    opened = sum(load_from_disk(str(tmp_path / "d"))["input_ids"], []).count(
        tiny_tokenizer.convert_tokens_to_ids(F.ANN_OPEN)
    )
    assert opened + m["counts"]["annotations_dropped"] <= 400  # the dropped ones are really gone
    again = pack(docs, tiny_tokenizer, True, 16, tmp_path / "e", seed=3, annotation_dropout=0.3)
    assert again["counts"] == m["counts"]  # seeded
    assert json.loads((tmp_path / "d/manifest.json").read_text())["config"]["annotation_dropout"] == 0.3
