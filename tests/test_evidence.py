"""The evidence parts of a study (tests/assets/evidence-tiny.yaml, tiny models): prompt sets shipped
with anchorlm, CIs over seeds and prompts, content NLL on every sample, degenerate rates, the
mechanism table, plan following with Wilson intervals and a before/after CI, the dose-response; in
the keys the results JSON promises."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ASSETS, ROOT


@pytest.fixture(scope="module")
def evidence(tmp_path_factory):
    d = tmp_path_factory.mktemp("evidence")
    cmd = [sys.executable, "-m", "anchorlm.cli", "reproduce", "--config", str(ASSETS / "evidence-tiny.yaml"),
           "--out", str(d / "run"), "--docs", str(d / "docs")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return d, json.loads((d / "docs" / "results.json").read_text())


def test_protocol_and_prompt_sets(evidence):
    _, res = evidence
    assert res["protocol"]["n_seeds"] == 2
    assert res["protocol"]["prompt_sets"] == {"instructions-dev": 8, "noveltybench": 100}
    nb = res["prompt_sets"]["noveltybench"]
    assert nb["n_prompts"] == 100 and set(nb["variants"]) == {"base", "sft", "aat"}
    assert set(nb["summary"]) == {"embedding_distance", "attribute_entropy", "vendi"}
    d = nb["differences"]["embedding_distance"]
    lo, hi = d["ci95"]
    assert lo <= d["difference"] <= hi
    # the study's own set is the ablations': the same figures as the prompt set's
    own = res["prompt_sets"]["instructions-dev"]["variants"]["aat"]["diversity"]
    assert own == res["variants"]["aat"]["diversity"]


def test_quality_and_intervals_over_seeds_and_prompts(evidence):
    _, res = evidence
    q = res["variants"]["sft"]["quality"]
    for k in ("content_nll", "content_nll_ci95", "repetition", "tag_echo", "length_words", "empty_responses"):
        assert k in q, k
    lo, hi = q["content_nll_ci95"]
    assert lo <= q["content_nll"] <= hi
    per = res["variants"]["sft"]["per_seed"]["diversity"]["embedding_distance"]
    assert len(per) == 2 and np.isclose(
        np.mean(per), res["variants"]["sft"]["diversity"]["embedding_distance"]
    )
    assert 0 < res["variants"]["sft"]["diversity"]["attribute_confidence"] <= 1
    assert res["variants"]["base"]["ceiling"]["attribute_entropy"] > 0


def test_quality_rates_are_paired_against_sft_and_judged(evidence):
    """Each quality rate (style, empty, repeats, tag echo, value echo) per prompt in the cells: its
    paired AAT - SFT difference is the difference of the variants' means (every prompt has as many
    samples), inside its interval; the report judges matched quality on the means and at 95%."""
    from anchorlm.metrics.registry import RATES

    d, res = evidence
    assert RATES == ("style_adherence", "empty_responses", "repetition", "tag_echo", "value_echo")
    for name, ps in res["prompt_sets"].items():
        sft, aat = ps["variants"]["sft"]["quality"], ps["variants"]["aat"]["quality"]
        for m in RATES:
            diff = ps["differences"][m]
            assert diff["difference"] == pytest.approx(aat[m] - sft[m], abs=1e-12), (name, m)
            lo, hi = diff["ci95"]
            assert lo <= diff["difference"] <= hi
            lo, hi = aat[f"{m}_ci95"]
            assert lo <= aat[m] <= hi
        assert sft["value_echo"] == 0  # no annotation to echo
    md = (d / "docs" / "results.md").read_text()
    assert "| quality | SFT | AAT | AAT - SFT (95% CI) | matched if AAT is | on the means | at 95% |" in md
    assert "| value echo |" in md


def test_matched_quality_on_the_means_and_over_the_interval():
    """study.verdict.matched: the protocol's bounds (content NLL within 5%, style within 2 points
    either way, degenerate rates at most 2 points above), on the means and over the paired CI."""
    from anchorlm.study.verdict import matched

    sft = {"content_nll": 4.0, "style_adherence": 1.0, "empty_responses": 0.0, "value_echo": 0.0}
    aat = {"content_nll": 4.1, "style_adherence": 0.985, "empty_responses": 0.01, "value_echo": 0.026}
    diffs = {"content_nll": {"difference": 0.1, "ci95": [-0.1, 0.25]},
             "style_adherence": {"difference": -0.015, "ci95": [-0.03, 0.0]},
             "empty_responses": {"difference": 0.01, "ci95": [0.0, 0.019]}}  # fmt: skip
    rows = {r["metric"]: r for r in matched(sft, aat, diffs)}
    assert rows["content_nll"]["on_means"] and not rows["content_nll"]["at_95"]  # 0.25 > 5% of 4.0
    assert rows["style_adherence"]["on_means"] and not rows["style_adherence"]["at_95"]
    assert rows["empty_responses"]["on_means"] and rows["empty_responses"]["at_95"]
    ve = rows["value_echo"]
    assert not ve["on_means"] and ve["at_95"] is None and ve["difference"] == pytest.approx(0.026)
    assert ve["check"] == "value_echo_within_2_points"
    # repetition and tag echo not measured (results scored before the rates): neither passed nor judged
    assert rows["repetition"]["on_means"] is None and rows["tag_echo"]["at_95"] is None
    # intervals inside the bounds pass
    inside = {"content_nll": {"difference": 0.1, "ci95": [-0.1, 0.19]},
              "style_adherence": {"difference": -0.015, "ci95": [-0.019, 0.01]}}  # fmt: skip
    rows = {r["metric"]: r for r in matched(sft, aat, inside)}
    assert rows["content_nll"]["at_95"] and rows["style_adherence"]["at_95"]
    assert not matched(sft, {**aat, "style_adherence": 0.97}, inside)[1]["on_means"]  # 3 points below


def test_the_bar_checks_matched_quality_on_the_means_value_echo_included():
    """The bar's quality checks are `matched` on the means: value echo counts (2.6 points above SFT's
    0 fails), and a rate the results lack fails its check instead of passing it."""
    from types import SimpleNamespace as NS

    from anchorlm.metrics.registry import PAPER_METRICS
    from anchorlm.study.verdict import bar

    def res(aat_q):
        s = NS(gap_closed=1.0, gap_closed_ci95=[0.5, 1.5], collapse={"sft": 0.4, "aat": 0.0},
               collapse_ci95={"sft": [0.2, 0.6], "aat": [-0.1, 0.1]})  # fmt: skip
        q = {"style_adherence": 0.99, "content_nll": 4.0, "empty_responses": 0.0, "repetition": 0.01,
             "tag_echo": 0.0, "value_echo": 0.0}  # fmt: skip
        size = NS(non_embedding_params=1, summary={m: s for m in PAPER_METRICS},
                  variants={"sft": NS(quality=q), "aat": NS(quality={**q, **aat_q})})  # fmt: skip
        return NS(sizes={"one": size}, headline="aat", ablations=NS(variants={}))

    assert bar(res({})).met
    echo = bar(res({"value_echo": 0.026}))
    assert not echo.met and not echo.checks["value_echo_within_2_points"]
    assert echo.checks["tag_echo_within_2_points"] and echo.checks["content_nll_within_5_percent"]
    assert not bar(res({"repetition": None})).checks["repetition_within_2_points"]


def test_mechanism_rows(evidence):
    _, res = evidence
    rows = {r["variant"]: r for r in res["mechanism"]}
    assert {"sft", "aat", "aat_no_annotation", "aat_sft_plans", "aat_mask_all", "aat_constant"} <= set(rows)
    assert rows["aat_sft_plans"]["inference"] == "plans drawn from the SFT data"
    assert rows["aat"]["training"] != rows["aat_mask_all"]["training"]
    # each row carries SFT's collapse, so its gap closed reads "no collapse" only where SFT collapsed
    summary = res["ablations"]["summary"]["aat"]["embedding_distance"]
    assert rows["aat"]["collapse_sft_embedding_distance"] == summary["collapse"]["sft"]


def test_plan_following_has_power(evidence):
    d, res = evidence
    pf = res["plan_following"]
    assert set(pf["variants"]) == {"aat", "annotated", "aat_mask_all"}
    a = pf["variants"]["aat"]
    assert a["samples_per_prompt_and_topic"] == 4
    lo, hi = a["forced_other_wilson95"]
    assert lo <= a["forced_other"] <= hi
    assert np.isclose(a["lift_other"], a["forced_other"] - a["unforced_other"])
    # a seed's Wilson interval is not averaged over seeds into a number: the pooled one is above
    mean = res["ablations"]["variants"]["aat"]["anchoring"]
    assert mean["forced_other_wilson95"] is None and np.isclose(mean["forced_other"], a["forced_other"])
    diff = pf["after_minus_before"]
    assert diff["ci95"][0] <= diff["difference"] <= diff["ci95"][1]
    # another post-training's writer against the headline's: paired, so its difference is the
    # difference of the two pooled rates (every prompt has as many forced samples in each)
    other = pf["minus_headline"]["aat_mask_all"]
    assert other["headline"] == "aat" and set(pf["minus_headline"]) == {"aat_mask_all"}
    assert np.isclose(other["difference"], pf["variants"]["aat_mask_all"]["forced_other"] - a["forced_other"])
    # its interval, recomputed from the cells' forced scores aligned here by seed and prompt name
    from anchorlm.study.aggregate import hierarchical

    def per_prompt(v):  # [seed][prompt] forced-other rates, prompts in name order
        rows = []
        for seed in (0, 1):
            (path,) = (d / "run" / "models").glob(f"*-s{seed}/{v}-*/samples/*.forced-*.json")
            rates = json.loads(path.read_text())["forced_other_per_prompt"]
            rows.append([rates[p] for p in sorted(rates)])
        return np.array(rows)

    ev = res["config"]["base"]["evaluate"]
    ci = hierarchical(per_prompt("aat_mask_all") - per_prompt("aat"), ev["bootstrap"], ev["seed"])
    assert np.allclose(other["ci95"], ci)
    md = (d / "docs" / "results.md").read_text()
    assert "## Plan following" in md and "## The mechanism" in md and "## Dose-response" in md
    assert "aat_mask_all minus aat, forced other topics:" in md


def test_dose_response_levels(evidence):
    _, res = evidence
    assert [p["epochs"] for p in res["dose"]["points"]] == [1, 2]
    assert set(res["dose"]["points"][0]["summary"]) >= {"attribute_entropy", "embedding_distance"}


def test_given_plans_come_from_the_sft_data(evidence):
    d, _ = evidence
    sft_tags = set()
    for line in (d / "run" / "sft_data" / "train.jsonl").read_text().splitlines():
        sft_tags.add(" ".join(json.loads(line)["tags"]))
    files = [p for p in (d / "run" / "models").rglob("anchored-*.jsonl") if '"given"' in p.read_text()[:2000]]
    assert files
    rows = [json.loads(x) for x in files[0].read_text().splitlines()]
    assert all(r["annotation_raw"] in sft_tags for r in rows)


def test_wilson_interval_matches_scipy():
    from scipy.stats import binomtest

    from anchorlm.metrics.fidelity import wilson

    for k, n in ((7, 40), (0, 10), (10, 10), (33, 128)):
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert np.allclose(wilson(k, n), [ci.low, ci.high], atol=1e-6)


def test_anchoring_counts_plans_whose_topic_the_corpus_has():
    """`plan_topic_in_corpus`: the share of free samples whose own plan names one of the corpus's
    categories, as the annotator writes them (an invented topic, or none, cannot be followed);
    `free_agreement` over the samples whose plan names a topic; none for plans given to the model."""
    from anchorlm.metrics.fidelity import anchoring

    tags = [
        ["topic:food", "keyword:x"],
        ["topic:books"],
        ["keyword:y"],
        ["topic:Computer_Science"],
        ["topic:food"],
    ]
    rows = [{"prompt_id": i % 2, "annotation": t, "anchors": "iid"} for i, t in enumerate(tags)]
    labels = ["food", "love", "food", "Computer Science", "love"]
    a = anchoring(rows, labels, ["food", "love", "Computer Science"])
    assert a["plan_topic_in_corpus"] == 3 / 5
    # food = food, books != love, Computer_Science = Computer Science, food != love
    assert a["free_agreement"] == 2 / 4
    assert a["with_topic"] == 4 / 5
    assert anchoring(rows, labels)["plan_topic_in_corpus"] is None
    given = [{**r, "anchors": "given"} for r in rows]
    assert anchoring(given, labels, ["food"])["plan_topic_in_corpus"] is None


def test_forced_plans_compare_labels_as_the_annotator_writes_topics():
    """A category named with a space ("Computer Science") is `topic:Computer_Science` in a plan:
    a response the classifier labels "Computer Science" follows that plan."""
    from anchorlm.metrics.fidelity import forced_plan

    rows = [{"prompt_id": f"p{i}|t", "annotation_prefix": [p]} for i, p in
            enumerate(["topic:Computer_Science", "topic:Computer_Science", "topic:food"])]  # fmt: skip
    f = forced_plan(
        rows, ["Computer Science", "food", "food"], ["food"], {"Computer Science": 0.9, "food": 1.0}
    )
    assert f["forced_by_topic"] == {"Computer_Science": 0.5, "food": 1.0}
    assert f["forced_other"] == 0.5 and f["forced_sft"] == 1.0 and f["classifier_accuracy_other"] == 0.9


def test_shipped_prompt_sets_are_disjoint_from_each_other_and_from_the_sft_instructions():
    """A dev set chooses recipes and a test set is only reported: no prompt may be in two sets, and
    none may be an SFT instruction (the demo's reported prompts are SFT instructions held out of
    training, so `requests-dev`, of their kind, must avoid them all)."""
    from anchorlm.data.sft import INSTRUCTIONS
    from anchorlm.io import read_jsonl
    from anchorlm.prompts import prompt_file, shipped

    assert {"instructions", "instructions-dev", "requests-dev", "noveltybench"} <= set(shipped())
    seen: dict = {}
    for name in shipped():
        rows = list(read_jsonl(prompt_file(name)))
        assert len({r["id"] for r in rows}) == len(rows), name
        for r in rows:
            key = " ".join(r["prompt"].lower().split())
            assert key not in seen, f"{r['prompt']!r} is in {name} and {seen[key]}"
            seen[key] = name
    sft = {" ".join(x.lower().split()) for x in INSTRUCTIONS}
    assert not sft & set(seen), sft & set(seen)
