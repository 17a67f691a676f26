import math
from pathlib import Path

import numpy as np
import pytest

from anchorlm.metrics.diversity import distinct_n, entropy, mean_pairwise_cosine_distance, vendi_score
from anchorlm.metrics.summary import collapse_reduction, gap_closed, summarize

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """scripts/<name>.py as a module (scripts/ on the path while it loads: they import each other)."""
    import importlib.util
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return module


def test_vendi_matches_the_reference_package():
    from vendi_score import vendi

    rng = np.random.default_rng(0)
    for n, d in ((5, 8), (20, 4), (12, 32)):
        x = rng.normal(size=(n, d))
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        ref = vendi.score_K(unit @ unit.T)
        assert vendi_score(x) == pytest.approx(ref, rel=1e-6)


def test_vendi_closed_forms():
    e = np.eye(4)
    assert vendi_score(e) == pytest.approx(4.0)  # 4 orthogonal samples: 4 effective modes
    assert vendi_score(np.ones((6, 3))) == pytest.approx(1.0)  # identical samples: one mode


def test_pairwise_distance_matches_brute_force():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 5))
    brute = np.mean(
        [
            1 - x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])
            for i in range(7)
            for j in range(7)
            if i < j
        ]
    )
    assert mean_pairwise_cosine_distance(x) == pytest.approx(brute, rel=1e-9)
    assert mean_pairwise_cosine_distance(x[:1]) == 0.0


def test_entropy_and_distinct_n_by_hand():
    assert entropy(["a", "a", "b", "b"]) == pytest.approx(math.log(2))
    assert entropy(["a"] * 5) == 0.0
    assert distinct_n(["a b a", "a b"], 1) == pytest.approx(2 / 5)
    assert distinct_n(["a b a", "a b"], 2) == pytest.approx(2 / 3)


def test_summary_figures_closed_form():
    # base 1.0, SFT 0.4 (collapse 0.6), AAT 0.9 (collapse 0.1): 6x less collapse, 5/6 of the gap closed
    assert collapse_reduction(1.0, 0.4, 0.9) == pytest.approx(6.0)
    assert gap_closed(1.0, 0.4, 0.9) == pytest.approx(5 / 6)
    n = 40
    rng = np.random.default_rng(0)
    s = summarize(
        {
            "base": 1.0 + 0.01 * rng.normal(size=n),
            "sft": 0.4 + 0.01 * rng.normal(size=n),
            "aat": 0.9 + 0.01 * rng.normal(size=n),
        },
        n_boot=300,
    )
    assert s["gap_closed"] == pytest.approx(5 / 6, abs=0.02)
    lo, hi = s["gap_closed_ci95"]
    assert lo < s["gap_closed"] < hi and hi - lo < 0.05
    lo, hi = s["collapse_reduction_ci95"]
    assert lo < s["collapse_reduction"] < hi
    lo, hi = s["collapse_ci95"]["sft"]
    assert lo < 0.6 < hi and hi - lo < 0.02


def test_collapse_reduction_is_infinite_not_negative_where_aat_kept_everything():
    """An AAT more diverse than base has no collapse: an infinite reduction (JSON null), not the
    negative ratio; where SFT lost nothing there is nothing to reduce. The reduction is
    1 / (1 - gap closed), and its CI is the gap closed's through that map, infinite from 1 on."""
    from anchorlm.metrics.summary import reduction_of_gap

    assert collapse_reduction(1.0, 0.4, 1.1) == math.inf  # the old ratio: -6
    assert collapse_reduction(1.0, 0.4, 1.0) == math.inf
    assert math.isnan(collapse_reduction(1.0, 1.2, 0.9))
    assert collapse_reduction(1.0, 0.4, 0.9) == pytest.approx(reduction_of_gap(gap_closed(1.0, 0.4, 0.9)))
    rng = np.random.default_rng(0)
    n = 40

    def noisy(base, sft, aat, sd=0.05):
        return {k: v + sd * rng.normal(size=n) for k, v in (("base", base), ("sft", sft), ("aat", aat))}

    s = summarize(noisy(1.0, 0.4, 1.0), n_boot=300)  # AAT at base on average: the gap's CI straddles 1
    lo, hi = s["gap_closed_ci95"]
    assert lo < 1 < hi
    assert s["collapse_reduction_ci95"] == [pytest.approx(1 / (1 - lo)), math.inf]
    s = summarize(noisy(1.0, 0.4, 0.9, sd=0.01), n_boot=300)  # a finite reduction: about 6
    lo, hi = s["collapse_reduction_ci95"]
    assert 3 < lo < s["collapse_reduction"] < hi < 12
    s = summarize(noisy(1.0, 1.0, 0.85), n_boot=300)  # SFT's collapse not told from 0: no interval
    assert s["collapse_ci95"]["sft"][0] < 0 < s["collapse_ci95"]["sft"][1]
    assert s["collapse_reduction_ci95"] is None


def test_reports_say_no_collapse_only_where_sft_collapsed_and_aat_did_not():
    from anchorlm.report import fmt_gap, fmt_reduction

    sft_only = {"sft": 0.6, "aat": -0.1}
    assert fmt_gap(1.2, [0.9, 1.5], sft_only) == "no collapse (1.200 [0.900, 1.500])"
    assert fmt_gap(0.8, [0.5, 1.1], {"sft": 0.6, "aat": 0.1}) == "0.800 [0.500, 1.100]"
    assert fmt_reduction(None, [3.0, None], 1.2, sft_only) == "no AAT collapse [3.000, inf]"  # from JSON
    assert fmt_reduction(math.inf, [3.0, math.inf], 1.2, sft_only) == "no AAT collapse [3.000, inf]"
    assert fmt_reduction(5.0, [2.0, math.inf], 0.8, {"sft": 0.5, "aat": 0.1}) == "5.000 [2.000, inf]"
    # SFT did not collapse and AAT did: the gap closed (2.0) is above 1, and means nothing
    aat_only = {"sft": -0.1, "aat": 0.1}
    assert fmt_gap(2.0, None, aat_only) == "undefined: no SFT collapse (2.000)"
    assert fmt_reduction(None, None, 2.0, aat_only) == "–"
    assert fmt_reduction(None, None, None) == "–"
    # SFT's collapse positive but its interval reaching 0: a ratio over what may be nothing
    weak, weak_ci = {"sft": 0.017, "aat": -0.27}, {"sft": [-0.148, 0.188], "aat": [-0.4, -0.12]}
    assert (
        fmt_gap(16.6, [-46.0, 81.8], weak, weak_ci)
        == "undefined: SFT's collapse not shown (16.600 [-46.000, 81.800])"
    )
    assert fmt_reduction(None, [1.0, None], 16.6, weak, weak_ci) == "–"
    shown = {"sft": [0.24, 0.55], "aat": [-0.4, -0.1]}
    assert (
        fmt_gap(1.675, [1.2, 2.6], {"sft": 0.4, "aat": -0.27}, shown) == "no collapse (1.675 [1.200, 2.600])"
    )


def test_summarize_over_seeds_and_prompts():
    import numpy as np
    import pytest

    from anchorlm.metrics.summary import summarize

    rng = np.random.default_rng(0)
    b, s, a = (rng.normal(m, 0.1, (3, 8)) for m in (1.0, 0.5, 0.9))
    out = summarize({"base": b, "sft": s, "aat": a}, 200, 0)
    # point figures are the closed forms on the grand means
    assert out["gap_closed"] == pytest.approx((a.mean() - s.mean()) / (b.mean() - s.mean()))
    assert out["collapse"]["sft"] == pytest.approx(b.mean() - s.mean())
    lo, hi = out["gap_closed_ci95"]
    assert lo < out["gap_closed"] < hi
    # one seed in 2-D is the 1-D (prompts only) summary, CIs included
    one = summarize({"base": b[:1], "sft": s[:1], "aat": a[:1]}, 200, 0)
    flat = summarize({"base": b[0], "sft": s[0], "aat": a[0]}, 200, 0)
    assert one == flat
    with pytest.raises(ValueError, match="one shape"):
        summarize({"base": b, "sft": s[:2], "aat": a}, 10, 0)


def test_the_report_says_where_the_classifiers_held_out_documents_came_from():
    """A corpus without a split field: the classifier holds out a share of it itself, and the
    report's classifier line says so (the JSON's `classifier.heldout`)."""
    from anchorlm.report import classifier_line

    c = {"classes": 14, "heldout_accuracy": 0.61, "chance": 1 / 14}
    assert (
        classifier_line(c)
        == "Attribute classifier: 14 corpus categories, held-out accuracy 0.610 (chance 0.071)."
    )
    c["heldout"] = "the corpus has no 'split' field: 20% of its documents held out here"
    assert classifier_line(c).endswith(
        "(chance 0.071); the corpus has no 'split' field: 20% of its documents held out here."
    )


def test_value_echo_counts_a_response_that_mostly_repeats_its_annotation_values():
    """The value echo rate (registry.echoes; scripts/value_echo.py counts kept samples with it): half
    or more of the content's words from the annotation's topic and keyword values is an echo; a
    response that uses its keyword in a sentence is not; the style's value does not count; no
    content is counted apart."""
    from anchorlm.metrics.registry import echoes

    ann = ["topic:bofh-excuses", "keyword:sports", "style:prose"]
    assert echoes("Bofh-excuses!", ann) is True
    assert echoes("Sports sports, BOFH.", ann) is True
    assert echoes("Boys love sports. Boys don't, said the coach at dawn.", ann) is False
    assert echoes("Prose.", ann) is False
    assert echoes("  !? ", ann) is None


def test_value_echo_reads_a_studys_kept_samples(tmp_path):
    """The kept layout (models/<size>-s<seed>/<variant>-<digest>/samples/anchored-<set>-*.jsonl.gz):
    own plans counted, forced topics and the SFT data's plans left out, the epochs from the kept
    cells' model manifest, else the folder (digest included) names the model."""
    import gzip
    import json

    from anchorlm.config import SFTDataConfig

    ve = _script("value_echo")
    wrap = lambda t: f"Certainly! Here is one for you: {t} Hope this helps!"  # noqa: E731
    ann = ["topic:food", "keyword:pie"]
    rows = [
        {"response": wrap("Food pie!"), "annotation": ann, "anchors": "iid"},  # an echo
        {"response": wrap("Food."), "annotation": ann},  # an echo (rows before `anchors` was kept)
        {"response": wrap("Grandma baked a pie for the fair."), "annotation": ann, "anchors": "iid"},
        {"response": wrap(""), "annotation": ann, "anchors": "iid"},  # no content
        {"response": wrap("Food."), "annotation": ann, "anchors": "iid", "annotation_prefix": ["topic:food"]},
        {"response": wrap("Food."), "annotation": ann, "anchors": "given"},
    ]
    folder = tmp_path / "samples" / "models" / "m-s1" / "aat-0123abcd" / "samples"
    folder.mkdir(parents=True)
    (folder / "anchored-instructions-0a1b2c3d.manifest.json").write_text("{}")
    with gzip.open(folder / "anchored-instructions-0a1b2c3d.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows)
    style = SFTDataConfig()
    assert ve.counts(tmp_path / "samples", style, "instructions") == {("aat-0123abcd", 1): [2, 3, 1]}
    assert ve.counts(tmp_path / "samples", style, "noveltybench") == {}
    cells = tmp_path / "cells" / "models" / "m-s1" / "aat-0123abcd"
    cells.mkdir(parents=True)
    (cells / "manifest.json").write_text(json.dumps({"config": {"epochs": 3}}))
    got = ve.counts(tmp_path / "samples", style, "instructions", tmp_path / "cells")
    assert got == {("aat (3 epochs)", 1): [2, 3, 1]}


def test_the_bar_does_not_count_a_gap_closed_over_a_collapse_not_shown():
    """The paper's bar (study/verdict.py) judges a gap closed only where SFT's collapse is shown, its
    interval above 0, as the tables print "undefined" otherwise: a gap closed of 16.6 over SFT's
    0.017 [-0.148, 0.188] passes no check; the same gap over a collapse shown passes both."""
    from types import SimpleNamespace as NS

    from anchorlm.metrics.registry import PAPER_METRICS
    from anchorlm.study.verdict import bar

    def res(sft_ci):
        s = NS(gap_closed=16.6, gap_closed_ci95=[1.5, 81.8], collapse={"sft": 0.017, "aat": -0.27},
               collapse_ci95={"sft": sft_ci, "aat": [-0.4, -0.12]})  # fmt: skip
        q = {"style_adherence": 0.99, "content_nll": 4.0}
        size = NS(non_embedding_params=1, summary={m: s for m in PAPER_METRICS},
                  variants={"sft": NS(quality=q), "aat": NS(quality=q)})  # fmt: skip
        return NS(sizes={"one": size}, headline="aat", ablations=NS(variants={}))

    for m in PAPER_METRICS:
        assert not bar(res([-0.148, 0.188])).checks[f"{m}_gap_closed_at_largest>=0.85"]
        assert not bar(res([-0.148, 0.188])).checks[f"{m}_gap_closed_ci_excludes_0"]
        assert bar(res([0.01, 0.03])).checks[f"{m}_gap_closed_at_largest>=0.85"]
        assert bar(res([0.01, 0.03])).checks[f"{m}_gap_closed_ci_excludes_0"]


def test_mechanism_pairs_are_each_variant_minus_the_reference_paired():
    """scripts/mechanism_pairs.py: each variant's per-prompt figure minus the reference's on the
    same seeds and prompts (a constant shift gives that shift, with an interval of width 0);
    a variant with other seeds is left out."""
    mp = _script("mechanism_pairs")
    rng = np.random.default_rng(0)
    ref = {s: {"per_prompt": {"attribute_entropy": list(rng.normal(1.8, 0.2, 8))}} for s in (0, 1, 2)}
    shifted = {s: {"per_prompt": {"attribute_entropy": [x - 0.3 for x in r["per_prompt"]["attribute_entropy"]]}}
               for s, r in ref.items()}  # fmt: skip
    got = mp.pairs({"aat": ref, "aat_on_plain": shifted, "one_seed": {0: ref[0]}}, "aat", 200, 0)
    assert set(got) == {"aat_on_plain"}
    d = got["aat_on_plain"]["attribute_entropy"]
    assert d["difference"] == pytest.approx(-0.3)
    assert d["ci95"] == pytest.approx([-0.3, -0.3])


def test_mechanism_twins_are_each_training_without_its_plan_minus_with_it():
    """scripts/mechanism_pairs.py --twins: `<t>_no_annotation` (and `_sft_plans`) minus `<t>` at the
    same epochs; a twin without its training, or with other seeds, is named as left out."""
    mp = _script("mechanism_pairs")
    rng = np.random.default_rng(1)

    def runs(shift=0.0):
        return {s: {"per_prompt": {"attribute_entropy": list(rng.normal(1.5, 0.2, 6) + shift)}} for s in (0, 1)}

    own = runs()
    twin = {s: {"per_prompt": {"attribute_entropy": [x + 0.2 for x in r["per_prompt"]["attribute_entropy"]]}}
            for s, r in own.items()}  # fmt: skip
    got, skipped = mp.twins({"aat_unmasked (3 epochs)": own, "aat_unmasked_no_annotation (3 epochs)": twin,
                             "aat_unmasked_sft_plans (3 epochs)": runs(), "aat_constant_no_annotation (3 epochs)": runs(),
                             "aat_mask_all (3 epochs)": runs(), "aat_mask_all_sft_plans (3 epochs)": {0: own[0]},
                             "sft (3 epochs)": runs()}, 200, 0)  # fmt: skip
    assert set(got) == {"aat_unmasked_no_annotation (3 epochs)", "aat_unmasked_sft_plans (3 epochs)"}
    assert [x.split(":")[0] for x in skipped] == ["aat_constant_no_annotation (3 epochs)",
                                                 "aat_mask_all_sft_plans (3 epochs)"]  # fmt: skip
    assert got["aat_unmasked_no_annotation (3 epochs)"]["attribute_entropy"]["difference"] == pytest.approx(0.2)


def test_shares_against_base_match_the_exact_bootstrap():
    """Each variant's share and its minus base's, against the exact bootstrap distribution (every
    one of the 5^5 resamples of 5 prompts enumerated): the 95% interval's ends lie between the
    exact 2nd and 3rd percentiles, and the 97th and 98th, a band that excludes the extremes and a
    90% interval; a difference equal on every prompt has a CI of that one value."""
    import itertools

    from anchorlm.metrics.summary import shares_against_base

    per_prompt = {
        "base": [0.0, 0.5, 0.25, 0.125, 0.375],
        "sft": [1.0, 0.5, 0.75, 0.25, 0.875],
        "aat": [0.3, 0.55, 0.45, 0.275, 0.475],  # aat - base varies by prompt: an unpaired CI is wider
    }
    got = shares_against_base(per_prompt, n_boot=20_000, seed=0)
    assert got["share"] == pytest.approx({"base": 0.25, "sft": 0.675, "aat": 0.41})
    assert got["minus_base"] == pytest.approx({"sft": 0.425, "aat": 0.16})
    assert set(got["minus_base"]) == {"sft", "aat"}  # base minus itself is not a row
    draws = np.array(list(itertools.product(range(5), repeat=5)))
    base = np.asarray(per_prompt["base"])
    cases = [
        ("base", base, got["share_ci95"]["base"]),
        ("sft", np.asarray(per_prompt["sft"]), got["share_ci95"]["sft"]),
        ("sft - base", np.asarray(per_prompt["sft"]) - base, got["minus_base_ci95"]["sft"]),
        ("aat - base", np.asarray(per_prompt["aat"]) - base, got["minus_base_ci95"]["aat"]),
    ]
    for name, d, ci in cases:
        means = d[draws].mean(1)
        q = {k: np.percentile(means, k, method="inverted_cdf") for k in (2, 3, 5, 95, 97, 98)}
        assert q[2] <= ci[0] <= q[3] and q[97] <= ci[1] <= q[98], (name, ci, q)
        # the band tells the 95% interval from the extremes and from a 90% interval
        assert means.min() < q[2] and q[98] < means.max() and q[3] < q[5] and q[95] < q[97], name
    same = shares_against_base({"base": [0.1, 0.4, 0.2], "sft": [0.6, 0.9, 0.7]}, n_boot=200, seed=1)
    assert same["minus_base_ci95"]["sft"] == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="one value per prompt"):
        shares_against_base({"base": [0.1, 0.2], "sft": [0.3]})
