"""Running a recipe over the plan: a study (`anchorlm reproduce`: every part, results written to
docs) and the demo (`anchorlm demo`: one size, one seed, the recipe's variants, a report in its
output directory). Both go through the same cells (anchorlm.study.cells), so a variant added to the
registry works in the demo and in every study, and one guard refuses stale cells in both."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

from anchorlm.config import StagesConfig, to_dict
from anchorlm.evaluate import evaluate
from anchorlm.io import gzip_copy, lock_dir, write_json
from anchorlm.logs import log
from anchorlm.provenance import code_version, describe, machine, versions
from anchorlm.report import write_report
from anchorlm.sample import sidecar
from anchorlm.study.cells import Cells, Job
from anchorlm.study.config import StudyConfig
from anchorlm.study.plan import parts
from anchorlm.study.report import write_results
from anchorlm.study.results import Compute, StudyResults
from anchorlm.study.verdict import bar, mechanism_rows

COMPUTE = "compute.json"  # every invocation that ran cells in a cell directory


def run_study(cfg: StudyConfig, device_hint: str = "", reuse_other_code: bool = False) -> StudyResults:
    """Run (or finish) the study; write the results JSON, Markdown and plots into docs_dir.
    `device_hint` names the machine of cells whose manifests do not record one; with
    `reuse_other_code`, cells made by other code are reused and the results name them."""
    cells = Cells(cfg, "cells", reuse_other_code)
    with lock_dir(cfg.out_dir):  # one study per cell directory at a time
        return _run_study(cfg, cells, device_hint)


def _run_study(cfg: StudyConfig, cells: Cells, device_hint: str) -> StudyResults:
    t0 = time.time()
    write_json(cells.out / "config.json", to_dict(cfg), indent=2)
    try:
        found, rule = _run_cells(cfg, cells)
    except BaseException as e:  # interrupted or failed: the cells it ran are still on the ledger
        how = "interrupted" if isinstance(e, KeyboardInterrupt) else f"failed: {type(e).__name__}"
        with contextlib.suppress(Exception):  # never hide the error that stopped the run
            _ledger_of_invocations(cells, (time.time() - t0) / 60, how)
        raise
    # on the ledger as soon as every cell is made, before anything else can fail
    minutes = (time.time() - t0) / 60
    ledger = _ledger_of_invocations(cells, minutes)
    res = StudyResults(
        title=cfg.title,
        rule={"tokens_per_param": cfg.tokens_per_param, "text": rule},
        focus_size=cells.focus,
        headline=cfg.headline,
        labels={n: v.label for n, v in cells.variants.items()},
        sizes=found["sizes"],
        ablations=found["ablations"],
        entropy_study=found.get("entropy_study"),
        frontier=found.get("frontier"),
        prompt_sets=found.get("prompt_sets"),
        dose=found.get("dose"),
        plan_following=found.get("plan_following"),
    )
    res.protocol = {
        "n_seeds": len(cfg.seeds),
        "prompt_sets": {
            name or "heldout": len(cells.prompt_rows(name))
            for name in dict.fromkeys([cfg.prompts, *cfg.prompt_sets])
        },
        "document": "docs/protocol.md",
    }
    cells.ledger.behind(lambda rel: any(m in cells.used for m in (cells.out / rel / "manifest.json",
                                                                  sidecar(cells.out / rel))))  # fmt: skip
    res.mechanism = mechanism_rows(res)
    res.bar = bar(res)
    res.compute = Compute(
        minutes_this_invocation=round(minutes, 2),
        cells_run_this_invocation=cells.cells_run,
        invocations_that_ran_cells=ledger,
        versions=versions(),
        made_on=cells.made_on(device_hint),
        scored_on=describe(machine()),
        code=code_version(),
        cells_from_other_code=[{"cell": k, **v} for k, v in sorted(cells.ledger.other_code.items())] or None,
    )
    res.config = to_dict(cfg)
    if cfg.keep_samples:
        keep_samples(cells, Path(cfg.docs_dir) / f"{cfg.results_name}-samples")
    write_results(res, Path(cfg.docs_dir), cfg.results_name)
    log(f"done in {minutes:.1f} min ({cells.cells_run} cells run); {cfg.docs_dir}/{cfg.results_name}.md")
    return res


def _run_cells(cfg: StudyConfig, cells: Cells) -> tuple[dict, str]:
    """Make (or reuse) every cell of the plan; each part's aggregate, and the pretraining rule."""
    cells.prepare()
    rule = (
        f"continued pretraining of {cells.lm}: {cells.token_budget(cells.focus):,} tokens per variant"
        if cells.lm
        else f"pretraining tokens = {cfg.tokens_per_param:g} x all parameters (embeddings included)"
    )
    scores: dict[Job, dict] = {}
    found: dict = {}
    for part in parts(cfg):
        for job in part.jobs(cells, cfg):
            if job not in scores:
                scores[job] = cells.score_job(job)
        found[part.key] = part.aggregate(cells, cfg, scores.__getitem__)
    return found, rule


def keep_samples(cells: Cells, to: Path) -> int:
    """Every samples file the study read, gzipped under `to` with its place in the cell directory
    (models/<size>-s<seed>/<variant>-<digest>/samples/...) and its manifest; returns how many."""
    n = 0
    for m in sorted(cells.used):
        if not m.name.endswith(".manifest.json") or "samples" not in m.parts:
            continue
        src = m.with_name(m.name.removesuffix(".manifest.json") + ".jsonl")
        if not src.exists():
            continue
        dst = to / src.relative_to(cells.out)
        gzip_copy(src, dst.with_name(dst.name + ".gz"))  # the same samples, the same bytes
        shutil.copyfile(m, dst.with_name(m.name))
        n += 1
    return n


def _ledger_of_invocations(cells: Cells, minutes: float, ended: str = "") -> list[dict]:
    """compute.json: every invocation that ran cells, this one added if it ran any; `ended` says
    how one that did not finish ended ("interrupted", "failed: <error>")."""
    path = cells.out / COMPUTE
    ledger = json.loads(path.read_text()) if path.exists() else []
    if cells.cells_run:
        ledger.append(
            {
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "minutes": round(minutes, 2),
                "cells_run": cells.cells_run,
                "minutes_by_stage": {k: round(v / 60, 2) for k, v in cells.timings.items()},
                **({"ended": ended} if ended else {}),
            }
        )
        write_json(path, ledger)
    return ledger


# ---- the demo ---------------------------------------------------------------------------------------
def demo_study(cfg: StagesConfig) -> StudyConfig:
    """The demo as a recipe of the plan: one size (the recipe's model, or the published model it
    continues), the recipe's own seeds, its variants (`variants`) compared."""
    sizes = [] if cfg.pretrain.init_from else [{"name": "demo", **cfg.pretrain.model.model_dump()}]
    return StudyConfig(out_dir=cfg.out_dir, base=cfg, sizes=sizes, ablations=list(cfg.variants),
                       headline="aat", entropy_counts=[], temperatures=[])  # fmt: skip


def run_demo(cfg: StagesConfig, reuse_dir: bool = False, reuse_other_code: bool = False) -> dict:
    """Run (or finish) the demo; returns the results also written to out_dir/results.json, beside
    report.md and the plots. `reuse_dir`: write into a non-empty directory anchorlm did not make."""
    study = demo_study(cfg)
    cells = Cells(study, "flat", reuse_other_code, reuse_dir)
    with lock_dir(cells.out):  # a second demo into the same directory stops instead of writing beside it
        t0 = time.time()
        write_json(cells.out / "config.json", to_dict(cfg), indent=2)
        cells.prepare()
        samples, forced = {}, {}
        for name in cfg.variants:
            # the model first: a changed recipe is refused at the model it changes, naming the field
            cells.train_variant(cells.focus, None, cells.variants[name])
            samples[name], f = cells.draw_job(Job(cells.focus, None, name, fidelity=True))
            if f is not None:
                forced[name] = f
        log("evaluate")
        t1 = time.time()
        results = evaluate(cfg.evaluate, cfg.sft_data, cfg.corpus, samples, cells.out / "eval" / "metrics.json",
                           forced=forced)  # fmt: skip
        cells.timings["evaluate"] += time.time() - t1
        minutes = round((time.time() - t0) / 60, 2)
        results["pipeline"] = {"minutes_this_invocation": minutes, "out_dir": str(cells.out),
                               "minutes_by_stage": {k: round(v / 60, 2) for k, v in cells.timings.items()},
                               "earlier_invocations": earlier_invocations(cells.out / "results.json")}  # fmt: skip
        results["made_by"] = made_by(cells.out)
        if cells.ledger.other_code:
            results["cells_from_other_code"] = sorted(cells.ledger.other_code)
        table = write_report(results, cells.out, title=f"anchorlm demo ({cells.out})")
        log(f"done in {minutes} min; report: {cells.out / 'report.md'}")
        print(table)
        return results


def earlier_invocations(path: Path) -> list[dict]:
    """The `pipeline` of every earlier invocation that wrote the demo's results (a resumed or
    re-scored demo keeps what the runs before it took, oldest first); [] where there were none or
    the file cannot be read."""
    try:
        old = json.loads(path.read_text()).get("pipeline")
    except (OSError, ValueError, AttributeError):
        return []
    if not old or not isinstance(old, dict):
        return []
    before = old.get("earlier_invocations")
    before = [x for x in before if isinstance(x, dict)] if isinstance(before, list) else []
    return [*before, {k: v for k, v in old.items() if k != "earlier_invocations"}]


def made_by(out: Path) -> dict:
    """{stage: {machine, precision}} from the manifests of the demo's models and samples, so its
    report says where and in what precision each was made (a resumed demo may span machines)."""
    found = {}
    for kind, pattern in (("train", "models/*/manifest.json"), ("sample", "samples/*.manifest.json")):
        for path in sorted(out.glob(pattern)):
            m = json.loads(path.read_text())
            name = path.parent.name if kind == "train" else path.name.removesuffix(".manifest.json")
            found[f"{kind} {name}"] = {"machine": m.get("machine"), "precision": m["counts"].get("precision")}
    return found
