"""The shared training loop: `transformers.Trainer` with resume-from-last-checkpoint.

`batch_size` is the global batch: under `accelerate launch` (or torchrun) with N processes, each
takes batch_size / N per step (in `grad_accum` micro-batches), so a run in N processes follows the
single-process one (the same examples in each step, the loss averaged over the same tokens); with
the same micro-batches (one process accumulating N of them) it is the same computation.

Checkpoints go to ``out_dir/checkpoints``; the final model and tokenizer to ``out_dir`` with
`save_pretrained`, the loss log to ``out_dir/log_history.json``. A run killed mid-way resumes from
its last checkpoint (weights, optimizer, scheduler, RNG and data position) when started again.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from anchorlm.allocator import keep_freed_memory
from anchorlm.config import TrainConfig, report_names
from anchorlm.io import differences, lock_dir, write_json
from anchorlm.precision import hidden_size, resolve


def train(
    model,
    tokenizer,
    dataset,
    collator,
    out_dir: str | Path,
    cfg: TrainConfig,
    max_steps: int,
    callbacks=(),
    compute_loss_func=None,
) -> dict:
    """Train (or resume) to `max_steps` as `cfg` says; save to `out_dir`. Returns the first and final
    logged loss, the processes and distributed type, the precision that ran (bf16 is mixed
    precision: float32 master weights under bf16 autocast) and the trainable parameters (with LoRA,
    only adapters and the anchor tokens' rows train; the merged model is saved)."""
    out = Path(out_dir)
    # one run per output directory (in several processes, the main one holds it for all)
    with lock_dir(out) if is_main_process() else contextlib.nullcontext():
        return _train(model, tokenizer, dataset, collator, out, cfg, max_steps, callbacks, compute_loss_func)


def training_arguments(cfg: TrainConfig, out: Path, max_steps: int, hidden: int | None = None):
    """The one translation of a stage's TrainConfig into the Trainer's arguments (`hidden`: the
    model's hidden size, which `precision: auto` reads)."""
    from transformers import TrainingArguments

    world = world_size()
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(
            f"batch_size {cfg.batch_size} is the global batch; it must divide over {world} processes "
            f"x {cfg.grad_accum} micro-batches (grad_accum)"
        )
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        max_steps=max_steps,
        # the same global batch in any number of processes and micro-batches
        per_device_train_batch_size=cfg.batch_size // (world * cfg.grad_accum),
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        warmup_steps=int(cfg.warmup_ratio * max_steps),
        weight_decay=cfg.weight_decay,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        save_steps=cfg.save_steps or max(max_steps // 4, 10),
        save_total_limit=2,
        logging_steps=cfg.logging_steps or max(max_steps // 10, 1),
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=report_names(cfg.report_to),
        run_name=out.resolve().name,
        dataloader_num_workers=0,
        save_only_model=False,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        use_cpu=not _has_accelerator(),
        bf16=resolve(cfg.precision, hidden) == "bf16",  # autocast; the weights and checkpoints stay float32
    )


def _train(model, tokenizer, dataset, collator, out: Path, cfg: TrainConfig, max_steps: int, callbacks,
           compute_loss_func) -> dict:  # fmt: skip
    from transformers import Trainer

    hidden = hidden_size(model)
    keep_freed_memory()  # each step's large tensors reused, not faulted in again (allocator.py)
    if cfg.lora.rank:
        from anchorlm.train.lora import apply_lora

        model = apply_lora(
            model, tokenizer, cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    args = training_arguments(cfg, out, max_steps, hidden)
    ckpt = out / "checkpoints"
    with _logging_env(out, report_names(cfg.report_to)):  # the loggers read it when the Trainer is made
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            callbacks=[_MarkComplete(), *callbacks],
            compute_loss_func=compute_loss_func,
        )
        last = last_complete_checkpoint(ckpt)
        if last:
            print(f"resuming from {last}", flush=True)
        trainer.train(resume_from_checkpoint=last)
    if cfg.lora.rank:
        from anchorlm.train.lora import merged

        final = merged(trainer.model)
        if trainer.is_world_process_zero():
            final.save_pretrained(str(out))
    else:
        trainer.save_model(str(out))  # the main process writes, the others wait
    history = trainer.state.log_history
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out))
        (out / "log_history.json").write_text(json.dumps(history, indent=1))
    losses = [h["loss"] for h in history if "loss" in h]
    return {
        "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None,
        "processes": world_size(),
        "distributed": trainer.accelerator.distributed_type.value,  # NO, MULTI_CPU/MULTI_GPU (DDP), FSDP, DEEPSPEED
        "precision": resolve(cfg.precision, hidden),
        "trainable_params": trainable,
    }


RUN = "run.json"  # what a training output directory holds: the config and inputs that made it
NOT_IDENTITY = ("save_steps", "logging_steps", "report_to")  # change how a run is watched, not its weights


def identity_of(path) -> str:
    """What names an input directory's content: a digest of its manifest (which records the
    config, counts and finishing time of the stage that made it), else its resolved path."""
    import hashlib

    p = Path(str(path))
    m = p / "manifest.json"
    if m.is_file():
        return "manifest:" + hashlib.sha256(m.read_bytes()).hexdigest()[:16]
    return str(p.resolve()) if p.exists() else str(path)


def claim_run(out: str | Path, section: str, config: dict, inputs: dict) -> dict | None:
    """Make `out` the directory of this run (`config` of stage `section`, trained on `inputs`) or
    find that it is: None means train (afresh, or resuming this run's checkpoints); a manifest
    means the same run already finished, and it is the answer. A directory that holds a run of
    another config or other inputs, or one that recorded none, is refused: resuming from its
    checkpoints, or saving into it, would hand back the old model under the new config."""
    out = Path(out)
    want = {section: {k: v for k, v in config.items() if k not in NOT_IDENTITY}, "inputs": inputs}
    want = json.loads(json.dumps(want, default=str))
    path, manifest = out / RUN, out / "manifest.json"
    if path.exists():
        changed = differences(json.loads(path.read_text()), want)
        if changed:
            raise ValueError(
                f"{out} holds a {section} run of another config or other inputs ({'; '.join(changed[:4])}); "
                "use a new --out, or delete that directory to train this one there"
            )
        if manifest.exists():
            print(f"{out} already holds this finished model (same config and inputs); nothing to train",
                  file=sys.stderr, flush=True)  # fmt: skip
            return json.loads(manifest.read_text())
        return None
    if manifest.exists() or (out / "checkpoints").exists():
        raise ValueError(
            f"{out} holds a model or checkpoints that recorded no config (made by an older anchorlm or "
            "another tool); use a new --out, or delete that directory"
        )
    if is_main_process():
        write_json(path, want)
    return None


COMPLETE = "anchorlm-complete"  # written into a checkpoint once the Trainer has saved all of it


def _MarkComplete():
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        """Marks a checkpoint whole after the Trainer wrote it (model, optimizer, scheduler, RNG,
        state): a run killed while writing one leaves it unmarked, and resuming skips it."""

        def on_save(self, args, state, control, **kw):
            if state.is_world_process_zero:
                (Path(args.output_dir) / f"checkpoint-{state.global_step}" / COMPLETE).touch()

    return MarkComplete()


def last_complete_checkpoint(ckpt: Path) -> str | None:
    """The newest checkpoint the Trainer finished writing; newer, half-written ones (a kill during
    a save) are removed so that they cannot be picked up later."""
    import shutil

    if not ckpt.exists():
        return None
    found = sorted(
        (p for p in ckpt.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
    )
    while found and not (found[-1] / COMPLETE).exists():
        print(f"removing {found[-1]}: the run stopped while writing it", flush=True)
        if is_main_process():
            shutil.rmtree(found[-1], ignore_errors=True)
        found.pop()
    return str(found[-1]) if found else None


@contextlib.contextmanager
def _logging_env(out: Path, targets: list[str]):
    """Point the loggers into `out/logs`: TensorBoard events in logs/tensorboard, W&B runs in
    logs/wandb; W&B runs offline (sync later with `wandb sync`) unless WANDB_MODE is set or an API
    key is configured. Variables the user set are left alone; ours are removed afterwards."""
    env = {}
    if "tensorboard" in targets:
        env["TENSORBOARD_LOGGING_DIR"] = str(out / "logs" / "tensorboard")
    if "wandb" in targets:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        env["WANDB_DIR"] = str(out / "logs")
        env["WANDB_PROJECT"] = "anchorlm"
        if not os.environ.get("WANDB_API_KEY"):
            env["WANDB_MODE"] = "offline"
    ours = {k: v for k, v in env.items() if k not in os.environ}
    os.environ.update(ours)
    try:
        yield
    finally:
        for k in ours:
            os.environ.pop(k, None)


def world_size() -> int:
    """Processes in this run: 1, or what `accelerate launch` / torchrun set in WORLD_SIZE."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available()
