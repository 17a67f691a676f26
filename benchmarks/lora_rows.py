"""LoRA training of SmolLM2 with the anchor tokens' rows trainable: peft's trainable-token layer
against anchorlm's (anchorlm/train/lora.py), side by side in one run.

    .venv/bin/python benchmarks/lora_rows.py [--out docs/benchmarks-lora-rows.json]

Both models are SmolLM2-135M with the annotation tokens added, LoRA rank 32 on every linear layer
(the demo's recipe) and the anchor rows trainable; they differ only in the tied output layer's
rows: peft's layer puts the whole merged output matrix in the graph (its gradient, 49k x 576, is
computed every step), anchorlm's gives the rows their gradient alone. For fp32 and for bf16
(autocast, as the Trainer runs it; emulated and slow on a CPU without bf16 units, so skipped
there): a warm-up step each, then 5 rounds of 2 steps of 8 x 256, the two sides alternating which
goes first, glibc told to keep freed memory as the training loop does; tokens/s (medians), the
ratio of the medians and each round's ratio, and the FLOPs of one step of each as torch's
FlopCounterMode counts them (matrix products and attention).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from bench import _train_step, machine  # noqa: E402

from anchorlm.allocator import keep_freed_memory  # noqa: E402
from anchorlm.models import load_model  # noqa: E402
from anchorlm.precision import fast_bf16  # noqa: E402
from anchorlm.train import lora  # noqa: E402

BATCH, SEQ, STEPS, ROUNDS = 8, 256, 2, 5


def models():
    """(peft's, anchorlm's): the same start, the same adapters' initialisation."""
    base, tok = load_model("smollm2")
    out = {}
    for name, build in (("peft", lora.peft_lora), ("anchorlm", lora.apply_lora)):
        torch.manual_seed(0)
        out[name] = build(copy.deepcopy(base), tok, rank=32, alpha=64)
    return out, len(tok)


def step_flops(step) -> int:
    with FlopCounterMode(display=False) as fc:
        step()
    return fc.get_total_flops()


def compare(precision: str) -> dict:
    ms, vocab = models()
    torch.manual_seed(0)
    steps = {name: _train_step(m, BATCH, SEQ, precision, vocab) for name, m in ms.items()}
    flops = {name: step_flops(s) for name, s in steps.items()}  # also the warm-up step
    runs = {name: [] for name in steps}
    for r in range(ROUNDS):
        order = list(steps) if r % 2 == 0 else list(steps)[::-1]
        for name in order:
            t = time.perf_counter()
            for _ in range(STEPS):
                steps[name]()
            runs[name].append(BATCH * SEQ * STEPS / (time.perf_counter() - t))
    tps = {name: statistics.median(v) for name, v in runs.items()}
    out = {
        name: {
            "tokens_per_s": round(tps[name], 1),
            "runs": [round(x, 1) for x in runs[name]],
            "gflop_per_step": round(flops[name] / 1e9, 1),
        }
        for name in steps
    }
    out["anchorlm_over_peft_tokens_per_s"] = round(tps["anchorlm"] / tps["peft"], 3)
    out["by_round"] = [round(a / p, 3) for a, p in zip(runs["anchorlm"], runs["peft"])]
    out["flops_saved_per_step"] = round(1 - flops["anchorlm"] / flops["peft"], 3)
    print(f"{precision}: peft {tps['peft']:.0f} tok/s, anchorlm {tps['anchorlm']:.0f} tok/s "
          f"({out['anchorlm_over_peft_tokens_per_s']:.3f}x; rounds {out['by_round']}); FLOPs a step {flops['peft'] / 1e9:.0f} -> "
          f"{flops['anchorlm'] / 1e9:.0f} G", flush=True)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks-lora-rows.json"))
    args = ap.parse_args()
    from transformers.utils import logging

    logging.set_verbosity_error()
    told = keep_freed_memory()  # as the training loop runs
    res = {"machine": machine(), "batch": BATCH, "seq_len": SEQ, "lora_rank": 32, "keep_freed_memory": told}
    for precision in ("fp32", "bf16") if fast_bf16() else ("fp32",):
        res[precision] = compare(precision)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
