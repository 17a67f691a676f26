"""scripts/gpu-study.sh on this CPU (its dry run): prepare here, run within a time budget on a
copy that has no `datasets` files (as the GPU machine has no `datasets`), evaluate here from what
came back alone."""

import json
import os
import subprocess

import pytest
from conftest import ROOT

from anchorlm.study.remote import plan_budget


def test_gpu_study_dry_run_prepares_runs_and_scores(tmp_path):
    env = {**os.environ, "WORK": str(tmp_path), "MINUTES": "3", "PYTHON": str(ROOT / ".venv/bin/python")}
    proc = subprocess.run(
        ["bash", "scripts/gpu-study.sh", "dry-run"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out == ["cells.tar.gz", "plan.json"]  # at most 8 files come back
    plan = json.loads((tmp_path / "out/plan.json").read_text())
    assert plan["parts_done"] == ["scaling", "ablations", "plan_following"] and plan["stopped_in"] is None
    assert 0 < plan["tokens_per_param"] <= plan["recipe_tokens_per_param"] == 1
    assert (tmp_path / "out/cells.tar.gz").stat().st_size < 16 * 2**20
    res = json.loads((tmp_path / "docs/results.json").read_text())
    assert res["compute"]["cells_run_this_invocation"] > 0
    stages = res["compute"]["invocations_that_ran_cells"][-1]["minutes_by_stage"]
    assert set(stages) <= {"prepare", "evaluate"}  # here only scoring ran: nothing trained or sampled
    a = res["ablations"]["variants"]["aat"]["anchoring"]
    assert {"forced_sft", "forced_other", "free_agreement", "plan_entropy"} <= set(a)
    assert not list((tmp_path / "here").rglob("*.safetensors"))  # no model came back


def test_budget_plan_fits_pretraining_into_the_time_given():
    """The budget from given step times, against the sum done by hand: 512 tokens a step; size a
    (51,200 params) 100 steps per token-per-param at 0.01 s, size b (102,400) 200 at 0.02 s; 4
    pretrainings of a and 5 of b: 4 + 20 s for one token per param."""
    args = ({"a": 4, "b": 5}, {"a": 51_200, "b": 102_400}, 512, {"a": 0.01, "b": 0.02})
    plan = plan_budget(*args, seconds=12, recipe_tpp=1)
    assert plan["pretraining_runs"] == {"a": 4, "b": 5}
    assert plan["tokens_per_param"] == pytest.approx(12 / 24)
    assert plan["pretraining_seconds_planned"] == pytest.approx(12)
    assert plan["seconds_per_step"] == {"a": 0.01, "b": 0.02}
    roomy = plan_budget(*args, seconds=100, recipe_tpp=1)
    assert roomy["tokens_per_param"] == 1  # never more than the recipe asks for


def test_the_budget_counts_the_pretrainings_the_plan_needs(tmp_path):
    """The plan's pretrainings of the tiny study recipe, counted by hand: sizes a and b, seeds
    [0, 1], plain and annotated each (4 per size); the entropy study and the frontier at b reuse
    them; the ablations at b (seed 0) add one: aat_dropout's annotated pretraining with 30% of the
    annotations dropped."""
    from anchorlm.study.cells import Cells
    from anchorlm.study.config import load_study_config
    from anchorlm.study.plan import pretraining_runs

    cfg = load_study_config(ROOT / "tests/assets/reproduce-tiny.yaml",
                            [f"out_dir={tmp_path}", "ablations=[base, sft, aat, aat_dropout]"])  # fmt: skip
    cells = Cells(cfg)
    cells.focus = "b"  # what prepare() finds: the larger size
    assert cfg.seeds == [0, 1] and cfg.ablation_seeds == [0]
    assert pretraining_runs(cells, cfg) == {"a": 4, "b": 5}
