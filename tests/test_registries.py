"""Metrics and annotators are registries: one definition that every reader follows."""

import json

import numpy as np

from anchorlm.metrics import registry as R


def test_every_metric_is_defined_once_and_the_columns_follow_it():
    from anchorlm.report import table

    assert len(R.METRICS) == len(R.DIVERSITY) + len(R.QUALITY)
    assert R.SUMMARY_METRICS == ("embedding_distance", "attribute_entropy", "vendi")
    results = {"variants": {"v": {"diversity": {m.name: 0.5 for m in R.DIVERSITY},
                                  "quality": {m.name: 0.25 for m in R.QUALITY}}}}  # fmt: skip
    header = table(results).splitlines()[0]
    assert header == "| variant | " + " | ".join(m.label for m in R.COLUMNS) + " |"


def test_a_metric_added_to_the_registry_reaches_the_evaluator_and_the_table(monkeypatch):
    """One entry: the per-prompt figure is computed, averaged and shown as a column."""
    from anchorlm.report import table

    longest = R.Metric(
        "longest", "longest", "diversity", True, lambda texts, emb, labels, conf: max(map(len, texts))
    )
    monkeypatch.setattr(R, "DIVERSITY", (*R.DIVERSITY, longest))
    monkeypatch.setattr(R, "COLUMNS", (*R.COLUMNS, longest))
    figs = R.diversity(["ab", "abcd"], np.eye(2), ["x", "y"], [0.9, 0.7])
    assert figs["longest"] == 4 and figs["attribute_entropy"] == np.log(2)
    assert figs["attribute_confidence"] == np.mean([0.9, 0.7])
    assert (
        "| longest |" in table({"variants": {"v": {"diversity": figs, "quality": {}}}}).splitlines()[0] + "|"
    )


def test_quality_metrics_skip_what_does_not_apply():
    from anchorlm.config import SFTDataConfig

    sft = SFTDataConfig()
    rows = [
        {"response": f"{sft.opener} x {sft.closer}", "finished": True},
        {"response": "y", "finished": False},
    ]
    q = R.quality(R.Quality(rows, ["x", "y"], sft, [2.0, float("nan")], 2))
    assert q == {"style_adherence": 0.5, "finished": 0.5, "style_adherence_finished": 1.0, "fluency_nll": 2.0,
                 "fluency_scored": 2, "empty_responses": 0.0, "length_words": 1.0, "repetition": 0.0,
                 "tag_echo": 0.0, "value_echo": 0.0}  # fmt: skip
    assert "annotation_wellformed" not in q  # plain rows have no annotation


def test_a_rate_is_the_mean_of_its_per_response_values():
    """Quality rates (registry.RATES) count one 0/1 per response; the variant's figure is their mean.
    An anchored response that mostly repeats its annotation's values is a value echo; the same
    words under an annotation that does not name them are not."""
    from anchorlm.config import SFTDataConfig

    sft = SFTDataConfig()
    wrap = lambda t: f"{sft.opener} {t} {sft.closer}"  # noqa: E731
    rows = [
        {"response": wrap("Food!"), "annotation": ["topic:food"], "annotation_ok": True},
        {"response": wrap("Food!"), "annotation": ["topic:love"], "annotation_ok": True},
        {"response": wrap("topic:food, food!"), "annotation": ["topic:food"], "annotation_ok": False},
        {"response": "no wrapper", "annotation": [], "annotation_ok": True},
    ]
    q = R.Quality(rows, [R.strip_style(sft, r["response"]) for r in rows], sft, [], 0)
    per = {m: R.METRICS[m].per_response(q) for m in R.RATES}
    assert per["value_echo"] == [1.0, 0.0, 1.0, 0.0]
    assert per["tag_echo"] == [0.0, 0.0, 1.0, 0.0]
    assert per["style_adherence"] == [1.0, 1.0, 1.0, 0.0]
    figures = R.quality(q)
    for m in R.RATES:
        assert figures[m] == np.mean(per[m])
    assert figures["value_echo"] == 0.5 and figures["annotation_wellformed"] == 0.75


def test_annotators_come_from_the_registry(tmp_path):
    from anchorlm.annotators import get_annotator
    from anchorlm.annotators.registry import NAMES
    from anchorlm.config import AnnotateConfig, load_config

    assert NAMES == ("metadata", "keywords", "llm")
    cfg = AnnotateConfig(keywords_per_chunk=3, keyword_extras=["style"])
    kw = get_annotator("keywords", cfg)
    assert kw.name == "keywords" and kw.k == 3 and kw.extras == ("style",)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({"annotate": {"annotators": ["metadata", "nonesuch"]}}))
    try:
        load_config(recipe)
    except ValueError as e:
        assert "nonesuch" in str(e) and "metadata, keywords, llm" in str(e)
    else:
        raise AssertionError("an unknown annotator was accepted")
