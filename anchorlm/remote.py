"""A study's training and sampling on a borrowed machine (a GPU) within a fixed number of minutes;
its scoring afterwards where the scorers are. `scripts/gpu-study.sh` runs the three steps:

    prepare   here:    the data stages (annotation, tokenizer, blocks, SFT data) into the cell dir
    run       there:   time a few pretraining steps of each size, choose the token budget so the
                       run fits, then train and sample the study's cells until the deadline; pack
                       what scoring needs (manifests, logs, samples, the plan) into one archive
    evaluate  here:    unpack it into the cell dir; `anchorlm reproduce` with the plan's settings
                       then only scores (every model and samples file is there)

The machine that runs needs torch, transformers, accelerate and peft, not `datasets` (blocks are
read from `blocks.npy`), `gguf`, sentence-transformers or the packaged models.
"""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

from anchorlm.config import ReproduceConfig

PLAN = "plan.json"
ARCHIVE = "cells.tar.gz"
KEEP = ("manifest.json", "log_history.json", ".jsonl", "compute.json", PLAN)  # what scoring needs


def _log(msg: str) -> None:
    print(f"[remote {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def prepare(cfg: ReproduceConfig) -> None:
    """The study's data stages, so that the machine that runs needs neither the corpus tools nor
    `datasets`."""
    from anchorlm.reproduce import Study

    Study(cfg).prepare()


def step_seconds(st, size: str, steps: int = 3) -> float:
    """Seconds per pretraining step of `size` on this machine (forward, backward, AdamW; bf16
    autocast where `precision` resolves to it), after one warm-up step."""
    import torch

    from anchorlm.precision import resolve
    from anchorlm.tokenizer import load_tokenizer
    from anchorlm.train.model import build_model

    p = st.base.pretrain
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_model(st.sizes[size], load_tokenizer(st.tokenizer)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (p.batch_size, p.seq_len), device=device)
    bf16 = resolve(p.precision, st.sizes[size].hidden_size) == "bf16"

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


def choose_budget(cfg: ReproduceConfig, st, seconds: float) -> dict:
    """`plan_budget` from the step times measured on this machine."""
    return plan_budget(cfg, st, {s: step_seconds(st, s) for s in st.sizes}, seconds)


def plan_budget(cfg: ReproduceConfig, st, per_step: dict[str, float], seconds: float) -> dict:
    """tokens_per_param such that every pretraining cell of the study (2 data variants per size and
    seed, more where variants change pretraining) takes at most `seconds` at `per_step` seconds a
    step; never more than the recipe asks for."""
    p = st.base.pretrain
    runs = {s: 2 * len(cfg.seeds) for s in st.sizes}
    extra = {v.data + json.dumps(v.pretrain, sort_keys=True) for v in st.variants.values() if v.pretrain}
    runs[st.focus] += len(extra) * len(cfg.ablation_seeds)
    cost_per_tpp = sum(runs[s] * st.params(s)[1] / (p.batch_size * p.seq_len) * per_step[s] for s in st.sizes)
    tpp = min(cfg.tokens_per_param, seconds / cost_per_tpp)
    return {
        "tokens_per_param": round(tpp, 4),
        "recipe_tokens_per_param": cfg.tokens_per_param,
        "seconds_per_step": {s: round(t, 4) for s, t in per_step.items()},
        "pretraining_runs": runs,
        "pretraining_seconds_planned": round(tpp * cost_per_tpp, 1),
    }


def run(cfg: ReproduceConfig, minutes: float, pack_to: str | Path, pretrain_share: float = 0.45) -> dict:
    """Plan, then train and sample the study's cells, part by part, until `minutes` are used; write
    the plan (what was chosen, which parts finished) and the archive into `pack_to`."""
    import dataclasses

    from anchorlm.reproduce import Study, cells

    t0 = time.time()
    deadline = t0 + minutes * 60
    st = Study(cfg)
    st.prepare()
    plan = choose_budget(cfg, st, pretrain_share * minutes * 60)
    _log(f"plan: {plan}")
    cfg = dataclasses.replace(cfg, tokens_per_param=plan["tokens_per_param"])
    st = Study(cfg)
    st.prepare()
    done, stopped = [], None
    for part, jobs in cells(st, cfg):
        for job in jobs:
            if time.time() > deadline:
                stopped = part
                break
            st.samples_for(**job)
        if stopped:
            break
        done.append(part)
        _log(f"part done: {part} ({(time.time() - t0) / 60:.1f} min)")
    plan.update(
        parts_done=done,
        stopped_in=stopped,
        minutes=round((time.time() - t0) / 60, 2),
        overrides=overrides(cfg, done, plan["tokens_per_param"]),
        device=_device(),
    )
    out = Path(pack_to)
    out.mkdir(parents=True, exist_ok=True)
    (Path(cfg.out_dir) / PLAN).write_text(json.dumps(plan, indent=1))
    with tarfile.open(out / ARCHIVE, "w:gz") as tar:
        for f in sorted(Path(cfg.out_dir).rglob("*")):
            if (
                f.is_file()
                and f.name.endswith(KEEP)
                and "checkpoints" not in f.parts
                and "tokens" not in f.parts
            ):
                tar.add(f, arcname=str(f.relative_to(cfg.out_dir)))
    (out / PLAN).write_text(json.dumps(plan, indent=1))
    _log(f"done in {plan['minutes']} min; parts {done}; archive {out / ARCHIVE}")
    return plan


def overrides(cfg: ReproduceConfig, done: list[str], tpp: float) -> list[str]:
    """`--set` overrides that make `anchorlm reproduce` ask for exactly the parts that finished."""
    out = [f"tokens_per_param={tpp}"]
    if "ablations" not in done:
        out.append("ablations=[base, sft, aat]")
        out.append("variants=[]")
    if "entropy" not in done:
        out.append("entropy_counts=[]")
    if "frontier" not in done:
        out.append("temperatures=[]")
    return out


def unpack(archive: str | Path, cfg: ReproduceConfig) -> list[str]:
    """Unpack a run's archive into the cell dir; returns the plan's overrides for `reproduce`."""
    with tarfile.open(archive) as tar:
        tar.extractall(cfg.out_dir, filter="data")
    plan = json.loads((Path(cfg.out_dir) / PLAN).read_text())
    if "scaling" not in plan["parts_done"]:
        raise RuntimeError(
            f"{archive}: the run stopped in its first part ({plan['stopped_in']}); nothing to score"
        )
    return plan["overrides"]


def _device() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


def main(argv: list[str] | None = None) -> int:
    """python -m anchorlm.remote prepare|run|evaluate --config RECIPE [...] (see the module doc)."""
    import argparse

    from anchorlm.config import load_reproduce_config

    ap = argparse.ArgumentParser(prog="python -m anchorlm.remote", description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["prepare", "run", "evaluate"])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--minutes", type=float, default=7.0, help="run: the time the run may take")
    ap.add_argument("--pack", help="run: the folder the plan and the archive go to")
    ap.add_argument("--archive", help=f"evaluate: the run's {ARCHIVE}")
    args = ap.parse_args(argv)
    cfg = load_reproduce_config(args.config, args.set)
    if args.step == "prepare":
        prepare(cfg)
    elif args.step == "run":
        if not args.pack:
            ap.error("run needs --pack (the folder that comes back)")
        run(cfg, args.minutes, args.pack)
    else:
        if not args.archive:
            ap.error(f"evaluate needs --archive (the run's {ARCHIVE})")
        from anchorlm.reproduce import run_reproduce

        sets = unpack(args.archive, cfg)
        device = json.loads((Path(cfg.out_dir) / PLAN).read_text()).get("device", "")
        hint = f"GPU {device}" if device and device != "CPU" else device
        run_reproduce(load_reproduce_config(args.config, [*args.set, *sets]), device_hint=hint)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
