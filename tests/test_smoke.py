"""The whole pipeline on the shipped smoke recipe, run through the CLI (see the `smoke_run` fixture)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, precision_sets

from anchorlm.io import read_jsonl

REQUIRED = [
    ("diversity", "embedding_distance"),
    ("diversity", "vendi"),
    ("diversity", "attribute_entropy"),
    ("quality", "style_adherence"),
    ("quality", "fluency_nll"),
]


def test_results_schema(smoke_run):
    r = json.loads((smoke_run / "results.json").read_text())
    for v in ("base", "sft", "aat"):
        for sec, key in REQUIRED:
            assert isinstance(r["variants"][v][sec][key], float), (v, sec, key)
    for m in ("embedding_distance", "attribute_entropy"):
        s = r["summary"][m]
        assert isinstance(s["gap_closed"], float)
        # null: infinite (no AAT collapse, gap closed >= 1) or undefined (no SFT collapse)
        if isinstance(s["collapse_reduction"], float):
            assert s["collapse_reduction"] > 0  # never the negative ratio of an AAT above base
        else:
            assert s["gap_closed"] >= 1 or s["collapse"]["sft"] <= 0
    # fluency is a real NLL under SmolLM2: positive and finite
    assert all(0 < r["variants"][v]["quality"]["fluency_nll"] < 20 for v in ("base", "sft", "aat"))
    assert r["classifier"]["heldout_accuracy"] > 2 * r["classifier"]["chance"]


def test_the_demo_ran_from_the_installed_wheel(smoke_run):
    """`pip install .`, then run elsewhere: the code, the shipped smoke recipe and the bundled corpus
    all came from the installed package, not from the repository."""
    installed = (smoke_run / "installed.txt").read_text().strip()
    assert "/site/anchorlm/" in installed and not installed.startswith(str(ROOT))
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["corpus"]["path"] == "bundled"
    m = json.loads((smoke_run / "annotate/manifest.json").read_text())
    assert m["versions"]["anchorlm"] and m["counts"]["documents"] > 100


def test_version_is_printed():
    proc = subprocess.run([sys.executable, "-m", "anchorlm.cli", "--version"], capture_output=True, text=True)
    from anchorlm import __version__

    assert proc.returncode == 0 and proc.stdout.strip() == f"anchorlm {__version__}"


def test_report_files_and_printed_table(smoke_run):
    md = (smoke_run / "report.md").read_text()
    assert "| base |" in md and "| aat |" in md and "gap closed" in md
    for png in ("diversity.png", "diversity_vs_quality.png"):
        assert (smoke_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| sft |" in (smoke_run / "stdout.txt").read_text()


def test_report_shows_sample_texts_beside_the_table(smoke_run):
    """The report quotes each variant's first sample of the first prompt, annotation and all, as
    the samples file holds it, so a reader sees what the numbers measure."""
    md = (smoke_run / "report.md").read_text()
    assert "## What the samples look like" in md
    for variant in ("base", "sft", "aat"):
        first = read_jsonl(smoke_run / f"samples/{variant}.jsonl")[0]
        assert f"**{variant}**:" in md
        line = f"- *{first['prompt']}* → "
        if first.get("annotation_raw"):
            line += f"`{first['annotation_raw']}` "
        assert line + " ".join(first["response"].split())[:300] in md


def test_report_says_where_the_samples_land(smoke_run):
    """Each variant's share of samples in the SFT data's topics is the share its label counts give
    (every prompt has as many samples, so the mean of per-prompt shares is the overall share), its
    minus base is the two shares' difference, and the report prints them."""
    r = json.loads((smoke_run / "results.json").read_text())
    pull = r["in_sft_topics"]
    assert pull["topics"] and set(pull["share"]) == set(r["variants"])
    for v, figs in r["variants"].items():
        counts = figs["label_counts"]
        want = sum(counts.get(t, 0) for t in pull["topics"]) / sum(counts.values())
        assert pull["share"][v] == pytest.approx(want)
        lo, hi = pull["share_ci95"][v]
        assert 0 <= lo <= pull["share"][v] <= hi <= 1
        if v != "base":
            assert pull["minus_base"][v] == pytest.approx(want - pull["share"]["base"])
    md = (smoke_run / "report.md").read_text()
    assert "## Where the samples land" in md
    assert f"| sft | {pull['share']['sft']:.3f} [" in md


@pytest.mark.learned
def test_post_training_taught_the_style(smoke_run):
    """Base never writes the SFT style; both post-trained variants learned it. Measured on the
    smoke recipe (AMD Zen 4): SFT 0.56 / 0.62 and AAT 0.65 / 0.40 in fp32 / bf16 forced."""
    r = json.loads((smoke_run / "results.json").read_text())["variants"]
    assert r["base"]["quality"]["style_adherence"] == 0.0
    assert r["sft"]["quality"]["style_adherence"] >= 0.25
    assert r["aat"]["quality"]["style_adherence"] >= 0.25


@pytest.mark.learned
def test_anchored_samples_carry_their_annotation(smoke_run):
    """Annotated pretraining taught the tag syntax (well-formed self-written annotations: 0.85 fp32,
    0.83 bf16); every anchored sample keeps its annotation apart from its response. The smoke
    model's anchored SFT loses the syntax (10 epochs on 480 examples, values masked: 0.0 well-formed
    in both precisions), which the test records rather than hides."""
    ann = read_jsonl(smoke_run / "samples/annotated.jsonl")
    assert sum(r["annotation_ok"] for r in ann) >= 0.5 * len(ann)
    assert all(r["annotation"] is None or all(":" in t for t in r["annotation"]) for r in ann)
    rows = read_jsonl(smoke_run / "samples/aat.jsonl")
    assert all("annotation_raw" in r and "<|" not in r["response"] for r in rows)
    assert all(r["annotation"] is None or all(":" in t for t in r["annotation"]) for r in rows)


def test_the_killed_demo_resumed_from_its_checkpoint(smoke_run):
    killed_at = (smoke_run / "killed_at.txt").read_text()
    log = (smoke_run / "stdout.txt").read_text()
    assert "tokenize (plain)" not in log  # finished stages are skipped
    assert f"resuming from {smoke_run / 'models/base/checkpoints' / killed_at}" in log
    manifest = json.loads((smoke_run / "models/base/manifest.json").read_text())
    assert 0 < int(killed_at.split("-")[1]) < manifest["counts"]["steps"]


def test_heldout_prompts_are_not_in_sft_data(smoke_run):
    train = {r["instruction"] for r in read_jsonl(smoke_run / "sft_data/train.jsonl")}
    evals = {r["prompt"] for r in read_jsonl(smoke_run / "sft_data/eval_prompts.jsonl")}
    assert evals and not train & evals


def _demo_again(out, precision, *extra):
    """The demo again into `out`, by the installed copy that made it (cells made by other code are
    not reused silently: the repository's checkout is other code)."""
    env = {**os.environ, "PYTHONPATH": (out.parent / "pythonpath.txt").read_text()}
    cmd = [sys.executable, "-m", "anchorlm.cli", "demo", "--config", "smoke", "--out", str(out)]
    return subprocess.run([*cmd, *precision_sets(precision), *extra], cwd=out.parent / "elsewhere", env=env,
                          capture_output=True, text=True)  # fmt: skip


def test_report_says_where_and_in_what_precision_it_was_made(smoke_run):
    """Each training and sampling stage's precision and machine come from its manifest; the report
    shows them, and scoring's, with the code version."""
    r = json.loads((smoke_run / "results.json").read_text())
    for name in ("base", "annotated", "sft", "aat"):
        m = json.loads((smoke_run / f"models/{name}/manifest.json").read_text())
        assert r["made_by"][f"train {name}"] == {
            "machine": m["machine"],
            "precision": m["counts"]["precision"],
        }
        s = json.loads((smoke_run / f"samples/{name}.manifest.json").read_text())
        assert r["made_by"][f"sample {name}"]["precision"] == s["counts"]["precision"] in ("fp32", "bf16")
    assert r["provenance"]["precision"] in ("fp32", "bf16") and r["provenance"]["machine"]["cores"] >= 1
    md = (smoke_run / "report.md").read_text()
    assert "## Provenance" in md and f"precision {r['made_by']['train aat']['precision']}" in md
    assert "Another CPU kind" in md


def test_rerun_skips_finished_stages_and_gives_the_same_numbers(smoke_run, precision):
    before = json.loads((smoke_run / "results.json").read_text())
    proc = _demo_again(smoke_run, precision)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pretrain" not in proc.stdout and "post-train" not in proc.stdout
    after = json.loads((smoke_run / "results.json").read_text())
    for v in before["variants"]:  # evaluate ran again on the same samples: the same bits
        assert after["variants"][v]["diversity"] == before["variants"][v]["diversity"], v
    # what the run before took is kept beside this one's (the fixture's first complete run's stage times included)
    kept = after["pipeline"]["earlier_invocations"]
    assert kept[-1] == {k: v for k, v in before["pipeline"].items() if k != "earlier_invocations"}
    assert kept[0]["minutes_by_stage"].get("pretrain", 0) > 0


def test_rerun_with_another_config_is_refused(smoke_run, precision):
    proc = _demo_again(smoke_run, precision, "--set", "pretrain.lr=0.001")
    assert proc.returncode == 1
    assert "models/base holds a cell made from another config (pretrain.lr: 0.005 -> 0.001" in proc.stderr


def test_rerun_by_other_code_is_refused_unless_asked(smoke_run, precision):
    """The checkout is other code than the installed copy that made the run: its cells are not
    reused silently; asked to, the demo reuses them and its results name them."""
    cmd = [sys.executable, "-m", "anchorlm.cli", "demo", "--config", "smoke", "--out", str(smoke_run)]
    cmd += precision_sets(precision)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 1 and "was made by other code" in proc.stderr
    before = json.loads((smoke_run / "results.json").read_text())
    proc = subprocess.run([*cmd, "--reuse-cells"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    after = json.loads((smoke_run / "results.json").read_text())
    assert (
        "models/aat" in after["cells_from_other_code"]
        and "samples/aat.jsonl" in after["cells_from_other_code"]
    )
    assert after["variants"]["aat"]["diversity"] == before["variants"]["aat"]["diversity"]
    md = (smoke_run / "report.md").read_text()  # the report says so too, not only the JSON
    assert "**made by other code**" in md and "models/aat" in md.split("**made by other code**")[1]


def test_earlier_invocations_survive_a_results_file_of_another_shape(tmp_path):
    """A demo's results.json whose pipeline is missing, not an object, or carries a malformed history
    gives what can be kept, never an error (the run goes on to write its report)."""
    from anchorlm.study.run import earlier_invocations

    path = tmp_path / "results.json"
    assert earlier_invocations(path) == []  # the first run
    for text, want in [
        ("not json", []),
        ('["a list"]', []),
        ('{"pipeline": "text"}', []),
        ('{"pipeline": {}}', []),
        ('{"pipeline": {"minutes_this_invocation": 1.0, "earlier_invocations": {"a": 1}}}',
         [{"minutes_this_invocation": 1.0}]),
        ('{"pipeline": {"minutes_this_invocation": 2.0, "earlier_invocations": [{"minutes_this_invocation": 1.0}, 3]}}',
         [{"minutes_this_invocation": 1.0}, {"minutes_this_invocation": 2.0}]),
    ]:  # fmt: skip
        path.write_text(text)
        assert earlier_invocations(path) == want, text
