"""A study's training and sampling on a borrowed machine (a GPU) within a fixed number of minutes;
its scoring afterwards where the scorers are. `scripts/gpu-study.sh` runs the three steps:

    prepare   here:    the data stages (annotation, tokenizer, blocks, SFT data) into the cell dir
    run       there:   time a few pretraining steps of each size, choose the token budget so the
                       plan's pretrainings fit, then train and sample the plan's jobs part by part
                       until the deadline; pack what scoring needs (ledger, manifests, logs,
                       samples, the plan) into one archive
    evaluate  here:    unpack it into the cell dir; the study with the plan's settings then only
                       scores (every model and samples file is there), the cells named as made by
                       the other machine's code and libraries

The machine that runs needs torch, transformers, accelerate and peft, not `datasets` (blocks are
read from `blocks.npy`), `gguf`, sentence-transformers or the packaged models.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import time
from pathlib import Path

from anchorlm.config import replace
from anchorlm.logs import log
from anchorlm.models import load_tokenizer
from anchorlm.precision import resolve
from anchorlm.provenance import machine
from anchorlm.study.cells import Cells
from anchorlm.study.config import StudyConfig, load_study_config
from anchorlm.study.plan import parts, pretraining_runs
from anchorlm.study.run import run_study
from anchorlm.train.model import build_model

PLAN = "plan.json"
ARCHIVE = "cells.tar.gz"
KEEP = (
    "manifest.json",
    "log_history.json",
    ".jsonl",
    "compute.json",
    "cells.json",
    PLAN,
)  # what scoring needs
OFF = {  # overrides that leave a part out of the study that scores what came back
    "ablations": ["ablations=[base, sft, aat]", "variants=[]"],
    "entropy": ["entropy_counts=[]"],
    "frontier": ["temperatures=[]"],
}


def prepare(cfg: StudyConfig) -> None:
    """The study's data stages, so that the machine that runs needs neither the corpus tools nor
    `datasets`."""
    Cells(cfg).prepare()


def step_seconds(cells: Cells, size: str, steps: int = 3) -> float:
    """Seconds per pretraining step of `size` on this machine (forward, backward, AdamW; bf16
    autocast where `precision` resolves to it), after one warm-up step."""
    import torch

    p = cells.base.pretrain
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(cells.sizes[size], load_tokenizer(cells.tokenizer)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (p.batch_size, p.seq_len), device=device)
    bf16 = resolve(p.precision, cells.sizes[size].hidden_size) == "bf16"

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


def plan_budget(runs: dict[str, int], params: dict[str, int], step_tokens: int, per_step: dict[str, float],
                seconds: float, recipe_tpp: float) -> dict:  # fmt: skip
    """tokens_per_param such that the pretrainings the plan needs (`runs` per size, each of
    tokens_per_param x `params` tokens at `per_step` seconds a step of `step_tokens`) take at most
    `seconds`; never more than the recipe's `recipe_tpp`."""
    cost_per_tpp = sum(runs[s] * params[s] / step_tokens * per_step[s] for s in runs)
    tpp = min(recipe_tpp, seconds / cost_per_tpp)
    return {
        "tokens_per_param": round(tpp, 4),
        "recipe_tokens_per_param": recipe_tpp,
        "seconds_per_step": {s: round(t, 4) for s, t in per_step.items()},
        "pretraining_runs": runs,
        "pretraining_seconds_planned": round(tpp * cost_per_tpp, 1),
    }


def choose_budget(cfg: StudyConfig, cells: Cells, seconds: float) -> dict:
    """`plan_budget` from the plan's pretrainings and the step times measured on this machine."""
    p = cells.base.pretrain
    return plan_budget(pretraining_runs(cells, cfg), {s: cells.params(s)[1] for s in cells.sizes},
                       p.batch_size * p.seq_len, {s: step_seconds(cells, s) for s in cells.sizes}, seconds,
                       cfg.tokens_per_param)  # fmt: skip


def run(cfg: StudyConfig, minutes: float, pack_to: str | Path, pretrain_share: float = 0.45) -> dict:
    """Plan, then train and sample the plan's jobs, part by part, until `minutes` are used; write
    the plan (what was chosen, which parts finished) and the archive into `pack_to`."""
    t0 = time.time()
    deadline = t0 + minutes * 60
    cells = Cells(cfg, reuse_other_code=True)  # the carried data was prepared by the other machine's code
    cells.prepare()
    plan = choose_budget(cfg, cells, pretrain_share * minutes * 60)
    log(f"plan: {plan}")
    cfg = replace(cfg, tokens_per_param=plan["tokens_per_param"])
    cells = Cells(cfg, reuse_other_code=True)
    cells.prepare()
    done, stopped = [], None
    for part in parts(cfg):
        for job in part.jobs(cells, cfg):
            if time.time() > deadline:
                stopped = part.name
                break
            cells.draw_job(job)
        if stopped:
            break
        done.append(part.name)
        log(f"part done: {part.name} ({(time.time() - t0) / 60:.1f} min)")
    plan.update(
        parts_done=done,
        stopped_in=stopped,
        minutes=round((time.time() - t0) / 60, 2),
        overrides=overrides(cfg, done, plan["tokens_per_param"]),
        device=machine()["gpu"] or "CPU",
    )
    out = Path(pack_to)
    out.mkdir(parents=True, exist_ok=True)
    (cells.out / PLAN).write_text(json.dumps(plan, indent=1))
    with tarfile.open(out / ARCHIVE, "w:gz") as tar:
        for f in sorted(cells.out.rglob("*")):
            if (
                f.is_file()
                and f.name.endswith(KEEP)
                and "checkpoints" not in f.parts
                and "tokens" not in f.parts
            ):
                tar.add(f, arcname=str(f.relative_to(cells.out)))
    (out / PLAN).write_text(json.dumps(plan, indent=1))
    log(f"done in {plan['minutes']} min; parts {done}; archive {out / ARCHIVE}")
    return plan


def overrides(cfg: StudyConfig, done: list[str], tpp: float) -> list[str]:
    """`--set` overrides that make the study ask for exactly the parts that finished."""
    out = [f"tokens_per_param={tpp}"]
    for part in parts(cfg):
        if part.name not in done:
            out += OFF.get(part.name, [])
    if "ablations" not in done:
        out.append(f"ablation_seeds={list(cfg.seeds)}")
    return out


def unpack(archive: str | Path, cfg: StudyConfig) -> list[str]:
    """Unpack a run's archive into the cell dir; returns the plan's overrides for the study."""
    with tarfile.open(archive) as tar:
        tar.extractall(cfg.out_dir, filter="data")
    plan = json.loads((Path(cfg.out_dir) / PLAN).read_text())
    if "scaling" not in plan["parts_done"]:
        raise RuntimeError(
            f"{archive}: the run stopped in its first part ({plan['stopped_in']}); nothing to score"
        )
    return plan["overrides"]


def main(argv: list[str] | None = None) -> int:
    """python -m anchorlm.study.remote prepare|run|evaluate --config RECIPE [...] (see the module doc)."""
    ap = argparse.ArgumentParser(prog="python -m anchorlm.study.remote", description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["prepare", "run", "evaluate"])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--minutes", type=float, default=7.0, help="run: the time the run may take")
    ap.add_argument("--pack", help="run: the folder the plan and the archive go to")
    ap.add_argument("--archive", help=f"evaluate: the run's {ARCHIVE}")
    args = ap.parse_args(argv)
    cfg = load_study_config(args.config, args.set)
    if args.step == "prepare":
        prepare(cfg)
    elif args.step == "run":
        if not args.pack:
            ap.error("run needs --pack (the folder that comes back)")
        run(cfg, args.minutes, args.pack)
    else:
        if not args.archive:
            ap.error(f"evaluate needs --archive (the run's {ARCHIVE})")
        sets = unpack(args.archive, cfg)
        device = json.loads((Path(cfg.out_dir) / PLAN).read_text()).get("device", "")
        hint = f"GPU {device}" if device and device != "CPU" else device
        run_study(load_study_config(args.config, [*args.set, *sets]), device_hint=hint, reuse_other_code=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
