from anchorlm.config import SampleConfig
from anchorlm.sample import sample

PROMPTS = [{"id": 0, "prompt": "Tell me something."}, {"id": 1, "prompt": "Say a line you like."}]


def test_same_seed_same_samples_and_anchored_fields(smoke_run, tmp_path):
    cfg = SampleConfig(n_samples=3, max_new_tokens=12, max_annotation_tokens=6, batch_size=4, seeds=[7])
    a = sample(cfg, smoke_run / "models/aat", PROMPTS, tmp_path / "a.jsonl", anchored=True)
    b = sample(cfg, smoke_run / "models/aat", PROMPTS, tmp_path / "b.jsonl", anchored=True)
    assert a == b and len(a) == 6
    assert {(r["prompt_id"], r["index"]) for r in a} == {(p, k) for p in (0, 1) for k in range(3)}
    assert all("annotation_ok" in r and r["n_tokens"] <= 12 for r in a)
    c = sample(
        SampleConfig(**{**cfg.__dict__, "seeds": [8]}),
        smoke_run / "models/aat",
        PROMPTS,
        tmp_path / "c.jsonl",
        anchored=True,
    )
    assert [r["response"] for r in c] != [r["response"] for r in a]


def test_annotations_cut_at_the_cap_are_marked_and_said(smoke_run, tmp_path, capsys):
    """An annotation that reaches `max_annotation_tokens` unclosed is marked `annotation_cut` (and
    is never well-formed), one closed before the cap never is, and `sample` warns about the cap."""
    cfg = SampleConfig(n_samples=4, max_new_tokens=4, max_annotation_tokens=1, batch_size=8, seeds=[7])
    rows = sample(cfg, smoke_run / "models/aat", PROMPTS, tmp_path / "cut.jsonl", anchored=True)
    cut = [r for r in rows if r["annotation_cut"]]
    assert cut and all(r["annotation_tokens"] == 1 and not r["annotation_ok"] for r in cut)
    assert "reached sample.max_annotation_tokens (1)" in capsys.readouterr().out
    roomy = sample(SampleConfig(**{**cfg.__dict__, "max_annotation_tokens": 48}), smoke_run / "models/aat",
                   PROMPTS, tmp_path / "roomy.jsonl", anchored=True)  # fmt: skip
    for short, long in zip(rows, roomy):  # the same rows, drawn from the same random streams
        # cut at 1 token exactly where the model, given room, wrote a token before its close
        assert short["annotation_cut"] == (long["annotation_tokens"] >= 1)
        assert long["annotation_cut"] == (long["annotation_tokens"] >= 48)


def test_a_line_break_ends_an_annotation_unclosed(smoke_run, tmp_path, monkeypatch):
    """A token that holds a line break or tab (no training annotation has one) ends a self-written
    annotation there: the row is marked `annotation_break`, its annotation is neither well-formed nor
    cut, and no annotation holds such a token; without the rule the same model writes them."""
    import anchorlm.sample as sample_module

    def odd(text):  # whitespace other than a space
        return any(c.isspace() and c != " " for c in text)

    cfg = SampleConfig(n_samples=16, max_new_tokens=4, max_annotation_tokens=32, batch_size=32, seeds=[3],
                       temperature=1.5, top_p=1.0)  # fmt: skip
    model = smoke_run / "models/aat"
    rows = sample(cfg, model, PROMPTS, tmp_path / "rule.jsonl", anchored=True)
    broken = [r for r in rows if r["annotation_break"]]
    assert broken  # the smoke model at T = 1.5 writes them often (30 of 32 here)
    assert not any(odd(r["annotation_raw"]) for r in rows)
    for r in broken:
        assert not r["annotation_ok"] and not r["annotation_cut"] and r["annotation_tokens"] < 32
    # the stratified path draws its annotation pool under the same rule
    pooled = sample(SampleConfig(**{**cfg.__dict__, "anchors": "stratified", "anchor_pool": 2}), model, PROMPTS,
                    tmp_path / "pooled.jsonl", anchored=True)  # fmt: skip
    assert any(r["annotation_break"] for r in pooled) and not any(odd(r["annotation_raw"]) for r in pooled)
    monkeypatch.setattr(sample_module, "annotation_breaks", lambda tok: ())
    free = sample(cfg, model, PROMPTS, tmp_path / "free.jsonl", anchored=True)
    assert not any(r["annotation_break"] for r in free)
    assert any(odd(r["annotation_raw"]) for r in free)  # the model writes them where nothing ends it


def test_annotation_breaks_are_the_tokens_with_a_line_break_or_tab(smoke_run):
    """`annotation_breaks` names every token whose text has whitespace other than a space, and no
    token of a rendered annotation, whose tags are joined by single spaces."""
    from transformers import AutoTokenizer

    from anchorlm.format import annotation_breaks, encode_annotation

    tok = AutoTokenizer.from_pretrained(smoke_run / "models/aat")
    breaks = set(annotation_breaks(tok))
    texts = tok.batch_decode([[i] for i in range(len(tok))])
    lines = {i for i, t in enumerate(texts) if "\n" in t or "\t" in t or "\r" in t} - set(tok.all_special_ids)
    assert lines and lines <= breaks  # and the rest are other whitespace (\x0b, \x0c, ...), no text:
    assert all(any(c.isspace() and c != " " for c in texts[i]) for i in breaks)
    assert breaks & set(tok("one\ntwo\tthree", add_special_tokens=False)["input_ids"])
    tags = ["topic:food", "keyword:bread", "keyword:home-made", "style:prose"]
    assert not breaks & set(encode_annotation(tok, tags)[0])


def test_plain_sampling_has_no_annotation(smoke_run, tmp_path):
    rows = sample(
        SampleConfig(n_samples=2, max_new_tokens=8),
        smoke_run / "models/sft",
        PROMPTS,
        tmp_path / "p.jsonl",
        anchored=False,
    )
    assert len(rows) == 4 and all("annotation" not in r for r in rows)
    assert (tmp_path / "p.jsonl").read_text().count("\n") == 4


def test_choose_anchors_covers_distinct_topics_before_repeating():
    import random

    from anchorlm.sample import choose_anchors

    pool = ["topic:a keyword:x"] * 6 + ["topic:a keyword:y", "topic:b keyword:z", "topic:c keyword:w"]
    for seed in range(20):
        picks = choose_anchors(pool, 3, random.Random(seed))
        # three picks, three topics: the 6-times-drawn annotation cannot crowd out b and c
        assert sorted(pool[i].split()[0] for i in picks) == ["topic:a", "topic:b", "topic:c"]
        picks = choose_anchors(pool, 4, random.Random(seed))
        assert len({pool[i] for i in picks}) == 4  # every distinct annotation before any repeat
        picks = choose_anchors(pool, 12, random.Random(seed))
        assert len({pool[i] for i in picks[:4]}) == 4  # round one: each distinct annotation once
        x = [i for i in picks if pool[i] == "topic:a keyword:x"]
        assert len(x) == 3 and len(set(x)) == 3  # repeats of x reuse its other draws from the pool
    assert choose_anchors(pool, 5, random.Random(1)) == choose_anchors(pool, 5, random.Random(1))


def test_choose_anchors_orders_by_frequency_without_replacement():
    """Which topic:a annotation comes first follows the model's frequencies: x (drawn 9 times) before
    y (drawn once) in about 9 of 10 draws, as sampling without replacement gives."""
    import random

    from anchorlm.sample import choose_anchors

    pool = ["topic:a keyword:x"] * 9 + ["topic:a keyword:y"]
    first_x = sum(pool[choose_anchors(pool, 1, random.Random(s))[0]].endswith("x") for s in range(2000))
    assert abs(first_x / 2000 - 0.9) < 0.03


def test_temperature_zero_decodes_greedily(smoke_run):
    """Against a brute-force argmax decoder, one unpadded sequence at a time: prompts of different
    lengths are left-padded in the batch, which must not change what is decoded."""
    import torch

    from anchorlm.engine import Settings, generate
    from anchorlm.format import encode_prompt, eos_id
    from anchorlm.models import load_model

    model, tok = load_model(str(smoke_run / "models/sft"))
    seqs = [encode_prompt(tok, p["prompt"]) for p in PROMPTS]
    assert len({len(s) for s in seqs}) > 1
    got = generate(model, seqs, [0, 1], Settings(temperature=0, max_new_tokens=10, stop=(eos_id(tok),)), 0)
    for s, o in zip(seqs, got):
        ref = list(s)
        while len(ref) - len(s) < 10:
            with torch.no_grad():
                nxt = int(model(torch.tensor([ref])).logits[0, -1].argmax())
            if nxt == eos_id(tok):
                break
            ref.append(nxt)
        assert o.response == ref[len(s) :]
        assert (o.stop is not None) == (len(o.response) < 10)


def test_guidance_is_refused_where_it_cannot_run(tmp_path):
    """vLLM gives no logits of a second, unconditional sequence per step; plain samples have no
    annotation to guide by. Both are refused before any model is loaded."""
    import pytest

    with pytest.raises(ValueError, match="vLLM does not give"):
        sample(
            SampleConfig(backend="vllm", guidance_scale=1.5),
            "no-such-model",
            PROMPTS,
            tmp_path / "x.jsonl",
            True,
        )
    with pytest.raises(ValueError, match="needs anchored sampling"):
        sample(SampleConfig(guidance_scale=1.5), "no-such-model", PROMPTS, tmp_path / "y.jsonl", False)
    with pytest.raises(ValueError, match="appears more than once"):
        sample(
            SampleConfig(),
            "no-such-model",
            PROMPTS + [{"id": "0", "prompt": "again"}],
            tmp_path / "z.jsonl",
            False,
        )
