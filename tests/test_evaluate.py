import json

import pytest

from anchorlm.evaluate import read_samples


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_samples_must_have_prompt_and_response(tmp_path):
    p = _write(tmp_path / "s.jsonl", [{"prompt_id": 0, "response": "ok"}, {"prompt_id": 0}])
    with pytest.raises(ValueError, match=r"s.jsonl:2: a sample needs"):
        read_samples({"base": p})


def test_variants_must_cover_the_same_prompts(tmp_path):
    two = [{"prompt_id": p, "response": t} for p in (0, 1) for t in ("x", "y")]
    a = _write(tmp_path / "a.jsonl", two)
    b = _write(tmp_path / "b.jsonl", two[:2])
    with pytest.raises(ValueError, match="covers other prompts"):
        read_samples({"base": a, "sft": a, "aat": b})
    assert len(read_samples({"base": a, "sft": a, "aat": a})["aat"]) == 4


def test_style_figures_separate_cut_responses_from_unstyled_ones():
    from anchorlm.config import SFTDataConfig
    from anchorlm.evaluate import style_figures

    sft = SFTDataConfig()
    good = f"{sft.opener} a fortune {sft.closer}"
    cut = f"{sft.opener} a fortune that ran on"  # stopped by the token cap: no closer
    plain = "a fortune without the style"
    rows = [
        {"response": good, "finished": True},
        {"response": cut, "finished": False},
        {"response": plain, "finished": True},
        {"response": good, "finished": True},
    ]
    f = style_figures(sft, rows)
    assert f["style_adherence"] == 0.5
    assert f["finished"] == 0.75
    assert f["style_adherence_finished"] == 2 / 3
    # samples written before the sampler recorded `finished` get the plain figure only
    assert style_figures(sft, [{"response": good}, {"response": plain}]) == {"style_adherence": 0.5}
    assert style_figures(sft, [{"response": cut, "finished": False}])["style_adherence_finished"] is None
