"""`anchorlm reproduce` end to end on tiny models (tests/assets/reproduce-tiny.yaml), as a user runs
it: every part of the study is in the JSON and the Markdown, a rerun reuses every cell and gives the
same numbers, and a changed recipe makes new cells."""

import json
import subprocess
import sys

import pytest
from conftest import ASSETS, ROOT

from anchorlm.precision import fast_bf16

REQUIRED = (
    "embedding_distance.gap_closed",
    "embedding_distance.collapse_reduction",
    "attribute_entropy.gap_closed",
    "attribute_entropy.collapse_reduction",
)


def _run(out, docs, *extra):
    cmd = [sys.executable, "-m", "anchorlm.cli", "reproduce", "--config", str(ASSETS / "reproduce-tiny.yaml")]
    proc = subprocess.run(
        cmd + ["--out", str(out), "--docs", str(docs), *extra], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((docs / "results.json").read_text()), proc.stdout


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    d = tmp_path_factory.mktemp("reproduce")
    first, _ = _run(d / "run", d / "docs")
    return d, first


def test_results_hold_every_part(study):
    d, res = study
    assert set(res["sizes"]) == {"a", "b"}
    for sz in res["sizes"].values():
        assert sz["non_embedding_params"] > 0 and sz["pretrain_tokens"] > 0
        assert set(sz["variants"]) == {"base", "sft", "aat"}
        for v in sz["variants"].values():
            assert {"embedding_distance", "attribute_entropy", "vendi"} <= set(v["diversity"])
            assert {"style_adherence", "fluency_nll"} <= set(v["quality"])
        for key in REQUIRED:
            m, f = key.split(".")
            assert f in sz["summary"][m]
        assert len(sz["summary"]["attribute_entropy"]["per_seed_gap_closed"]) == 2
    # the token rule: tokens_per_param x all parameters, in whole steps of 8 x 64 tokens
    for sz in res["sizes"].values():
        assert sz["pretrain_tokens"] == (1 * sz["params"]) // 512 * 512
    assert res["sizes"]["b"]["non_embedding_params"] > res["sizes"]["a"]["non_embedding_params"]
    ab = res["ablations"]["variants"]
    assert {"aat_on_plain", "aat_no_annotation", "aat_unmasked", "aat_stratified", "aat_vmf0"} <= set(ab)
    assert "annotation_wellformed" not in ab["aat_no_annotation"]["quality"]  # sampled plain
    for v in ("annotated", "aat", "aat_vmf0"):  # anchor fidelity of every anchored variant
        a = ab[v]["anchoring"]
        assert {"forced_sft", "forced_other", "classifier_accuracy", "free_agreement", "plan_entropy"} <= set(
            a
        )
        assert 0 <= a["plan_topic_in_corpus"] <= 1
        assert set(a["forced_by_topic"]) == {"science", "people"} and a["forced_samples"] == 3 * 2
    assert "anchoring" not in ab["aat_no_annotation"] and "anchoring" not in ab["sft"]
    assert all(len(f["examples"]) == 3 for f in ab.values())
    assert (
        res["summary"]["embedding_distance"]["gap_closed"]
        == res["sizes"]["b"]["summary"]["embedding_distance"]["gap_closed"]
    )
    assert [p["k"] for p in res["entropy_study"]["points"]] == [1, 3]
    assert res["entropy_study"]["points"][0]["sft_data_entropy"] == pytest.approx(0, abs=1e-9)
    assert res["entropy_study"]["points"][1]["sft_data_entropy"] > 0.5
    assert set(res["frontier"]["points"]) == {"sft", "aat", "gem", "replay"}
    assert [p["temperature"] for p in res["frontier"]["points"]["gem"]] == [0.7, 1.3]
    assert set(res["bar"]["checks"]) >= {"style_adherence_within_2_points", "content_nll_within_5_percent"}
    md = (d / "docs" / "results.md").read_text()
    for heading in ("## 1. Scaling", "## 2. Ablations", "## 3. SFT data entropy", "## 4. Diversity-quality"):
        assert heading in md
    assert "### Anchor fidelity" in md and "### What the samples look like" in md
    for png in ("scaling.png", "entropy_study.png", "frontier.png", "anchoring.png"):
        assert (d / "docs" / png).stat().st_size > 1000


def test_stratified_sampling_uses_more_distinct_annotations(study):
    """Same model: stratified anchors repeat an annotation only when the pool (4x larger) holds no
    other, so they give at least as many distinct annotations per prompt as i.i.d. ones at T=1."""
    from anchorlm.io import read_jsonl

    d, _ = study
    # the recipe's AAT model (the entropy study's AAT models, other SFT sets, are sampled once)
    model = max(
        (d / "run" / "models" / "b-s0").glob("aat-*"), key=lambda m: len(list(m.glob("samples/*.jsonl")))
    )
    distinct = {}
    for f in (model / "samples").glob("anchored-*.jsonl"):
        rows = read_jsonl(f)
        if "|" in str(rows[0]["prompt_id"]):
            continue  # anchor fidelity's forced-topic samples
        per = {}
        for r in rows:
            per.setdefault(r["prompt_id"], set()).add(r["annotation_raw"])
        n = sum(map(len, per.values()))
        distinct.setdefault(rows[0]["anchors"], []).append(n)
    assert len(distinct["stratified"]) == 1 and len(distinct["iid"]) == 3  # T = 1.0, 0.7, 1.3
    assert distinct["stratified"][0] >= max(distinct["iid"])


def test_rerun_reuses_every_cell_and_gives_the_same_numbers(study):
    d, first = study
    again, stdout = _run(d / "run", d / "docs2")
    assert again["compute"]["cells_run_this_invocation"] == 0
    for k in ("sizes", "ablations", "entropy_study", "frontier", "bar"):
        assert again[k] == first[k]
    # the ledger records the precision each model and samples cell ran in (auto: fp32 below hidden 256)
    entries = json.loads((d / "run" / "cells.json").read_text())
    computed = [k for k in entries if k.startswith("models/") and not k.endswith(".json")]
    assert any(k.endswith(".jsonl") for k in computed) and any("/samples/" not in k for k in computed)
    assert {entries[k].get("precision") for k in computed} == {"fp32"}
    # and each score cell the precision its reference LM (SmolLM2, 576 wide) scored in; forced-plan
    # scores use no language model and record none
    scores = [k for k in entries if ".scores-" in k]
    forced = [k for k in entries if ".forced-" in k]
    assert scores and {entries[k].get("precision") for k in scores} == {"bf16" if fast_bf16() else "fp32"}
    assert forced and all("precision" not in entries[k] for k in forced)


def test_a_changed_recipe_makes_new_cells(study):
    d, first = study
    res, _ = _run(d / "run", d / "docs3", "--set", "temperatures=[0.7, 1.1]")
    assert 0 < res["compute"]["cells_run_this_invocation"] <= 4 * 2  # the T=1.1 samples and scores
    assert res["frontier"]["points"]["sft"][0] == first["frontier"]["points"]["sft"][0]


def test_bad_recipe_names_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sizes: [{name: a, hidden_size: 30, num_heads: 4}]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "anchorlm.cli", "reproduce", "--config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "hidden_size" in proc.stderr


def test_a_fresh_run_with_the_same_recipe_gives_the_same_numbers(study, tmp_path):
    """Every cell recomputed from nothing (own models, samples, scores): same seeds, same numbers.
    The fresh run takes seed 0 of the scaling part and the ablations (the entropy study and the
    frontier left out, to keep the suite short); each of its numbers must equal the first run's."""
    _, first = study
    again, _ = _run(
        tmp_path / "run", tmp_path / "docs",
        "--set", "seeds=[0]", "--set", "entropy_counts=[]", "--set", "temperatures=[]",
    )  # fmt: skip
    assert again["compute"]["cells_run_this_invocation"] > 20
    assert again["ablations"] == first["ablations"]
    for name, sz in again["sizes"].items():
        one = first["sizes"][name]
        assert sz["pretrain_tokens"] == one["pretrain_tokens"]
        for m, s in sz["summary"].items():  # the fresh run's one seed is the first run's seed 0
            assert s["per_seed_gap_closed"] == one["summary"][m]["per_seed_gap_closed"][:1]


def test_results_read_back_as_types_and_render_the_same(study):
    """The JSON a study writes is its typed results (anchorlm.study.results) field for field: read back,
    written again and rendered again, nothing changes."""
    from anchorlm.study.report import render
    from anchorlm.study.results import StudyResults

    d, res = study
    typed = StudyResults.from_json(res, "results.json")
    assert json.dumps(typed.to_json(), sort_keys=True) == json.dumps(res, sort_keys=True)
    assert (
        typed.variants["aat"].quality["finished"]
        == res["ablations"]["variants"]["aat"]["quality"]["finished"]
    )
    assert typed.ablations.variants["sft"].anchoring is None and typed.summary is typed.sizes["b"].summary
    md = (d / "docs" / "results.md").read_text()
    assert render(typed, res["device"]) == md


def test_kept_scores_need_neither_samples_nor_models(study, tmp_path):
    """A study carried to another machine with only its ledger and scores (every model and samples
    file deleted) makes no cell again and gives the same numbers: a score is made from samples, and
    samples from a model, only where the score is not there."""
    import shutil

    d, first = study
    run = tmp_path / "run"
    shutil.copytree(d / "run", run)
    gone = [p for p in (run / "models").rglob("*") if p.is_file() and not p.name.endswith(".json")]
    assert any(p.suffix == ".jsonl" for p in gone) and any(p.suffix == ".safetensors" for p in gone)
    for p in gone:
        p.unlink()
    again, _ = _run(run, tmp_path / "docs")
    assert again["compute"]["cells_run_this_invocation"] == 0
    for k in ("sizes", "ablations", "entropy_study", "frontier", "bar"):
        assert again[k] == first[k]


def test_kept_cells_carry_a_study_to_a_fresh_checkout(study, tmp_path):
    """scripts/study_cells.py: `save` keeps the ledger, scores and samples in docs; `restore` into a
    fresh cell directory, and the study remakes only its shared data (annotation, tokenizer, blocks,
    SFT data), no model, samples or score, and gives the same numbers."""
    d, first = study
    script = [sys.executable, str(ROOT / "scripts" / "study_cells.py")]
    cfg = ["--config", str(ASSETS / "reproduce-tiny.yaml"), "--set", f"docs_dir={tmp_path / 'docs'}"]
    for step, out in (("save", d / "run"), ("restore", tmp_path / "fresh")):
        proc = subprocess.run(
            script + [step, *cfg, "--set", f"out_dir={out}"], cwd=ROOT, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "docs" / "results-samples").rglob("*.jsonl.gz"))
    sessions = json.loads((tmp_path / "docs" / "results-cells" / "sessions.json").read_text())
    assert len(sessions) == 1 and sessions[0]["cells"] and sessions[0]["models_retrained_differently"] == 0
    assert not list((tmp_path / "fresh").rglob("*.safetensors"))
    again, stdout = _run(tmp_path / "fresh", tmp_path / "docs2")
    made = again["compute"]["invocations_that_ran_cells"][-1]["minutes_by_stage"]
    assert set(made) <= {"annotate", "tokenizer", "tokenize", "sft-data", "prepare"}, made
    for k in ("sizes", "ablations", "entropy_study", "frontier", "bar"):
        assert again[k] == first[k]


def test_kept_samples_are_the_same_bytes_for_the_same_samples(tmp_path):
    """run.keep_samples gzips with no timestamp: a study run again (a re-score) rewrites its kept
    samples byte for byte, so git sees no change where no sample changed."""
    import gzip
    import time
    from types import SimpleNamespace as NS

    from anchorlm.study.run import keep_samples

    folder = tmp_path / "run" / "models" / "b-s0" / "aat-0a1b" / "samples"
    folder.mkdir(parents=True)
    (folder / "anchored-x.jsonl").write_text('{"response": "r"}\n')
    (folder / "anchored-x.manifest.json").write_text("{}")
    cells = NS(out=tmp_path / "run", used={folder / "anchored-x.manifest.json"})
    kept = tmp_path / "docs" / "models" / "b-s0" / "aat-0a1b" / "samples" / "anchored-x.jsonl.gz"
    assert keep_samples(cells, tmp_path / "docs") == 1
    first = kept.read_bytes()
    time.sleep(1.1)  # gzip's header counts seconds
    keep_samples(cells, tmp_path / "docs")
    assert kept.read_bytes() == first and gzip.decompress(first) == b'{"response": "r"}\n'


def test_save_keeps_the_first_manifest_of_a_model_retrained_differently(tmp_path):
    """A model retrained on another machine (its weights are never kept) that ends with another loss:
    `save` keeps its new manifest and, beside it, the first one (what the cells made before came
    from), once; `retrained.json` records both."""
    script = [sys.executable, str(ROOT / "scripts" / "study_cells.py")]
    model = "models/b-s1/plain-0a1b2c3d"
    out, docs = tmp_path / "run", tmp_path / "docs"
    for d, loss in ((out, 2.6797), (docs / "results-cells", 2.6804)):
        (d / model).mkdir(parents=True)
        (d / model / "manifest.json").write_text(
            json.dumps({"counts": {"final_loss": loss, "precision": "bf16"}})
        )
        (d / "cells.json").write_text(
            json.dumps(
                {model: {"identity": {}, "started": "2026-12-06T10:21:47", "finished": "2026-12-06T10:26:19"}}
            )
        )
    cfg = [
        "--config",
        str(ASSETS / "reproduce-tiny.yaml"),
        "--set",
        f"docs_dir={docs}",
        "--set",
        f"out_dir={out}",
    ]
    for _ in range(2):  # the second save finds the new manifest kept: nothing retrained, the first one stays
        proc = subprocess.run(script + ["save", *cfg], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    kept = docs / "results-cells" / model
    assert json.loads((kept / "manifest.json").read_text())["counts"]["final_loss"] == 2.6797
    assert json.loads((kept / "manifest.first.json").read_text())["counts"]["final_loss"] == 2.6804
    (row,) = json.loads((docs / "results-cells" / "retrained.json").read_text())
    assert row["model"] == model and row["kept"]["final_loss"] == 2.6804


def test_save_keeps_no_unfinished_cell_and_refuses_to_drop_kept_ones(study, tmp_path):
    """A cell killed after writing its file but before the ledger finished it is not kept (the next
    session would refuse it); a save over kept cells from a directory that lacks them is refused."""
    import shutil

    d, _ = study
    run = tmp_path / "run"
    shutil.copytree(d / "run", run)
    ledger = json.loads((run / "cells.json").read_text())
    victim = next(k for k in ledger if k.endswith(".json") and "scores" in k)
    del ledger[victim]["finished"]
    (run / "cells.json").write_text(json.dumps(ledger))
    script = [sys.executable, str(ROOT / "scripts" / "study_cells.py"), "save"]
    cfg = ["--config", str(ASSETS / "reproduce-tiny.yaml"), "--set", f"docs_dir={tmp_path / 'docs'}"]
    proc = subprocess.run(
        script + [*cfg, "--set", f"out_dir={run}"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept = tmp_path / "docs" / "results-cells"
    assert not (kept / victim).exists() and (kept / "cells.json").exists()
    empty = tmp_path / "other"
    empty.mkdir()
    (empty / "cells.json").write_text("{}")
    proc = subprocess.run(
        script + [*cfg, "--set", f"out_dir={empty}"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode != 0 and "restore" in proc.stderr
