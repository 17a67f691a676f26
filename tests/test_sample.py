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
