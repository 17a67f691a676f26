"""scripts/gpu-study.sh on this CPU (its dry run): prepare here, run within a time budget on a
copy that has no `datasets` files (as the GPU machine has no `datasets`), evaluate here from what
came back alone."""

import json
import os
import subprocess

from conftest import ROOT


def test_gpu_study_dry_run_prepares_runs_and_scores(tmp_path):
    env = {**os.environ, "WORK": str(tmp_path), "MINUTES": "3", "PYTHON": str(ROOT / ".venv/bin/python")}
    proc = subprocess.run(
        ["bash", "scripts/gpu-study.sh", "dry-run"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out == ["cells.tar.gz", "plan.json"]  # at most 8 files come back
    plan = json.loads((tmp_path / "out/plan.json").read_text())
    assert plan["parts_done"] == ["scaling", "ablations"] and plan["stopped_in"] is None
    assert 0 < plan["tokens_per_param"] <= plan["recipe_tokens_per_param"] == 1
    assert isinstance(plan["seconds_per_step"]["a"], float)  # the timing it planned from is recorded
    assert (tmp_path / "out/cells.tar.gz").stat().st_size < 16 * 2**20
    res = json.loads((tmp_path / "docs/results.json").read_text())
    assert res["compute"]["cells_run_this_invocation"] > 0
    stages = res["compute"]["invocations_that_ran_cells"][-1]["minutes_by_stage"]
    assert set(stages) <= {"prepare", "evaluate"}  # here only scoring ran: nothing trained or sampled
    a = res["ablations"]["variants"]["aat"]["anchoring"]
    assert {"forced_sft", "forced_other", "free_agreement", "plan_entropy"} <= set(a)
    assert not list((tmp_path / "here").rglob("*.safetensors"))  # no model came back
